"""Queries never hold the api thread, and come in pages a client goes on from (issue 17 item 5).

In-process receivers on loopback. The long query is shown not to hold the api by
the order of the replies on one DEALER socket: a `get` and a `ping` sent after a
query over 1,000,000 records are answered before it. No timing.
"""

from __future__ import annotations

import msgspec
import pytest
import zmq

from hidra_ng import Consumer, InvalidInput
from hidra_ng.cli import main
from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

STREAM = "qp/scan"
MILLION = 1_000_000


@pytest.fixture
def filled(receiver, make_producer):
    """STREAM with 50 messages, meta {"k": index, "odd": bool}, in the in-process receiver."""
    p = make_producer("det-q")
    p.send_many(STREAM, [(b"p%d" % k, {"k": k, "odd": k % 2 == 1}) for k in range(50)])
    p.flush(10)
    return receiver.endpoints["api"]


def test_query_goes_on_page_after_page(filled):
    with Consumer(filled) as c:
        whole = [f.index for f in c.query(STREAM, "meta.odd and meta.k > 10")]
        assert whole == list(range(11, 50, 2))
        paged = [f.index for f in c.query(STREAM, "meta.odd and meta.k > 10", scan_limit=7)]
        assert paged == whole
        assert [f.index for f in c.query(STREAM, "meta.odd", limit=4, scan_limit=3)] == [
            1, 3, 5, 7,
        ]  # fmt: skip
        page = c.query_page(STREAM, "meta.odd", scan_limit=10)
        assert ([f.index for f in page.frames], page.next, page.more) == ([1, 3, 5, 7, 9], 10, True)
        page = c.query_page(STREAM, "meta.odd", start=page.next, limit=2)
        assert ([f.index for f in page.frames], page.next, page.more) == ([11, 13], 14, True)
        page = c.query_page(STREAM, "meta.k >= 45", start=40)
        assert ([f.index for f in page.frames], page.next, page.more) == (
            [45, 46, 47, 48, 49], 50, False,
        )  # fmt: skip
        assert [f.index for f in c.iter_query(STREAM, "meta.k > 100", scan_limit=5)] == []
        assert [f.meta["k"] for f in c.query(STREAM, "index >= 47", start=45)] == [47, 48, 49]
        with pytest.raises(InvalidInput, match="start -1 is not valid"):
            c.query_page(STREAM, "true", start=-1)


def test_cli_query_prints_every_page(filled, capsys):
    args = ["query", STREAM, "meta.k >= 40", "--api", filled, "--scan-limit", "3"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert [int(line.split()[0]) for line in out.out.splitlines()] == list(range(40, 50))
    assert "k=40, odd=False" in out.out
    assert out.err.strip() == "10 matches"
    assert main(["query", STREAM, "meta.odd", "--api", filled, "--limit", "2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["1", "3"]
    assert main(["query", STREAM, "meta.k ==", "--api", filled]) == 2  # bad usage
    assert "at position 9" in capsys.readouterr().err


def fill_store(path, n: int, batch: int = 20_000) -> None:
    """``n`` tiny messages of STREAM with meta {"k": index}, straight into a closed store."""
    store = Store(path, map_bytes=1 << 30)
    try:
        env = proto.Envelope("det-m", 1, 0, 0)
        for first in range(0, n, batch):
            store.append(
                [
                    Incoming(
                        env,
                        proto.Header(
                            STREAM, k, proto.Payload.BYTES, "", (), "none", b'{"k":%d}' % k, 0.0
                        ),
                        b"",
                    )
                    for k in range(first, min(n, first + batch))
                ]
            )
    finally:
        store.close()


@pytest.mark.slow
def test_a_get_is_answered_while_a_query_over_a_million_records_scans(tmp_path):
    config = ReceiverConfig(
        data_dir=str(tmp_path / "store"),
        ingest="tcp://127.0.0.1:*",
        api="tcp://127.0.0.1:*",
        publish="tcp://127.0.0.1:*",
        metrics_port=0,
        initial_map_bytes=1 << 30,
    )
    fill_store(tmp_path / "store", MILLION)
    rx = Receiver(config)
    rx.start()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(rx.endpoints["api"])
        requests = [
            proto.QueryRequest(
                id=1, stream=STREAM, expr="meta.k < 0", limit=10, scan_limit=MILLION
            ),  # matches nothing: examines every record
            proto.GetRequest(id=2, stream=STREAM, index=MILLION - 1),
            proto.PingRequest(id=3),
        ]
        for req in requests:
            sock.send(proto.encode(proto.Kind.REQUEST, req))
        order = []
        bodies = {}
        while len(order) < len(requests):
            assert sock.poll(120_000), f"replies so far: {order}"
            frames = sock.recv_multipart()
            reply = proto.decode(proto.Kind.REPLY, proto.Reply, frames[0])
            assert not reply.error, reply.message
            order.append(reply.id)
            bodies[reply.id] = reply.body
        assert order == [2, 3, 1]  # the query answered last: get and ping went between slices
        result = msgspec.msgpack.decode(bodies[1], type=proto.QueryResult)
        assert (result.frames, result.next, result.more) == ([], MILLION, False)
        ref = msgspec.msgpack.decode(bodies[2], type=proto.FrameRef)
        assert ref.index == MILLION - 1
    finally:
        sock.close()
        rx.stop()
