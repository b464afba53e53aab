"""The leak check of every test (tests/helpers.py LeakCheck) finds what a test leaves behind."""

from __future__ import annotations

import threading

import zmq

from tests.helpers import LeakCheck, exempt_thread


def test_an_open_socket_and_a_live_thread_are_reported() -> None:
    check = LeakCheck()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="left-running")
    thread.start()
    try:
        problems = check.problems(grace=0.2)
        assert "thread 'left-running' still alive" in problems
        assert any(
            "1 zmq socket(s) not closed" in p and "test_leak_check.py" in p for p in problems
        )
    finally:
        release.set()
        thread.join()
        sock.close(linger=0)
        ctx.term()


def test_closed_sockets_ended_and_exempt_threads_pass() -> None:
    check = LeakCheck()
    ctx = zmq.Context()
    ctx.socket(zmq.PAIR).close(linger=0)
    ended = threading.Thread(target=lambda: None)
    ended.start()
    release = threading.Event()
    service = threading.Thread(target=release.wait, name="session-service")
    exempt_thread(service)
    service.start()
    try:
        assert check.problems(grace=0.2) == []
    finally:
        release.set()
        service.join()
        ctx.term()
