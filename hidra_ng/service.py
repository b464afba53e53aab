"""Running a daemon under systemd: sd_notify, watchdog, signals (SPEC §8).

The notify protocol is a datagram of ``KEY=VALUE`` lines to the unix socket
named by ``NOTIFY_SOCKET`` (``@`` = abstract namespace). Nothing is sent when
the variable is unset, so the same code runs by hand and under systemd.

:func:`run` drives a :class:`Daemon` whose constructor has already bound its
sockets and opened its store:

* ``READY=1`` (with a ``STATUS=`` line) once ``start()`` returned;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, sent by the main loop and only
  after ``daemon.alive()`` said yes, never from a thread that pings regardless:
  a daemon whose worker died or hangs stops feeding the watchdog and systemd
  restarts it;
* ``STATUS=`` with a one-line summary every few seconds;
* on SIGTERM or SIGINT ``STOPPING=1``, then ``daemon.stop()`` (stop input,
  finish the commit in flight, flush acks, close the store), exit code 0. A
  stop that hangs longer than ``stop_timeout_seconds`` ends the process with
  exit code 1, as a crash would (nothing durable is lost by that).

A daemon's constructor binds sockets, opens its store or spool and may take a
lease (the bridge) before :func:`run` is called. The daemon commands make it
inside :func:`stop_signals`: a SIGTERM that comes while the constructor runs is
held and ends in the same clean stop (exit code 0, everything released) once
:func:`run` took over, not in death by the signal (exit -15).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

log = logging.getLogger(__name__)

STATUS_SECONDS = 5.0
SEND_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 30.0  # below TimeoutStopSec= of the units in systemd/


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
        # WATCHDOG_PID names the process systemd watches; a child that inherited
        # the variables must not feed (or starve) its parent's watchdog.
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._failing = False
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A listener that does not read (its queue holds only a few datagrams)
            # must not hang the main loop: give up on one message instead.
            self._sock.settimeout(SEND_TIMEOUT_SECONDS)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); True if the datagram went out."""
        if self._sock is None:
            return False
        message = "\n".join(f"{k.upper()}={_one_line(v)}" for k, v in fields.items()).encode()
        addr = self.address
        target = "\0" + addr[1:] if addr.startswith("@") else addr
        try:
            self._sock.sendto(message, target)
        except OSError as err:
            if not self._failing:  # once per outage, not every watchdog tick
                log.warning("sd_notify to %s failed: %s", addr, err)
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Heartbeats:
    """Liveness of worker loops: each loop calls ``beat(name)`` every iteration.

    ``fresh(max_age)`` is true while every loop that ever beat did so within
    ``max_age`` seconds: a daemon's ``alive()`` can use it to catch a thread
    that hangs, not only one that died.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def beat(self, name: str) -> None:
        self._last[name] = time.monotonic()

    def fresh(self, max_age: float) -> bool:
        now = time.monotonic()
        return all(now - t <= max_age for t in list(self._last.values()))


@contextlib.contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the event yielded, from now on: wrap a daemon's constructor
    and :func:`run` (pass it as ``stop_event``) in it. The former handlers come back
    at the end. Outside the main thread (no signals there) the event is only yielded.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = _handle_stop_signals(stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    daemon: Daemon,
    *,
    notifier: Notifier | None = None,
    tick_seconds: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    status_seconds: float = STATUS_SECONDS,
    stop_timeout_seconds: float = STOP_TIMEOUT_SECONDS,
    stop_event: threading.Event | None = None,
) -> int:
    """Start ``daemon``, report READY, keep the watchdog fed, stop on SIGTERM/SIGINT.

    Must be called from the main thread (signal handlers). ``stop_event`` lets
    a caller (or a test) request the stop without a signal; already set, the
    daemon stops right after ``start()``. Returns the exit code: 0 after a
    requested stop, 1 if the daemon died.
    """
    notifier = notifier or Notifier()
    stop = stop_event or threading.Event()
    previous = _handle_stop_signals(stop)
    interval = tick_seconds
    if notifier.watchdog_seconds:
        interval = min(interval, notifier.watchdog_seconds / 2)
    try:
        daemon.start()
        notifier.notify(ready=1, status=_status(daemon))
        code = _serve(daemon, notifier, stop, interval, should_stop, status_seconds)
    finally:
        notifier.notify(stopping=1, status="stopping: finishing the commit in flight")
        try:
            _stop_within(daemon, stop_timeout_seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            notifier.close()
    log.info("stopped")
    return code


def _handle_stop_signals(stop: threading.Event) -> dict[signal.Signals, Any]:
    """SIGTERM and SIGINT set ``stop``; returns the handlers they had before."""

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s received again; still stopping", name)
        else:
            log.info("%s received, stopping", name)
        stop.set()

    return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _serve(
    daemon: Daemon,
    notifier: Notifier,
    stop: threading.Event,
    interval: float,
    should_stop: Callable[[], bool],
    status_seconds: float,
) -> int:
    """The main loop until a stop: watchdog pings while alive, a status line now and then.

    Returns the exit code: 0 after a requested stop, 1 if the daemon died or hangs.
    """
    last_status = time.monotonic()
    while not stop.wait(interval):
        if not daemon.alive():
            log.error("a daemon thread died or hangs; exiting so systemd restarts the service")
            return 1
        if should_stop():
            log.info("done, stopping")
            return 0
        if notifier.watchdog_seconds:
            notifier.notify(watchdog=1)
        if time.monotonic() - last_status >= status_seconds:
            notifier.notify(status=_status(daemon))
            last_status = time.monotonic()
    return 0


def _stop_within(daemon: Daemon, seconds: float) -> None:
    """``daemon.stop()``; one that hangs longer than ``seconds`` ends the process (exit 1)."""
    guard = threading.Timer(seconds, _stop_hangs, (seconds,))
    guard.daemon = True
    guard.start()
    try:
        daemon.stop()
    finally:
        guard.cancel()


def _status(daemon: Daemon) -> str:
    try:
        return daemon.status()
    except Exception as err:  # a status line is never worth stopping for
        log.warning("status summary failed: %s", err)
        return f"status unavailable: {err}"


def _stop_hangs(seconds: float) -> None:
    log.error("stop did not finish within %.0f s; exiting now", seconds)
    logging.shutdown()
    os._exit(1)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
