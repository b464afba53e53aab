"""send_parts / recv_parts against pyzmq's own multipart calls (inproc, no network)."""

from __future__ import annotations

import pytest
import zmq

from hidra_ng.zmqio import ZERO_COPY_BYTES, recv_parts, send_parts


@pytest.fixture
def pair():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://parts")
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://parts")
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def test_parts_arrive_whole_and_in_order(pair):
    push, pull = pair
    big = bytes(range(256)) * (ZERO_COPY_BYTES // 128)  # sent without a copy
    messages = [[b"one"], [b"a", b"", big, memoryview(b"view")], [b"x" * 100] * 50]
    for parts in messages:
        send_parts(push, parts)
    for parts in messages:
        assert pull.poll(1000)
        got = recv_parts(pull)
        assert [f.bytes for f in got] == [bytes(p) for p in parts]
    with pytest.raises(zmq.Again):
        recv_parts(pull)


def test_a_socket_without_a_peer_takes_nothing():
    ctx = zmq.Context()
    lonely = ctx.socket(zmq.PUSH)  # no peer: the first part cannot go, so none does
    lonely.bind("inproc://nobody")
    try:
        with pytest.raises(zmq.Again):
            send_parts(lonely, [b"a", b"b"])
    finally:
        lonely.close(0)
        ctx.term()
