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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from hidra_ng.sender.spool import Spool, entry_bytes
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
    with tempfile.TemporaryDirectory(prefix="hidra-ng-steps-") as tmp:
        spool = Spool(Path(tmp) / "spool", "steps", sync="batch")
        try:
            items = [(header, DATA)] * BATCH
            rounds = LOOPS // BATCH
            for label, step in (
                ("Spool.append (batch of 1000, no fsync)", lambda _: spool.append(items)),
                ("Spool.read (1000 at a time)", lambda r: spool.read(r * BATCH, BATCH, 1 << 30)),
                ("Spool.release (1000 at a time)", lambda r: spool.release(r * BATCH + BATCH - 1)),
            ):
                t0 = time.perf_counter()
                for r in range(rounds):
                    step(r)
                print(f"  {label:42s} {(time.perf_counter() - t0) / LOOPS * 1e6:6.2f} us")
        finally:
            spool.close()


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
    zmq_steps()
