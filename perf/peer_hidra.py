"""hidra_ng in ``make perf-peers``: a Producer in this process -> a real receiver process.

Default durability everywhere: ``Producer.send()`` returns once the frame is in the
local spool and fsynced (``spool_sync="always"``), and the receiver acknowledges a
frame only after its group commit is fsynced (SPEC §3 G1, G2). The receiver
(``hidra-ng receiver``, started as perf/run.py starts it) lives for the whole run;
each workload run has its own Producer, spool dir, sender id and stream.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from harness import wait_for
from payloads import FRAME_BYTES, frames_4mib
from peer_services import CpuMeter
from peer_stats import WITHOUT_FSYNC as WITHOUT_FSYNC_NAME
from peer_stats import Sample

from hidra_ng import Consumer, Producer, Subscriber
from hidra_ng.testing import ReceiverProcess

TIMEOUT = 600.0

DURABILITY = (
    "fsync before every acknowledgement: Producer.send() returns after the spool's"
    " fsync (spool_sync='always'), the receiver acks after its commit's fsync;"
    " two fsyncs per frame on one disk here"
)


WITHOUT_FSYNC = (
    "as RabbitMQ streams on one node: acknowledged once in the page cache. The same"
    " hidra_ng, its receiver run under eatmydata (LD_PRELOAD: fsync, fdatasync and msync"
    " return at once), the Producer with spool_sync='batch' (send() returns before the"
    " spool's fsync, which runs every 0.5 s in the background); not a mode hidra_ng"
    " offers, a measurement of what the fsyncs cost"
)


class HidraSystem:
    """hidra_ng at its default durability, or (``without_fsync``) with its fsyncs off."""

    def __init__(self, work_dir: Path, *, without_fsync: str = "") -> None:
        """``without_fsync``: the path of libeatmydata.so, to run without fsyncs."""
        self.name = WITHOUT_FSYNC_NAME if without_fsync else "hidra_ng"
        self.durability = WITHOUT_FSYNC if without_fsync else DURABILITY
        self._spool_sync = "batch" if without_fsync else "always"
        self._work_dir = work_dir
        self._stack = contextlib.ExitStack()
        env = {"LD_PRELOAD": without_fsync} if without_fsync else {}
        self.rx = self._stack.enter_context(ReceiverProcess(work_dir / "store", env=env))
        self._producers = 0

    def close(self) -> None:
        self._stack.close()

    def server_pids(self) -> list[int]:
        assert self.rx.proc is not None
        return [self.rx.proc.pid]

    def _meter(self) -> CpuMeter:
        if self.rx.proc is not None and self.rx.proc.poll() is not None:
            raise RuntimeError(f"the receiver exited with {self.rx.proc.returncode}")
        return CpuMeter(self.server_pids())

    @contextlib.contextmanager
    def _producer(self) -> Iterator[Producer]:
        self._producers += 1
        spool = self._work_dir / f"spool-{self._producers}"
        sender = f"perf-peers-{self._producers}"
        with Producer(self.rx.ingest, self.rx.api, spool, sender, spool_sync=self._spool_sync) as p:
            wait_for(lambda: p.receiver_up, 30, "the producer hearing from the receiver")
            yield p

    def _check(self, stream: str, count: int, nbytes: int) -> None:
        with Consumer(self.rx.api) as c:
            info = c.info(stream)
        if (info.count, info.bytes) != (count, nbytes):
            raise RuntimeError(
                f"hidra_ng stream {stream} holds {info.count} messages of {info.bytes} bytes;"
                f" expected {count} of {nbytes}"
            )

    # ------------------------------------------------------------------ workloads

    def ingest_4mib(self, stream: str, count: int) -> Sample:
        frames = frames_4mib()
        with self._producer() as p:
            meter = self._meter()
            t0 = time.perf_counter()
            for i in range(count):
                p.send(stream, frames[i % len(frames)])
            p.flush(timeout=TIMEOUT)
            seconds = time.perf_counter() - t0
            client, server = meter.read()
        self._check(stream, count, count * FRAME_BYTES)
        return Sample(seconds, count * FRAME_BYTES, count, client, server)

    def ingest_small(self, stream: str, batch: list[bytes], calls: int) -> Sample:
        """``calls`` send_many() calls of ``batch``, one spool fsync per call."""
        items = [(message, None) for message in batch]
        with self._producer() as p:
            meter = self._meter()
            t0 = time.perf_counter()
            for _ in range(calls):
                p.send_many(stream, items)
            p.flush(timeout=TIMEOUT)
            seconds = time.perf_counter() - t0
            client, server = meter.read()
        n, nbytes = calls * len(batch), calls * sum(map(len, batch))
        self._check(stream, n, nbytes)
        return Sample(seconds, nbytes, n, client, server)

    def readback_4mib(self, stream: str, count: int) -> Sample:
        with Consumer(self.rx.api) as c:
            meter = self._meter()
            nbytes, expected = 0, 0
            t0 = time.perf_counter()
            for frame in c.replay(stream, 0, count):
                if frame.index != expected:
                    raise RuntimeError(f"replay gave index {frame.index}, expected {expected}")
                expected += 1
                nbytes += frame.data.nbytes
            seconds = time.perf_counter() - t0
            client, server = meter.read()
        if (expected, nbytes) != (count, count * FRAME_BYTES):
            raise RuntimeError(f"replay gave {expected} frames of {nbytes} bytes; expected {count}")
        return Sample(seconds, nbytes, count, client, server)

    def latency_4mib(self, stream: str, warmup: int, samples: int) -> Sample:
        """Producer.send() returning -> the Subscriber yielding the frame, one at a time."""
        frames = frames_4mib()
        latencies: list[float] = []
        with self._producer() as p, Subscriber(self.rx.publish, [stream]) as sub:
            # PUB/SUB joins asynchronously: send until the subscriber sees a frame
            deadline = time.monotonic() + 30
            while sub.receive(timeout=0.05) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the hidra_ng subscriber got no frame within 30 s")
                p.send(stream, frames[0])
            p.flush(timeout=TIMEOUT)
            while sub.receive(timeout=0.05) is not None:
                pass  # warm-up frames still on their way
            meter = self._meter()
            t0 = time.perf_counter()
            for i in range(warmup + samples):
                p.send(stream, frames[i % len(frames)])
                sent = time.perf_counter()
                if sub.receive(timeout=30) is None:
                    raise TimeoutError(f"hidra_ng latency frame {i} did not arrive within 30 s")
                if i >= warmup:
                    latencies.append(1000 * (time.perf_counter() - sent))
            seconds = time.perf_counter() - t0
            client, server = meter.read()
        n = warmup + samples
        return Sample(seconds, n * FRAME_BYTES, n, client, server, latencies)

    def drop(self, stream: str) -> None:
        """Nothing: the store lives in the run's temp dir, removed at the end."""
