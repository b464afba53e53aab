"""The bridge under systemd's notify protocol (SPEC §8, §13): READY, WATCHDOG, STOPPING,
exit 0 on SIGTERM after the confirms; and its config (check-config, environment)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from hidra_ng import config as cfg
from hidra_ng.errors import ConfigError
from tests.conftest import wait_for
from tests.ops_helpers import DaemonProcess, NotifySocket, clean_env

ROOT = Path(__file__).resolve().parents[2]


def test_notify_protocol_and_sigterm(rabbitmq, receiver, tmp_path) -> None:
    with NotifySocket(f"@hidra-ng-test-{secrets.token_hex(6)}") as notify:
        env = clean_env(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="400000")
        args = [
            "bridge", "--api", receiver.endpoints["api"], "--rabbitmq", rabbitmq.stream_uri,
            "--state-dir", str(tmp_path / "b"), "--metrics-port", "0", "--prefix", "t-notify",
        ]  # fmt: skip
        daemon = DaemonProcess(args, tmp_path / "bridge.log", env).start()
        try:
            wait_for(
                lambda: any(m.get("READY") == "1" for m in notify.messages()),
                timeout=60,
                what="READY=1",
            )
            wait_for(lambda: len(notify.times_of("WATCHDOG")) >= 3, timeout=30, what="watchdog")
            assert daemon.terminate(60) == 0, daemon.read_log()
            assert any(m.get("STOPPING") == "1" for m in notify.messages())
        finally:
            daemon.kill()


def test_check_config_accepts_the_example_and_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hidra_ng", "check-config", str(ROOT / "config" / "bridge.toml")],
        capture_output=True,
        text=True,
        env=clean_env(HIDRA_NG_BRIDGE_STREAMS="p11/*, p12/**"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "valid bridge config" in result.stdout
    assert 'streams = ["p11/*", "p12/**"]  # from environment HIDRA_NG_BRIDGE_STREAMS' in (
        result.stdout
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('payload = "half"', 'bridge.payload = "half" in'),
        ('streams = "p11/*"', "bridge.streams"),
        ('streams = ["a b"]', 'bridge.streams = "a b" in'),
        ('rabbitmq = "amqp://x"', 'bridge.rabbitmq = "amqp://x" in'),
        ("max_inflight_bytes = 10", "bridge.max_inflight_bytes = 10 in"),
        ("colour = 1", "bridge.colour = 1 in"),
    ],
)
def test_bad_config_is_named(tmp_path, text: str, named: str) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(f"[bridge]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        cfg.check_file(path, environ={})
    assert named in str(err.value), str(err.value)
