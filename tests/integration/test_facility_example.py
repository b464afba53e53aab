"""examples/facility/run.py works (so it cannot rot): broker, receiver, sender, bridge,
frames read back through the broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.rabbitmq_node import PACKAGE, SERVER
from tests.debian import require_debian

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "facility" / "run.py"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_facility_example_runs() -> None:
    require_debian([PACKAGE], [str(SERVER)])
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--frames", "40"],
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "40 frames (indices 0..39, each equal to the receiver's)" in out, out
    assert "hidra_finished, hidra_index 40" in out
    assert "bridge stopped (exit 0)" in out and "RabbitMQ node stopped" in out
