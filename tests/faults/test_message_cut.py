"""A receiver killed while the producer is between two parts of a message.

libzmq then keeps the parts it took of that message for good, views of the
spool's map among them (lending.py, zmqio.send_parts). The producer must end
that connection with its zmq context, which ends the spool reads lent to it,
and resend on a new one: every message stored exactly once, and no spool read
left open (else the spool's map could never grow again, and
``Producer.close()`` waited for ever: the hang this test was written for).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import pytest
import zmq

from hidra_ng import Producer
from hidra_ng.sender import producer as producer_module
from hidra_ng.testing import ReceiverProcess
from hidra_ng.zmqio import ZERO_COPY_BYTES
from tests.faults.workload import assert_sender_order, check, read_finished_stream
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

MESSAGES_PER_ROUND = 24
SIZE = 100 << 10  # sent as lent views of the spool's map, ten to a DATA message
ATTEMPTS = 5


def payload(k: int) -> bytes:
    return hashlib.sha256(b"cut %d" % k).digest() * (SIZE // 32)


class _CutAfter:
    """The link's PUSH socket, whose receiver is killed once it took ``parts`` parts."""

    def __init__(self, push, parts: int, kill) -> None:
        self._push, self._left, self._kill = push, parts, kill

    def send(self, data, flags: int, copy: bool) -> None:
        self._push.send(data, flags, copy=copy)
        self._left -= 1
        if self._left == 0:
            self._kill()


def test_a_message_cut_by_a_receiver_kill_is_resent_and_leaves_no_spool_read_open(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    stream, sender = "faults/cut", "cut-message"
    receiver = ReceiverProcess(tmp_path / "store")
    receiver.start()
    armed = threading.Event()
    outcomes: list[int] = []  # parts zmq took of each message cut on purpose, -1: not cut
    send_parts = producer_module.send_parts
    links: list = []

    def kill_receiver() -> None:
        receiver.kill()
        monitor = links[0]._push.monitor  # in the link thread: the connection now in use
        wait_for(lambda: monitor.poll(0), 30, "the link seeing its connection end")

    def cutting(sock, parts: list) -> int:
        lent_inside = [i for i, p in enumerate(parts[:-1]) if len(p) >= ZERO_COPY_BYTES]
        if not armed.is_set() or not lent_inside:
            return send_parts(sock, parts)
        armed.clear()
        after = lent_inside[0] + 1  # zmq has taken a lent view when the connection ends
        try:
            taken = send_parts(_CutAfter(sock, after, kill_receiver), parts)
        except zmq.Again:  # not connected (yet): nothing taken, nothing killed
            armed.set()
            raise
        outcomes.append(taken if taken < len(parts) else -1)
        return taken

    monkeypatch.setattr(producer_module, "send_parts", cutting)
    caplog.set_level(logging.INFO, logger=producer_module.__name__)
    sent = 0
    try:
        with Producer(receiver.ingest, receiver.api, tmp_path / "spool", sender) as producer:
            links.append(producer._link)

            def send_round() -> None:
                nonlocal sent
                ks = range(sent, sent + MESSAGES_PER_ROUND)
                # spooled by one append, each kept alone (64 KiB and more), so the link sends
                # them as DATA messages of about ten, with lent views between their parts
                producer.send_many(stream, [(payload(k), {"k": k}) for k in ks])
                sent += MESSAGES_PER_ROUND

            send_round()
            producer.flush(60)
            for attempt in range(ATTEMPTS):
                armed.set()
                send_round()
                wait_for(
                    lambda attempt=attempt: len(outcomes) > attempt, 60, "a message sent, cut armed"
                )
                receiver.start()
                if outcomes[-1] > 0:
                    break
            assert any(taken > 0 for taken in outcomes), f"no message was cut in {outcomes}"
            send_round()
            producer.finish(stream)
            producer.flush(120)
            lender = producer._link._push.lender
            wait_for(lambda: lender.open_loans == 0, 30, "every spool read given back")
            env = producer._spool.env
            grown = 2 * env.map_bytes
            grower = threading.Thread(target=env._grow)  # waits for every read still open
            grower.start()
            wait_for(lambda: not grower.is_alive(), 30, "the spool's map growing")
            assert env.map_bytes == grown
        # the with block's close() returned: the spool's environment closed
        frames = read_finished_stream(receiver.api, stream)
    finally:
        receiver.kill()
    cuts = [
        r.getMessage() for r in caplog.records if "in the middle of a message" in r.getMessage()
    ]
    assert cuts, "the link did not see the cut"
    expected = {hashlib.sha256(payload(k)).hexdigest(): k for k in range(sent)}
    verdict = check(frames, expected, required=range(sent))
    assert verdict.ok, verdict.summary()
    assert len(frames) == sent
    assert_sender_order(frames, expected, sender)
