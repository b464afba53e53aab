"""A receiver thread that hangs (not only one that dies) stops feeding the watchdog."""

from __future__ import annotations

import contextlib
import threading

import hidra_ng.receiver.daemon as receiver_module
from hidra_ng import Consumer, ReceiverUnavailable
from tests.helpers import wait_for


def test_a_hung_api_thread_makes_the_receiver_not_alive(receiver, monkeypatch):
    monkeypatch.setattr(receiver_module, "HUNG_SECONDS", 0.5)
    assert wait_for(receiver.alive, what="a fresh receiver to be alive")
    release = threading.Event()
    original = receiver.store.streams

    def stuck_streams():
        release.wait(30)  # the api thread hangs inside a request
        return original()

    monkeypatch.setattr(receiver.store, "streams", stuck_streams)
    with (
        Consumer(receiver.endpoints["api"], request_timeout=0.2) as c,
        contextlib.suppress(ReceiverUnavailable),
    ):
        c.streams()  # gets no answer: the api thread hangs in it
    try:
        wait_for(lambda: not receiver.alive(), timeout=10, what="alive() to turn False")
        assert all(t.is_alive() for t in receiver._threads)  # hung, not dead
    finally:
        release.set()
    wait_for(receiver.alive, timeout=10, what="alive() again once the thread goes on")
