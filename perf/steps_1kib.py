"""What each step of the small-message path costs, measured alone (no profiler).

    .venv/bin/python perf/steps_1kib.py

ingest_1kib is CPU-bound on both sides (perf/NOTES.md); cProfile inflates
per-call costs about 2x, so this script times the steps one by one, in a loop,
without it: the producer's per-message work (describe, meta, header checks, the
spool's append, read and release per message in batches of 1000) and the zmq
per-part costs of pyzmq's multipart calls against hidra_ng/zmqio.py and the
packed format (ADR 0002). A diagnostic: it prints, it asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from hidra_ng.sender.producer import Producer
from hidra_ng.sender.spool import Spool, entries_bytes, entry_bytes
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import describe
from hidra_ng.zmqio import recv_parts, send_parts

LOOPS = 20_000
BATCH = 1000
DATA = os.urandom(1024)


def per_call(label: str, fn: Callable[[], object], n: int = LOOPS) -> None:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"  {label:42s} {(time.perf_counter() - t0) / n * 1e6:6.2f} us")


def producer_steps() -> None:
    print("producer, per message:")
    header = proto.Header(
        "perf/ingest_1kib", 0, proto.Payload.BYTES, "", (), "none", b"{}", time.time()
    )
    per_call("describe(bytes)", lambda: describe(DATA))
    per_call("encode_meta(None)", lambda: proto.encode_meta(None))
    fields = ("s", 0, proto.Payload.BYTES, "", (), "none", b"{}", 0.0)
    per_call("Header(...)", lambda: proto.Header(*fields))
    per_call("check_header", lambda: proto.check_header(header, len(DATA)))
    per_call("entry_bytes (encodes the header)", lambda: entry_bytes(header, DATA))
    check = proto.HeaderChecker().check
    per_call("HeaderChecker.check (seen before)", lambda: check(header, len(DATA)))
    items = [(header, DATA)] * BATCH
    t0 = time.perf_counter()
    for _ in range(LOOPS // BATCH):
        entries_bytes(items)
    label = "entries_bytes (one encoding call per batch)"
    print(f"  {label:42s} {(time.perf_counter() - t0) / LOOPS * 1e6:6.2f} us")
    producer = Producer.__new__(Producer)
    producer._closed, producer.compression = False, "none"
    producer.max_message_bytes, producer.max_meta_bytes = proto.MAX_DATA_BYTES, proto.MAX_META_BYTES
    calls = [(DATA, None)] * BATCH
    with tempfile.TemporaryDirectory(prefix="hidra-ng-steps-") as tmp:
        spool = Spool(Path(tmp) / "spool", "steps", sync="batch")
        producer._spool = spool
        try:
            t0 = time.perf_counter()
            for _ in range(LOOPS // BATCH):
                producer._prepare_many("perf/ingest_1kib", calls)
            label = "Producer._prepare_many (describe .. checks)"
            print(f"  {label:42s} {(time.perf_counter() - t0) / LOOPS * 1e6:6.2f} us")
            items = [(header, DATA)] * BATCH
            rounds = LOOPS // BATCH
            for label, step in (
                ("Spool.append (batch of 1000, no fsync)", lambda _: spool.append(items)),
                ("Spool.read (1000 at a time)", lambda r: spool.read(r * BATCH, BATCH, 1 << 30)),
                ("Spool.read_run (1000 at a time)", lambda r: _read_run(spool, r * BATCH)),
                ("Spool.release (1000 at a time)", lambda r: spool.release(r * BATCH + BATCH - 1)),
            ):
                t0 = time.perf_counter()
                for r in range(rounds):
                    step(r)
                print(f"  {label:42s} {(time.perf_counter() - t0) / LOOPS * 1e6:6.2f} us")
        finally:
            spool.close()


def _read_run(spool: Spool, start: int) -> None:
    with spool.env.read() as txn:
        run = spool.read_run(txn, start, BATCH, 1 << 30)
        assert run is not None and len(run) == BATCH
        proto.encode_packed_joined(len(run), run.headers, run.sizes)


def receiver_steps() -> None:
    """The receiver's ingest thread and committer per message, batches of 1000 (CPU time)."""
    from hidra_ng.config import ReceiverConfig
    from hidra_ng.metrics import ReceiverMetrics
    from hidra_ng.receiver.committer import Committer
    from hidra_ng.receiver.daemon import Receiver
    from hidra_ng.receiver.live import LivePublisher
    from hidra_ng.receiver.store import Store

    print("receiver, per message (process time, median of 20 batches of 1000):")
    envelope = proto.Envelope("steps", 7, 0, 0)
    rounds = LOOPS // BATCH
    frames = []
    for r in range(rounds):
        headers = [
            proto.encode_body(
                proto.Header(
                    "perf/ingest_1kib",
                    r * BATCH + i,
                    proto.Payload.BYTES,
                    "",
                    (),
                    "none",
                    b"{}",
                    time.time(),
                )
            )
            for i in range(BATCH)
        ]
        frames.append(
            [
                _Frame(proto.encode(proto.Kind.DATA_PACKED, envelope)),
                _Frame(proto.encode_packed(headers, [len(DATA)] * BATCH)),
                _Frame(DATA * BATCH),
            ]
        )
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="hidra-ng-steps-") as tmp:
        config = ReceiverConfig(data_dir=tmp)
        store = Store(Path(tmp) / "store")
        metrics = ReceiverMetrics()
        pub = ctx.socket(zmq.XPUB)
        notice = ctx.socket(zmq.PAIR)
        notice.bind("inproc://steps-notice")
        notice_rx = ctx.socket(zmq.PAIR)
        notice_rx.connect("inproc://steps-notice")
        try:
            fake = Receiver.__new__(Receiver)
            fake.config, fake.metrics = config, metrics
            live = LivePublisher(pub, store, metrics, 64 << 20)
            committer = Committer(store, config, metrics, notice, threading.Event(), lambda: None)
            names = [
                "decode + check_headers + Incoming",
                "plan (admit, indices, Records)",
                "live publish (no subscriber)",
                "Store.write (puts, commit)",
                "after commit (metrics, notice)",
            ]
            clock: dict[str, list[float]] = {name: [] for name in names}
            for r in range(rounds):
                t = [time.process_time()]
                items = fake._decode_data(frames[r])
                t.append(time.process_time())
                planned = store.plan(items)
                t.append(time.process_time())
                live.publish(planned.result.committed)
                t.append(time.process_time())
                result = store.write(planned)
                t.append(time.process_time())
                committer._after_commit(result)
                t.append(time.process_time())
                notice_rx.recv()
                store.settle()
                for k, name in enumerate(names):
                    clock[name].append(t[k + 1] - t[k])
            total = 0.0
            for name in names:  # the median batch: other processes' load inflates some
                cost = statistics.median(clock[name]) / BATCH * 1e6
                total += cost
                print(f"  {name:42s} {cost:6.2f} us")
            print(f"  {'total':42s} {total:6.2f} us")
        finally:
            for sock in (pub, notice, notice_rx):
                sock.close(0)
            store.close()
            ctx.term()


class _Frame:
    """What recv_parts gives the receiver, for a frame made here."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data
        self.buffer = memoryview(data)


def zmq_steps() -> None:
    print("zmq, loopback tcp, 1000 messages of (100-byte header, 1 KiB payload) per multipart:")
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.connect(f"tcp://127.0.0.1:{port}")
    parts = [b"e" * 40] + [os.urandom(100), DATA] * BATCH
    packed = [b"e" * 40, b"h" * 100 * BATCH, DATA * BATCH]
    rounds = 20
    cases = (
        ("send_multipart / recv_multipart(copy=False)",
         lambda: push.send_multipart(parts, copy=False), lambda: pull.recv_multipart(copy=False)),
        ("zmqio.send_parts / recv_parts", lambda: send_parts(push, parts), lambda: _recv(pull)),
        ("packed: 3 frames per 1000 messages",
         lambda: send_parts(push, packed), lambda: _recv(pull)),
    )  # fmt: skip
    try:
        for label, send, recv in cases:
            t0 = time.perf_counter()
            for _ in range(rounds):
                send()
            t1 = time.perf_counter()
            for _ in range(rounds):
                recv()
            t2 = time.perf_counter()
            n = rounds * BATCH
            print(
                f"  {label:42s} send {(t1 - t0) / n * 1e6:5.2f} us,"
                f" receive {(t2 - t1) / n * 1e6:5.2f} us per message"
            )
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def _recv(sock: zmq.Socket) -> list:
    sock.poll(5000)
    return recv_parts(sock)


if __name__ == "__main__":
    producer_steps()
    receiver_steps()
    zmq_steps()
