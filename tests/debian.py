"""Real programs from Debian's packages for the tests: installed by the project's own script.

``require_debian(packages, programs)`` makes sure ``programs`` (paths or names on
PATH) exist. When one is missing it runs ``scripts/debian-packages`` as root; without
root it skips the test with a sentence saying how to install them, except with
``CI=true``, where such a test must run and so fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "debian-packages"


def _present(program: str) -> bool:
    return Path(program).exists() if "/" in program else shutil.which(program) is not None


def require_debian(packages: list[str], programs: list[str]) -> None:
    if all(_present(p) for p in programs):
        return
    how = f"sudo apt-get install {' '.join(packages)}"
    in_ci = os.environ.get("CI", "").lower() == "true"
    if os.geteuid() != 0:
        message = f"needs the Debian packages {', '.join(packages)}; install them with: {how}"
        if in_ci:
            pytest.fail(message + " (CI=true: these tests must run, not skip)")
        pytest.skip(message)
    done = subprocess.run([str(SCRIPT), *packages], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0 or not all(_present(p) for p in programs):
        pytest.fail(
            f"installing {', '.join(packages)} with {SCRIPT} failed "
            f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
