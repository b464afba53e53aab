"""sd_notify and the service loop with a fake daemon (no network, no processes)."""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidra_ng.service import Heartbeats, Notifier, run
from tests.ops_helpers import NotifySocket


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    s = NotifySocket(f"@hidra-ng-test-{secrets.token_hex(6)}")
    yield s
    s.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify"))
    yield s
    s.close()


class FakeDaemon:
    """alive() is True for the first ``alive_for`` calls, then False (a thread died)."""

    def __init__(self, alive_for: int = 10**9, on_alive=None) -> None:
        self.alive_for = alive_for
        self.alive_calls = 0
        self.events: list[str] = []
        self.on_alive = on_alive

    def start(self) -> None:
        self.events.append("start")

    def alive(self) -> bool:
        self.alive_calls += 1
        if self.on_alive is not None:
            self.on_alive(self)
        return self.alive_calls <= self.alive_for

    def status(self) -> str:
        return f"fine\nafter {self.alive_calls} checks"

    def stop(self) -> None:
        self.events.append("stop")


def test_notifier_abstract_namespace(abstract_socket: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": abstract_socket.address})
    try:
        assert n.enabled
        assert n.notify(ready=1, status="two\nlines")
    finally:
        n.close()
    assert abstract_socket.messages() == [{"READY": "1", "STATUS": "two lines"}]


def test_notifier_path_socket(path_socket: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": path_socket.address})
    try:
        assert n.notify(watchdog=1)
    finally:
        n.close()
    assert path_socket.messages() == [{"WATCHDOG": "1"}]


def test_notifier_without_socket_sends_nothing() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.notify(ready=1)
    assert n.watchdog_seconds == 0


def test_notifier_failing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    try:
        assert not n.notify(ready=1)
        assert not n.notify(watchdog=1)
    finally:
        n.close()


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.4),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.4),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, 0.0),  # meant for another process
        ({"WATCHDOG_USEC": "nonsense"}, 0.0),
        ({"WATCHDOG_USEC": "0"}, 0.0),
        ({}, 0.0),
    ],
)
def test_watchdog_interval_from_environment(environ: dict[str, str], seconds: float) -> None:
    assert Notifier(environ).watchdog_seconds == seconds


def test_run_reports_ready_watchdog_status_stopping(abstract_socket: NotifySocket) -> None:
    stop = threading.Event()

    def stop_after_pings(daemon: FakeDaemon) -> None:
        if daemon.alive_calls >= 5:
            stop.set()

    daemon = FakeDaemon(on_alive=stop_after_pings)
    notifier = Notifier({"NOTIFY_SOCKET": abstract_socket.address, "WATCHDOG_USEC": "20000"})
    code = run(daemon, notifier=notifier, stop_event=stop, status_seconds=0.0)
    assert code == 0
    assert daemon.events == ["start", "stop"]
    messages = abstract_socket.messages()
    assert messages[0]["READY"] == "1"
    assert messages[0]["STATUS"] == "fine after 0 checks"  # one line
    assert messages[-1]["STOPPING"] == "1"
    pings = [m for m in messages if m.get("WATCHDOG") == "1"]
    # every ping follows a successful liveness check; the fifth check set the stop
    # event and its ping still went out
    assert len(pings) == 5
    assert sum("STATUS" in m for m in messages[1:-1]) >= 4


def test_dead_daemon_stops_feeding_the_watchdog(abstract_socket: NotifySocket) -> None:
    """Pings only follow a passed liveness check; once it fails they stop and run() exits 1."""
    daemon = FakeDaemon(alive_for=3)
    notifier = Notifier({"NOTIFY_SOCKET": abstract_socket.address, "WATCHDOG_USEC": "20000"})
    code = run(daemon, notifier=notifier, stop_timeout_seconds=10)
    assert code == 1
    assert daemon.events == ["start", "stop"]
    messages = abstract_socket.messages()
    kinds = [next(iter(m)) for m in messages]
    assert kinds.count("WATCHDOG") == 3
    assert daemon.alive_calls == 4
    # nothing but STOPPING after the failed check
    assert kinds[-1] == "STOPPING"
    assert "WATCHDOG" not in kinds[kinds.index("STOPPING") :]


def test_sigterm_stops_the_loop_with_exit_code_zero(abstract_socket: NotifySocket) -> None:
    def send_sigterm(daemon: FakeDaemon) -> None:
        if daemon.alive_calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    daemon = FakeDaemon(on_alive=send_sigterm)
    notifier = Notifier({"NOTIFY_SOCKET": abstract_socket.address, "WATCHDOG_USEC": "20000"})
    assert run(daemon, notifier=notifier) == 0
    assert daemon.events == ["start", "stop"]
    assert abstract_socket.messages()[-1]["STOPPING"] == "1"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_should_stop_ends_the_loop() -> None:
    daemon = FakeDaemon()
    assert run(daemon, notifier=Notifier({}), tick_seconds=0.01, should_stop=lambda: True) == 0
    assert daemon.events == ["start", "stop"]


def test_heartbeats_catch_a_hanging_loop() -> None:
    hb = Heartbeats()
    assert hb.fresh(1.0)  # nothing registered yet
    hb.beat("ingest")
    hb.beat("api")
    assert hb.fresh(60.0)
    hb._last["api"] -= 120  # the api loop last beat two minutes ago
    assert not hb.fresh(60.0)
