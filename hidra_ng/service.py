"""Running a daemon under systemd: sd_notify, watchdog, signals.

The notify protocol is a datagram of ``KEY=VALUE`` lines to the unix socket
named by ``NOTIFY_SOCKET`` (``@`` = abstract namespace). Nothing is sent when
the variable is unset, so the same code runs by hand and under systemd.
WATCHDOG=1 is sent from the main loop only after the daemon's own liveness
check passed, never from a thread that pings regardless.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Daemon(Protocol):
    def start(self) -> None: ...
    def alive(self) -> bool: ...
    def status(self) -> str: ...
    def stop(self) -> None: ...


class Notifier:
    """Speaks the sd_notify protocol if systemd (or a test) listens."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self.watchdog_seconds = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, **fields: str | int) -> None:
        if self._sock is None:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        addr = self.address
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        try:
            self._sock.sendto(message, target)
        except OSError as err:
            log.warning("sd_notify to %s failed: %s", addr, err)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def run(
    daemon: Daemon,
    *,
    notifier: Notifier | None = None,
    tick_seconds: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Start ``daemon``, report READY, keep the watchdog fed, stop on SIGTERM/SIGINT.

    Returns the process exit code: 0 after a requested stop, 1 if the daemon died.
    """
    notifier = notifier or Notifier()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    interval = tick_seconds
    if notifier.watchdog_seconds:
        interval = min(interval, notifier.watchdog_seconds / 2)
    code = 0
    try:
        daemon.start()
        notifier.notify(ready=1, status=daemon.status())
        last_status = time.monotonic()
        while not stop.wait(interval):
            if not daemon.alive():
                log.error("a daemon thread died; exiting so systemd restarts the service")
                code = 1
                break
            if should_stop():
                break
            if notifier.watchdog_seconds:
                notifier.notify(watchdog=1)
            if time.monotonic() - last_status >= 5:
                notifier.notify(status=daemon.status())
                last_status = time.monotonic()
    finally:
        notifier.notify(stopping=1, status="stopping")
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        notifier.close()
    return code
