"""The daemons under a fake systemd (SPEC §8): READY, WATCHDOG cadence, STATUS, STOPPING.

Each test starts a real ``python -m hidra_ng receiver|sender`` with NOTIFY_SOCKET
pointing at a datagram socket the test bound and WATCHDOG_USEC=400000, as
systemd would with ``WatchdogSec=0.4s``. Cadence checks count pings; the only
time bound is the watchdog's own (median interval under WatchdogSec).
"""

from __future__ import annotations

import itertools
import secrets
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hidra_ng import Consumer
from hidra_ng.testing import ReceiverProcess
from tests.helpers import wait_for
from tests.ops_helpers import DaemonProcess, NotifySocket, clean_env, sender_args

WATCHDOG_USEC = 400_000
WATCHDOG_SECONDS = WATCHDOG_USEC / 1e6
PINGS = 8  # about 1.6 s of pings at the expected 0.2 s cadence


def keys(messages: list[dict[str, str]]) -> list[str]:
    return [key for m in messages for key in m]


def check_watchdog_cadence(notify: NotifySocket, daemon: DaemonProcess) -> None:
    """At least PINGS pings after READY, at a median interval within WatchdogSec."""
    ready_at = notify.times_of("READY")[0]
    wait_for(
        lambda: (
            len([t for t in notify.times_of("WATCHDOG") if t > ready_at]) >= PINGS
            or not daemon.running()
        ),
        timeout=PINGS * WATCHDOG_SECONDS * 10,
        what=f"{PINGS} watchdog pings",
    )
    assert daemon.running(), daemon.read_log()
    pings = notify.times_of("WATCHDOG")
    intervals = [b - a for a, b in itertools.pairwise(pings)]
    assert statistics.median(intervals) < WATCHDOG_SECONDS, intervals


def check_stop(notify: NotifySocket, daemon: DaemonProcess) -> None:
    """SIGTERM: STOPPING=1, no ping after it, exit code 0."""
    code = daemon.terminate(timeout=30)
    assert code == 0, daemon.read_log()
    messages = notify.messages()
    stopping = [i for i, m in enumerate(messages) if m.get("STOPPING") == "1"]
    assert len(stopping) == 1, messages[-5:]
    assert "WATCHDOG" not in keys(messages[stopping[0] :])
    assert "READY" not in keys(messages[1:]), "READY exactly once, first"


def test_receiver_notifies_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    ready = tmp_path / "receiver-ready.json"
    args = ["receiver", "--data-dir", str(tmp_path / "store"), "--metrics-port", "0"]
    for name in ("ingest", "api", "publish"):
        args += [f"--{name}", "tcp://127.0.0.1:*"]
    args += ["--ready-file", str(ready)]
    with NotifySocket(f"@hidra-ng-test-{secrets.token_hex(6)}") as notify:
        env = clean_env(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        with DaemonProcess(args, tmp_path / "receiver.log", env) as daemon:
            wait_for(
                lambda: notify.times_of("READY") or not daemon.running(),
                timeout=30,
                what="READY=1",
            )
            assert daemon.running(), daemon.read_log()
            # READY means the sockets are bound and the store is open: the api answers
            with Consumer(daemon.ready(ready)["api"]) as consumer:
                consumer.ping(timeout=5.0)
            first = notify.messages()[0]
            assert first["READY"] == "1"
            assert "streams" in first["STATUS"] and "\n" not in first["STATUS"]
            check_watchdog_cadence(notify, daemon)
            check_stop(notify, daemon)


def test_sender_daemon_notifies_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    with (
        ReceiverProcess(tmp_path / "store") as receiver,
        NotifySocket(str(tmp_path / "notify")) as notify,
    ):
        args = sender_args(
            receiver.ingest,
            receiver.api,
            tmp_path / "spool",
            ["simulate:?shape=16x16&rate=20&count=0&stream=notify"],
        )
        env = clean_env(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        with DaemonProcess(args, tmp_path / "sender.log", env) as daemon:
            wait_for(
                lambda: notify.times_of("READY") or not daemon.running(),
                timeout=30,
                what="READY=1",
            )
            first = notify.messages()[0]
            assert first["READY"] == "1"
            assert first["STATUS"].startswith("receiver "), first
            assert "spool" in first["STATUS"]
            check_watchdog_cadence(notify, daemon)
            # frames flowed meanwhile
            with Consumer(receiver.api) as consumer:
                wait_for(lambda: consumer.info("notify").count > 0, what="frames stored")
            check_stop(notify, daemon)


MDWE_TRANSFER = textwrap.dedent(
    """
    import ctypes, mmap, sys, tempfile
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:  # the restriction holds: W+X memory is refused
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit(3)
    except PermissionError:
        pass
    import numpy as np
    from hidra_ng import Consumer, Producer
    from hidra_ng.config import ReceiverConfig
    from hidra_ng.metrics import served_port
    from hidra_ng.receiver.daemon import Receiver

    d = tempfile.mkdtemp()
    ep = "tcp://127.0.0.1:*"
    rx = Receiver(ReceiverConfig(data_dir=d + "/store", ingest=ep, api=ep, publish=ep,
                                 metrics_port=-1, initial_map_bytes=64 << 20))
    assert served_port(rx.metrics.registry) > 0
    rx.start()
    frames = [np.arange(4096, dtype=np.uint16).reshape(64, 64) + i for i in range(5)]
    try:
        with Producer(rx.endpoints["ingest"], rx.endpoints["api"], d + "/spool", "mdwe",
                      compression="lz4") as p:
            for f in frames:
                p.send("mdwe", f)
            p.flush(timeout=30)
        with Consumer(rx.endpoints["api"]) as c:
            for i, f in enumerate(frames):
                assert (c.get("mdwe", i).data == f).all()
    finally:
        rx.stop()
    print("transfer ok")
    """
)


def test_daemon_code_runs_under_memory_deny_write_execute() -> None:
    """The units' MemoryDenyWriteExecute=yes is safe: with writable+executable memory
    refused by the kernel (PR_SET_MDWE, what systemd uses where available), a
    compressed transfer through a receiver with metrics works."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE_TRANSFER],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    if result.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and "transfer ok" in result.stdout, result.stderr[-3000:]
