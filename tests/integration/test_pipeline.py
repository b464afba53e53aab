"""Producer -> receiver -> Consumer on loopback: content, order, indices and the spool's contract.

Every frame is checked by the sha256 of its data, its meta, dtype and shape,
and its place: consecutive indices per stream (G4) and, per sender and stream,
the order of send() (G5).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from hidra_ng import (
    ConfigError,
    Consumer,
    Frame,
    InvalidFrame,
    MessageTooLarge,
    NotYetAvailable,
    Producer,
    SpoolFull,
    StreamFinished,
)
from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.testing import ReceiverProcess
from hidra_ng.wire import protocol as proto
from tests.helpers import wait_for

KiB = 1 << 10


def digest(data: np.ndarray | bytes | None) -> str:
    """sha256 of data as sent or read back; arrays by their C-order bytes (also when empty)."""
    if data is None:
        return "none"
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return hashlib.sha256(memoryview(data)).hexdigest()


def make_producer(rx: Receiver, spool_dir: Path, sender_id: str, **options) -> Producer:
    return Producer(rx.endpoints["ingest"], rx.endpoints["api"], spool_dir, sender_id, **options)


def read_stream(consumer: Consumer, stream: str) -> list[Frame]:
    """Every frame of a finished stream: index 0 on until StreamFinished."""
    frames: list[Frame] = []
    while True:
        try:
            frame = consumer.get(stream, len(frames), timeout=10.0)
        except StreamFinished:
            return frames
        assert frame.index == len(frames)
        frames.append(frame)


# ---------------------------------------------------------------------------
# Several senders, several streams: every frame intact, in order, once.


@dataclass(frozen=True)
class Sent:
    """What a sender sent, as the checker expects to read it back."""

    sender: str
    k: int  # position in this sender's send() order for the stream
    digest: str
    kind: str  # "array", "bytes" or "none"
    dtype: str
    shape: tuple[int, ...]
    meta: dict


def sample(sender: int, stream: int, k: int) -> np.ndarray | bytes | None:
    """Deterministic data of every kind a Producer takes, including edge cases."""
    rng = np.random.default_rng([sender, stream, k])
    choice = k % 9
    if choice == 0:
        return rng.integers(0, 2**16, size=(64, 48), dtype=np.uint16)
    if choice == 1:
        return rng.bytes(int(rng.integers(1, 200 * KiB)))
    if choice == 2:
        return None  # metadata only
    if choice == 3:
        return rng.standard_normal((3, 5, 7)).astype(np.float32)
    if choice == 4:
        return rng.integers(-(2**31), 2**31, size=1000, dtype=np.int32).astype(">i4")
    if choice == 5:  # not C-contiguous: sent as its contiguous copy
        return rng.standard_normal((40, 30)).T
    if choice == 6:
        return np.zeros((0, 16), dtype=np.uint8)
    if choice == 7:
        return (rng.standard_normal(50) + 1j * rng.standard_normal(50)).astype(np.complex64)
    return np.array(rng.integers(0, 100), dtype=np.int64)  # 0-d


def describe_sent(sender: str, k: int, data, meta: dict) -> Sent:
    if data is None:
        return Sent(sender, k, digest(None), "none", "", (), meta)
    if isinstance(data, bytes):
        return Sent(sender, k, digest(data), "bytes", "", (), meta)
    contiguous = np.array(data, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return Sent(
        sender, k, digest(contiguous), "array", contiguous.dtype.str, contiguous.shape, meta
    )


def check_frame(frame: Frame, sent: Sent) -> None:
    where = f"{frame.stream}[{frame.index}] from {sent.sender} #{sent.k}"
    assert frame.sender == sent.sender, where
    assert frame.meta == sent.meta, where
    if sent.kind == "none":
        assert frame.data is None, where
    elif sent.kind == "bytes":
        assert isinstance(frame.data, bytes), where
        assert digest(frame.data) == sent.digest, where
    else:
        assert isinstance(frame.data, np.ndarray), where
        assert (frame.data.dtype.str, frame.data.shape) == (sent.dtype, sent.shape), where
        assert digest(frame.data) == sent.digest, where


SENDERS = ("det-a", "det-b", "det-c")
STREAMS = ("p11/scan_0001", "p11/scan_0002", "p21/run.7")
PER_STREAM = 45


def run_sender(producer: Producer, sender_no: int, log: dict[tuple[str, str], list[Sent]]) -> None:
    """Send PER_STREAM messages to every stream, interleaved; every fifth batch by send_many."""
    sender = producer.sender_id
    k = 0
    while k < PER_STREAM:
        for stream_no, stream in enumerate(STREAMS):
            ks = range(k, min(k + (3 if k % 5 == 0 else 1), PER_STREAM))
            items = []
            for j in ks:
                data = sample(sender_no, stream_no, j)
                meta = {"sender": sender, "k": j, "stream": stream, "nested": {"ok": [1, 2]}}
                items.append((data, meta))
                log[stream, sender].append(describe_sent(sender, j, data, meta))
            if len(items) == 1:
                seqs = [producer.send(stream, *items[0])]
            else:
                seqs = producer.send_many(stream, items)
            assert seqs == list(range(seqs[0], seqs[0] + len(items)))
        k = ks.stop
    producer.flush(timeout=30)


def test_senders_and_streams_arrive_intact_in_order(tmp_path: Path, receiver: Receiver) -> None:
    log: dict[tuple[str, str], list[Sent]] = {
        (stream, sender): [] for stream in STREAMS for sender in SENDERS
    }
    producers = [make_producer(receiver, tmp_path / f"spool-{s}", s) for s in SENDERS]
    errors: list[BaseException] = []

    def in_thread(producer: Producer, sender_no: int) -> None:
        try:
            run_sender(producer, sender_no, log)
        except BaseException as err:  # reported by the test thread
            errors.append(err)

    try:
        threads = [
            threading.Thread(target=in_thread, args=(p, n)) for n, p in enumerate(producers[:2])
        ]
        for t in threads:
            t.start()
        run_sender(producers[2], 2, log)
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert not errors, errors
        for stream in STREAMS:
            producers[2].finish(stream)
        producers[2].flush(timeout=30)
    finally:
        for p in producers:
            p.close()

    with Consumer(receiver.endpoints["api"]) as consumer:
        for stream in STREAMS:
            frames = read_stream(consumer, stream)
            assert len(frames) == PER_STREAM * len(SENDERS)
            info = consumer.info(stream)
            assert (info.first, info.last, info.count) == (0, len(frames) - 1, len(frames))
            assert info.finished
            for sender in SENDERS:
                mine = [f for f in frames if f.sender == sender]
                sent = log[stream, sender]
                assert [f.meta["k"] for f in mine] == list(range(PER_STREAM))  # G5
                seqs = [f.seq for f in mine]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
                for frame, expected in zip(mine, sent, strict=True):
                    check_frame(frame, expected)
    assert {s.digest for sent in log.values() for s in sent if s.kind != "none"}, "no data sent"


# ---------------------------------------------------------------------------
# Reading: waiting for a future index, timeouts, the end of a finished stream.


def requests_served(rx: Receiver, op: str) -> float:
    return rx.metrics.requests.labels(op)._value.get()


def test_get_waits_for_a_future_index(tmp_path: Path, receiver: Receiver) -> None:
    stream = "wait/future"
    result: list[Frame | BaseException] = []

    def get_index_1() -> None:
        with Consumer(receiver.endpoints["api"]) as consumer:
            try:
                result.append(consumer.get(stream, 1, timeout=30.0))
            except BaseException as err:
                result.append(err)

    with make_producer(receiver, tmp_path / "spool", "waiter") as producer:
        producer.send(stream, b"index 0")
        producer.flush(timeout=10)
        reader = threading.Thread(target=get_index_1)
        reader.start()
        # the request is waiting at the receiver before index 1 exists
        wait_for(lambda: requests_served(receiver, "get") == 1, what="the get request")
        assert receiver.store.next_index(stream) == 1
        assert not result
        producer.send(stream, b"index 1", {"late": True})
        reader.join(timeout=30)
    assert not reader.is_alive()
    [frame] = result
    assert isinstance(frame, Frame), frame
    assert (frame.index, frame.data, frame.meta, frame.seq) == (1, b"index 1", {"late": True}, 1)


def test_get_of_an_unwritten_index_times_out(tmp_path: Path, receiver: Receiver) -> None:
    stream = "wait/never"
    with make_producer(receiver, tmp_path / "spool", "timeouts") as producer:
        producer.send(stream, b"only")
        producer.flush(timeout=10)
    with Consumer(receiver.endpoints["api"]) as consumer:
        with pytest.raises(NotYetAvailable, match="index 1 of stream 'wait/never'"):
            consumer.get(stream, 1, timeout=0.3)
        with pytest.raises(NotYetAvailable, match="index 5 of stream 'wait/never'"):
            consumer.get(stream, 5, timeout=0)
        with pytest.raises(NotYetAvailable, match="'wait/unknown'"):
            consumer.get("wait/unknown", 0, timeout=0.2)
        assert consumer.get(stream, 0, timeout=0).data == b"only"


def test_finished_stream_ends_reads_and_wakes_waiters(tmp_path: Path, receiver: Receiver) -> None:
    stream = "finish/me"
    result: list[Frame | BaseException] = []

    def get_index_2() -> None:
        with Consumer(receiver.endpoints["api"]) as consumer:
            try:
                result.append(consumer.get(stream, 2, timeout=30.0))
            except BaseException as err:
                result.append(err)

    with make_producer(receiver, tmp_path / "spool", "finisher") as producer:
        assert producer.send_many(stream, [(b"a", None), (b"b", None)]) == [0, 1]
        producer.flush(timeout=10)
        reader = threading.Thread(target=get_index_2)
        reader.start()
        wait_for(lambda: requests_served(receiver, "get") == 1, what="the get request")
        assert producer.finish(stream) == 2
        producer.flush(timeout=10)
        reader.join(timeout=30)
        assert not reader.is_alive()
        [error] = result
        assert isinstance(error, StreamFinished), error
        with pytest.raises(StreamFinished, match="stream 'finish/me' was finished"):
            producer.send(stream, b"too late")

    with Consumer(receiver.endpoints["api"]) as consumer:
        assert [f.data for f in read_stream(consumer, stream)] == [b"a", b"b"]
        with pytest.raises(StreamFinished, match="last index is 1"):
            consumer.get(stream, 2, timeout=5.0)
        with pytest.raises(StreamFinished):
            consumer.get(stream, 10, timeout=0)
        info = consumer.info(stream)
        assert (info.count, info.last, info.finished) == (2, 1, True)


# ---------------------------------------------------------------------------
# The spool: reopening, ownership, limits, batches, sync modes.


def test_reopened_spool_continues_the_seq_numbering(tmp_path: Path, receiver: Receiver) -> None:
    spool_dir = tmp_path / "spool"
    stream = "reopen/seq"
    with make_producer(receiver, spool_dir, "reopener") as producer:
        assert [producer.send(stream, b"x%d" % k) for k in range(3)] == [0, 1, 2]
        producer.flush(timeout=10)
    with make_producer(receiver, spool_dir, "reopener") as producer:
        assert producer.send(stream, b"x3") == 3
        assert producer.send_many(stream, [(b"x4", None), (b"x5", None)]) == [4, 5]
        assert producer.finish(stream) == 6
        producer.flush(timeout=10)
    with Consumer(receiver.endpoints["api"]) as consumer:
        frames = read_stream(consumer, stream)
    assert [(f.index, f.seq, f.data) for f in frames] == [(k, k, b"x%d" % k) for k in range(6)]


def test_spool_of_another_sender_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    spool_dir = tmp_path / "spool"
    with make_producer(receiver, spool_dir, "owner") as producer:
        producer.send("owned/stream", b"mine")
        producer.flush(timeout=10)
    with pytest.raises(ConfigError, match="belongs to sender 'owner', not 'intruder'"):
        make_producer(receiver, spool_dir, "intruder")
    # the refused open left nothing behind: the owner opens its spool again
    with make_producer(receiver, spool_dir, "owner") as producer:
        assert producer.send("owned/stream", b"still mine") == 1


def test_full_spool_raises_spool_full_and_keeps_what_it_has(
    tmp_path: Path, receiver_config: ReceiverConfig, absent_endpoints: tuple[str, str]
) -> None:
    ingest, api = absent_endpoints
    spool_dir = tmp_path / "spool"
    stream = "full/spool"
    chunk = bytes(range(256)) * (2 * KiB)  # 512 KiB
    limit = 2 * len(chunk) + KiB  # two chunks and their headers, not a third message
    with Producer(
        ingest, api, spool_dir, "filler", max_spool_bytes=limit, send_timeout=0.2
    ) as producer:
        assert producer.send(stream, chunk) == 0
        assert producer.send(stream, chunk[::-1]) == 1
        with pytest.raises(SpoolFull, match=rf"max_spool_bytes {limit} .* is the receiver at"):
            producer.send(stream, bytes(KiB))
        with pytest.raises(MessageTooLarge, match="exceed max_spool_bytes"):
            producer.send(stream, chunk * 3)
        assert producer.spool_messages == 2
        assert 2 * len(chunk) < producer.spool_bytes <= limit

        # the receiver comes up on those endpoints: what was spooled arrives, space frees
        config = msgspec.structs.replace(receiver_config, ingest=ingest, api=api)
        with Receiver(config) as rx:
            producer.flush(timeout=30)
            # acked messages leave the spool soon after the ack, not with it
            wait_for(lambda: producer.spool_messages == 0, what="acked messages released")
            assert producer.send(stream, bytes(KiB)) == 2
            producer.flush(timeout=30)
            with Consumer(rx.endpoints["api"]) as consumer:
                data = [consumer.get(stream, i, timeout=5).data for i in range(3)]
                with pytest.raises(NotYetAvailable):
                    consumer.get(stream, 3, timeout=0)
    assert data == [chunk, chunk[::-1], bytes(KiB)]


def test_metadata_counts_against_the_spool_limit(
    tmp_path: Path, absent_endpoints: tuple[str, str]
) -> None:
    ingest, api = absent_endpoints
    meta = {"notes": "n" * 20_000}  # metadata-only messages of about 20 kB each
    with Producer(
        ingest, api, tmp_path / "spool", "chatty", max_spool_bytes=64 * KiB, send_timeout=0.2
    ) as producer:
        assert [producer.send("meta/only", None, meta) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(SpoolFull):
            producer.send("meta/only", None, meta)
        assert producer.spool_messages == 3
        assert 3 * 20_000 < producer.spool_bytes <= 64 * KiB


def count_spool_commits(producer: Producer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the LMDB write transactions of ``producer``'s spool from now on."""
    env = producer._spool.env
    commits: list[int] = []
    write = env.write

    def counting_write(fill):
        commits.append(1)
        return write(fill)

    monkeypatch.setattr(env, "write", counting_write)
    return commits


def test_send_many_is_one_commit_all_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absent_endpoints: tuple[str, str]
) -> None:
    ingest, api = absent_endpoints  # no acks, so nothing but send_many writes the spool
    stream = "batch/commit"
    with Producer(ingest, api, tmp_path / "spool", "batcher") as producer:
        commits = count_spool_commits(producer, monkeypatch)
        items = [(np.full((8, 8), k, dtype=np.uint8), {"k": k}) for k in range(50)]
        assert producer.send_many(stream, items, checkpoint=("source", b"50")) == list(range(50))
        assert len(commits) == 1
        assert producer.checkpoint("source") == b"50"
        assert producer.send_many(stream, []) == []
        assert len(commits) == 1

        # one bad item: nothing of the batch is spooled, the numbering does not move
        bad = [(b"fine", None), (np.array(["text"]), None)]
        with pytest.raises(InvalidFrame, match="dtype <U4 is not supported"):
            producer.send_many(stream, bad, checkpoint=("source", b"52"))
        assert len(commits) == 1
        assert producer.spool_messages == 50
        assert producer.checkpoint("source") == b"50"
        assert producer.send(stream, b"next") == 50


def test_spool_sync_batch_delivers_everything(tmp_path: Path, receiver: Receiver) -> None:
    stream = "sync/batch"
    payloads = [np.random.default_rng(k).bytes(1000 + k) for k in range(200)]
    with make_producer(
        receiver, tmp_path / "spool", "batchy", spool_sync="batch", spool_batch_seconds=0.05
    ) as producer:
        for first in range(0, 200, 20):
            producer.send_many(
                stream, [(p, {"k": first + i}) for i, p in enumerate(payloads[first : first + 20])]
            )
        producer.finish(stream)
        producer.flush(timeout=30)
    with Consumer(receiver.endpoints["api"]) as consumer:
        frames = read_stream(consumer, stream)
    assert [digest(f.data) for f in frames] == [digest(p) for p in payloads]
    assert [f.meta["k"] for f in frames] == list(range(200))


def test_spool_sync_batch_keeps_unsent_messages_across_close(
    tmp_path: Path, absent_endpoints: tuple[str, str]
) -> None:
    ingest, api = absent_endpoints
    spool_dir = tmp_path / "spool"
    with Producer(ingest, api, spool_dir, "batchy", spool_sync="batch") as producer:
        assert producer.send_many("sync/kept", [(b"%d" % k, None) for k in range(5)]) == [
            0,
            1,
            2,
            3,
            4,
        ]
    with Producer(ingest, api, spool_dir, "batchy") as producer:
        assert producer.spool_messages == 5
        assert producer.send("sync/kept", b"5") == 5


# ---------------------------------------------------------------------------
# A real receiver daemon.


def test_daemon_restart_keeps_indices_consecutive(tmp_path: Path) -> None:
    stream = "daemon/restart"
    with ReceiverProcess(tmp_path / "store") as rx:
        with Producer(rx.ingest, rx.api, tmp_path / "spool-1", "first") as producer:
            producer.send_many(stream, [(b"first %d" % k, None) for k in range(20)])
            producer.flush(timeout=30)
        assert rx.terminate() == 0
        rx.start()
        with Producer(rx.ingest, rx.api, tmp_path / "spool-2", "second") as producer:
            producer.send_many(stream, [(b"second %d" % k, None) for k in range(20)])
            producer.finish(stream)
            producer.flush(timeout=30)
        with Consumer(rx.api) as consumer:
            frames = read_stream(consumer, stream)
    assert [(f.index, f.sender, f.data) for f in frames] == [
        (k, "first", b"first %d" % k) for k in range(20)
    ] + [(20 + k, "second", b"second %d" % k) for k in range(20)]


def test_small_and_large_messages_travel_packed_and_unpacked(
    tmp_path: Path, receiver: Receiver, monkeypatch
) -> None:
    """Batches of small payloads go as DATA_PACKED, others as DATA; both arrive the same."""
    from hidra_ng.sender import producer as producer_module

    kinds: list[int] = []
    send_parts = producer_module.send_parts

    def noting_kind(sock, parts) -> int:
        taken = send_parts(sock, parts)  # raises zmq.Again before anything is noted
        kinds.append(parts[0][3])  # the kind, fourth byte of the preamble
        return taken

    monkeypatch.setattr(producer_module, "send_parts", noting_kind)
    small = [(f"small {i}".encode(), {"i": i}) for i in range(50)]
    large = [(bytes([i]) * (100 << 10), {"i": 50 + i}) for i in range(3)]
    ep = receiver.endpoints
    with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "mixed") as p:
        p.send_many("mix", small)
        p.flush(10)
        p.send_many("mix", large)
        p.flush(10)
    assert proto.Kind.DATA_PACKED in kinds and proto.Kind.DATA in kinds
    with Consumer(ep["api"]) as c:
        got = [c.get("mix", i) for i in range(53)]
    assert [(f.data, f.meta) for f in got] == [(d, m) for d, m in small + large]


def test_a_bad_header_in_a_packed_message_refuses_it_and_the_rest(receiver: Receiver) -> None:
    headers = [
        proto.Header(stream, seq, proto.Payload.BYTES, "", (), "none", b"{}", 0.0)
        for seq, stream in enumerate(["ok/s", "bad name", "ok/s"])
    ]
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(receiver.endpoints["ingest"])
    try:
        push.send_multipart([
            proto.encode(proto.Kind.DATA_PACKED, proto.Envelope("raw", 1, 0, 0)),
            proto.encode_packed([proto.encode_body(h) for h in headers], [1, 1, 1]),
            b"abc",
        ])  # fmt: skip
        wait_for(lambda: receiver.store.next_index("ok/s") == 1, what="the first message")
        wait_for(lambda: receiver.metrics.rejected.labels("stream_name")._value.get() == 1,
                 what="one refusal")  # fmt: skip
    finally:
        push.close(0)
    with Consumer(receiver.endpoints["api"]) as c:
        assert c.get("ok/s", 0).data == b"a"
        with pytest.raises(NotYetAvailable):
            c.get("ok/s", 1, timeout=0.3)
