"""``hidra-ng check-config`` and config errors of the daemons, as real processes (SPEC §5, §7).

Exit code 0 with the effective settings on stdout, or 2 with one sentence on
stderr and no traceback. The commands run side by side to keep the test short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "config"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIDRA_NG_", "NOTIFY_"))}
    env.pop("STATE_DIRECTORY", None)
    env.update(extra)
    return env


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "range": "[receiver]\nmetrics_port = 70000\n",
        "syntax": "[receiver\n",
        "source": '[sender]\n[[sender.sources]]\nuri = "webcam:?fps=5"\n',
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(text)
    return paths


def run_all(cases: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, tuple[int, str, str]]:
    """Run ``python -m hidra_ng ARGS`` for every case at once; (exit code, stdout, stderr)."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "hidra_ng", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, (args, env) in cases.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        results[name] = (proc.returncode, out, err)
    return results


def test_check_config_and_daemon_config_errors(bad_files: dict[str, Path], tmp_path: Path) -> None:
    receiver_toml, sender_toml = str(EXAMPLES / "receiver.toml"), str(EXAMPLES / "sender.toml")
    bad_port = {"HIDRA_NG_RECEIVER_METRICS_PORT": "abc"}
    results = run_all(
        {
            "receiver example": (["check-config", receiver_toml], clean_env()),
            "env override": (
                ["check-config", sender_toml],
                clean_env(HIDRA_NG_SENDER_SPOOL_SYNC="batch"),
            ),
            "range": (["check-config", str(bad_files["range"])], clean_env()),
            "syntax": (["check-config", str(bad_files["syntax"])], clean_env()),
            "missing": (["check-config", str(tmp_path / "missing.toml")], clean_env()),
            "source": (["check-config", str(bad_files["source"])], clean_env()),
            "env type": (["check-config", receiver_toml], clean_env(**bad_port)),
            # the daemons refuse bad settings before they bind or open anything
            "receiver file": (["receiver", "--config", str(bad_files["range"])], clean_env()),
            "receiver flag": (
                ["receiver", "--data-dir", str(tmp_path / "store"), "--metrics-port", "70000"],
                clean_env(),
            ),
        }
    )

    for name in ("receiver example", "env override"):
        code, out, err = results[name]
        assert code == 0, f"{name}: {err}"
    code, out, _ = results["receiver example"]
    assert out.startswith(f"# {receiver_toml}: valid receiver config")
    assert 'data_dir = "/var/lib/hidra-ng"\n' in out
    assert "# default" not in out  # the example sets every setting
    _, out, _ = results["env override"]
    assert out.startswith(f"# {sender_toml}: valid sender config")
    assert "[[sender.sources]]" in out and 'sender_id = "eiger-p11"' in out
    assert 'spool_sync = "batch"  # from environment HIDRA_NG_SENDER_SPOOL_SYNC\n' in out

    expected_errors = {
        "range": f"receiver.metrics_port = 70000 in {bad_files['range']}: expected a port number"
        " from 0 (off) to 65535",
        "syntax": f"config file {bad_files['syntax']} is not valid TOML",
        "missing": f"config file {tmp_path / 'missing.toml'} does not exist",
        "source": "source 'webcam:?fps=5' has unknown kind 'webcam'",
        "env type": "environment variable HIDRA_NG_RECEIVER_METRICS_PORT='abc': expected a port"
        " number (an integer)",
        "receiver file": f"receiver.metrics_port = 70000 in {bad_files['range']}",
        "receiver flag": "--metrics-port 70000: expected a port number from 0 (off) to 65535",
    }
    for name, fragment in expected_errors.items():
        code, out, err = results[name]
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        assert out == "", name
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"{name}: one sentence, no traceback: {err!r}"
        assert lines[0].startswith("hidra-ng: ") and fragment in lines[0], (name, lines[0])
    assert not (tmp_path / "store").exists(), "nothing is created before the config is valid"
