"""Batched replay: small frames many per reply within the credit, large ones as views of
the store (their read transaction held until zmq is done), exact under retention."""

from __future__ import annotations

import hashlib
import threading

import msgspec
import numpy as np
import zmq

from hidra_ng import Consumer, Gone, NotYetAvailable, Producer
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.wire import protocol as proto
from tests.helpers import wait_for


def test_a_batched_replay_sends_no_more_than_the_credit(make_producer, receiver):
    """Speak the wire protocol: small frames come several per FrameBatch reply, never more
    frames or bytes than granted."""
    p = make_producer()
    p.send_many("w", [(bytes([i]) * 1000, None) for i in range(10)])
    p.flush(10)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(receiver.endpoints["api"])

    def request(op: str, **fields) -> None:
        sock.send(proto.encode(proto.Kind.REQUEST, proto.make_request(7, op, **fields)))

    def batches_arriving(seconds: float) -> list[list[int]]:
        batches = []
        while sock.poll(seconds * 1000):
            parts = sock.recv_multipart()
            reply = proto.decode(proto.Kind.REPLY, proto.Reply, parts[0])
            body = msgspec.msgpack.decode(reply.body, type=proto.FrameBatch | proto.ReplayEvent)
            assert isinstance(body, proto.FrameBatch), body
            views = proto.cut_payloads(memoryview(parts[1]), body.sizes, len(body.frames), "r")
            assert [bytes(v) for v in views] == [bytes([f.index]) * 1000 for f in body.frames]
            batches.append([f.index for f in body.frames])
        return batches

    try:
        request("replay", stream="w", index=0, credit_frames=3, credit_bytes=1 << 30, batch=True)
        assert batches_arriving(0.5) == [[0, 1, 2]]  # one reply for three frames
        request("credit", credit_frames=2, credit_bytes=0)
        assert batches_arriving(0.5) == [[3, 4]]
        request("credit", credit_frames=0, credit_bytes=1 << 30)  # no frame credit: nothing
        assert batches_arriving(0.5) == []
        request("cancel")
        request("replay", stream="w", index=5, credit_frames=100, credit_bytes=2000, batch=True)
        assert batches_arriving(0.5) == [[5, 6]]  # two frames of 1000 bytes fit
        request("credit", credit_frames=0, credit_bytes=1000)
        assert batches_arriving(0.5) == [[7]]
        request("cancel")
    finally:
        sock.close()
        ctx.term()


def test_small_and_large_frames_replay_in_order_with_their_bytes(make_producer, receiver):
    rng = np.random.default_rng(3)
    sizes = [10, 300_000, 0, 70_000, 5, 5, 1 << 20, 65_535, 65_536]
    items = [(rng.bytes(n), {"n": n}) for n in sizes * 3]
    p = make_producer()
    p.send_many("mix", items)
    p.flush(30)
    with Consumer(receiver.endpoints["api"]) as c:
        got = list(c.replay("mix", decode=False))
        # a window smaller than one large frame still moves (one frame at a time)
        small_window = list(c.replay("mix", window_frames=2, window_bytes=1000, decode=False))
    for frames in (got, small_window):
        assert [f.index for f in frames] == list(range(len(items)))
        assert [bytes(f.data or b"") for f in frames] == [d for d, _ in items]


def test_records_and_frames_from_one_replay_agree(make_producer, receiver):
    """next_records (the bridge's read: records decoded with their batch) and frames
    taken afterwards from the same replay give what get() gives."""
    items = [(bytes([i]) * (100 + i), {"i": i}) for i in range(40)]
    p = make_producer()
    p.send_many("rec", items)
    p.flush(10)
    with Consumer(receiver.endpoints["api"]) as c:
        replay = c.replay("rec", window_frames=8, decode=False)
        records = replay.next_records(5)
        while len(records) < 20:
            records += replay.next_records(20 - len(records))
        rest = list(replay)
        want = [c.get("rec", i) for i in range(40)]
    assert [index for index, _, _ in records] == list(range(20))
    for (index, record, payload), frame in zip(records, want, strict=False):
        assert (record.seq, record.sender, bytes(payload)) == (frame.seq, frame.sender, frame.data)
        assert msgspec.json.decode(record.meta) == frame.meta == {"i": index}
    assert [(f.index, f.data, f.meta, f.seq) for f in rest] == [
        (f.index, f.data, f.meta, f.seq) for f in want[20:]
    ]


def stored(c: Consumer) -> int:
    try:
        return c.info("churn").count
    except NotYetAvailable:
        return 0


def test_views_of_the_store_stay_exact_while_retention_reuses_its_pages(receiver_config, tmp_path):
    """Frames replayed as views of the map while ingest and retention free and reuse pages:
    every frame received has the bytes it was stored with (hash in its meta), or the
    replay says Gone; none is corrupt."""
    config = msgspec.structs.replace(receiver_config, max_store_bytes=24 << 20)
    rng = np.random.default_rng(5)
    blobs = [rng.bytes(1 << 20) for _ in range(8)]
    stop = threading.Event()
    with Receiver(config) as rx:
        ep = rx.endpoints

        def keep_writing() -> None:
            with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "churn") as p:
                i = 0
                while not stop.is_set():
                    blob = blobs[i % len(blobs)]
                    p.send("churn", blob, {"sha": hashlib.sha256(blob).hexdigest()})
                    i += 1
                p.flush(30)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        checked = corrupt = 0
        try:
            with Consumer(ep["api"]) as c:
                wait_for(lambda: stored(c) >= 16, what="frames to replay")
                while checked < 300:
                    start = c.info("churn").first
                    try:
                        for frame in c.replay("churn", start, follow=True, decode=False):
                            ok = hashlib.sha256(frame.data).hexdigest() == frame.meta["sha"]
                            corrupt += not ok
                            checked += 1
                            if checked >= 300:
                                break
                    except Gone:
                        continue  # retention overtook the reader: start again at the first
        finally:
            stop.set()
            writer.join(60)
    assert corrupt == 0 and checked >= 300
