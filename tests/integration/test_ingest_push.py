"""The link's connection to the ingest ends the spool reads lent to it (sender/push.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import zmq

from hidra_ng.sender.push import IngestPush
from hidra_ng.sender.spool import Spool
from hidra_ng.wire import protocol as proto
from tests.helpers import wait_for

SIZE = 256 << 10


def _probe_taken(push: IngestPush) -> bool:
    try:
        push.socket.send(b"probe", zmq.NOBLOCK)  # IMMEDIATE: taken once connected
    except zmq.Again:
        return False
    return True


def test_a_replaced_connection_ends_the_reads_whose_views_libzmq_still_holds(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    header = proto.Header("s", 0, proto.Payload.BYTES, "", (), "none", b"{}", time.time())
    spool.append([(header, b"\x07" * SIZE)])
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    endpoint = f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}"
    push = IngestPush(endpoint, None, zmq.Poller(), spool.env)
    try:
        wait_for(lambda: _probe_taken(push), 10, "the connection up")
        assert pull.recv() == b"probe"
        lender = push.lender
        loan = lender.open()
        assert loan is not None
        view = loan.lend(spool.read_views(loan.txn, 0, 1, 1 << 30)[0].payload)  # type: ignore[arg-type]
        push.socket.send(b"envelope", zmq.SNDMORE | zmq.NOBLOCK)
        push.socket.send(view, zmq.SNDMORE | zmq.NOBLOCK, copy=False)
        loan.end()
        del view, loan
        pull.close(0)  # the receiver goes away in the middle of the message
        wait_for(lambda: push.monitor.poll(0), 10, "the connection seen broken")
        # IMMEDIATE drops the pipe of the broken connection: zmq refuses the message's last
        # part, or drops it without a word, and keeps for good the parts it took, the view
        # among them (lending.py)
        with contextlib.suppress(zmq.Again):
            push.socket.send(b"last", zmq.NOBLOCK)
        push.replace()
        assert lender.open_loans == 0  # ended with the old context, whatever libzmq holds
        assert push.lender is not lender and push.lender.open_loans == 0
        grown = 2 * spool.env.map_bytes
        grower = threading.Thread(target=spool.env._grow)  # waits for every read still open
        grower.start()
        wait_for(lambda: not grower.is_alive(), 10, "the spool's map growing")
        assert spool.env.map_bytes == grown
        pull = ctx.socket(zmq.PULL)
        pull.bind(endpoint)
        wait_for(lambda: _probe_taken(push), 10, "the new connection up")
        assert pull.recv() == b"probe"  # and it carries messages
    finally:
        push.close()
        pull.close(0)
        ctx.term()
        spool.close()
