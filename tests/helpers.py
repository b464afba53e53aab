"""Helpers shared by the tests of every tier (fixtures are in tests/conftest.py).

Import them as ``from tests.helpers import wait_for``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq
import zmq.utils.garbage as zmq_garbage

from hidra_ng.sender.producer import Producer


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` until it is truthy or ``timeout`` passes; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def digest(data) -> str:
    if data is None:
        return "none"
    if isinstance(data, np.ndarray):  # also empty, 0-d and non-contiguous arrays
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def finish_transfer(producer: Producer, stream: str, sender: threading.Thread, errors: list):
    """The sending thread ended without errors; ``stream`` finished, all acked and released."""
    sender.join(timeout=120)
    assert not sender.is_alive()
    assert not errors, errors
    producer.finish(stream)
    producer.flush(timeout=120)
    wait_for(lambda: producer.spool_messages == 0, what="acked messages released")


# ------------------------------------------------------------------ leak check
#
# Every test runs under ``leak_check`` (an autouse fixture in conftest.py): a zmq
# socket the test opened and did not close, or a thread it started that is still
# alive LEAK_GRACE_SECONDS after its fixtures were torn down, fails it (pyzmq's
# tests/conftest.py does the same for sockets). Services shared by the session
# (RabbitMQ, ...) start before the test's snapshot or call ``exempt_thread``.

LEAK_GRACE_SECONDS = 10.0

_sockets: list[tuple[weakref.ref, str]] = []  # (socket, where it was created)
_exempt_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_original_socket = zmq.Context.socket


def _tracked_socket(self, *args, **kwargs):
    sock = _original_socket(self, *args, **kwargs)
    _sockets.append((weakref.ref(sock), _caller()))
    return sock


def _caller() -> str:
    """The innermost frame of our code that opened the socket, e.g. 'hidra_ng/x.py:12'."""
    for frame in reversed(traceback.extract_stack(limit=12)[:-2]):
        if "/hidra_ng/" in frame.filename or "/tests/" in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-2]}/{Path(frame.filename).name}:{frame.lineno}"
    return "?"


def install_socket_tracking() -> None:
    """Record every socket made through zmq.Context.socket (once per session)."""
    zmq.Context.socket = _tracked_socket  # type: ignore[method-assign]


def exempt_thread(thread: threading.Thread) -> None:
    """A thread that may outlive the test that started it (a session-wide service)."""
    _exempt_threads.add(thread)


class LeakCheck:
    """Sockets and threads alive before a test, compared with those alive after it."""

    def __init__(self) -> None:
        self.threads_before = set(threading.enumerate())
        _sockets.clear()

    def open_sockets(self) -> list[str]:
        zmq_gc = zmq_garbage.gc._context  # pyzmq's own, for zero-copy sends: one per process
        return [
            where
            for ref, where in _sockets
            if (s := ref()) is not None and not s.closed and s.context is not zmq_gc
        ]

    def new_threads(self) -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in self.threads_before
            and t not in _exempt_threads
            and not isinstance(t, zmq_garbage.GarbageCollectorThread)  # one per process
            and t.is_alive()
        ]

    def problems(self, grace: float = LEAK_GRACE_SECONDS) -> list[str]:
        """What the test left behind once ``grace`` seconds have not cleared it."""
        deadline = time.monotonic() + grace
        while (self.new_threads() or self.open_sockets()) and time.monotonic() < deadline:
            time.sleep(0.05)  # a poll of the condition, with the deadline above
        found = [f"thread {t.name!r} still alive" for t in self.new_threads()]
        sockets = self.open_sockets()
        if sockets:
            found.append(
                f"{len(sockets)} zmq socket(s) not closed, opened at {sorted(set(sockets))}"
            )
        _sockets.clear()
        return found
