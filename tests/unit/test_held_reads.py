"""Read transactions held for zmq's sends (receiver/held.py) and the LMDB gate they pass."""

from __future__ import annotations

import contextlib
import threading

from hidra_ng.lmdbenv import _Gate
from hidra_ng.receiver.held import HeldReads
from tests.helpers import wait_for


class FakeTracker:
    def __init__(self) -> None:
        self.done = False


def test_a_transaction_ends_once_every_send_it_backs_is_done():
    held = HeldReads(limit=2)
    closed: list[str] = []

    def txn(name: str) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.callback(closed.append, name)
        return stack

    a, b = FakeTracker(), FakeTracker()
    held.keep(txn("first"), [a, b])
    held.keep(txn("done at once"), [FakeTracker()] * 0)
    assert closed == ["done at once"] and len(held) == 1 and held.room
    a.done = True
    held.release_done()
    assert closed == ["done at once"]  # b is still being sent
    b.done = True
    held.release_done()
    assert closed == ["done at once", "first"] and len(held) == 0
    held.keep(txn("x"), [FakeTracker()])
    held.keep(txn("y"), [FakeTracker()])
    assert not held.room  # at the limit the replay copies instead
    held.release_all()
    assert closed[-2:] == ["x", "y"] and len(held) == 0


def test_a_thread_holding_the_gate_enters_again_while_a_resize_waits():
    """The api thread keeps read transactions open for zmq; a resize waiting for them must
    not stop that thread from reading (it would never release them)."""
    gate = _Gate()
    resized = threading.Event()
    outer = gate.shared()
    outer.__enter__()

    def resize() -> None:
        with gate.exclusive():
            resized.set()

    resizer = threading.Thread(target=resize)
    resizer.start()
    wait_for(lambda: gate.resize_waiting, what="the resize to wait for the reader")
    with gate.shared():  # the same thread again: no deadlock
        assert not resized.is_set()
    assert not resized.is_set()
    outer.__exit__(None, None, None)
    resizer.join(10)
    assert resized.is_set() and not gate.resize_waiting
