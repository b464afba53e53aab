"""hidra_ng's figures (SPEC §12), each divided by the raw baseline it declares.

A figure is a probe registered in :data:`FIGURES` with the baseline it is
compared to. :data:`PLANNED` lists every figure SPEC §12 names; one that is not
registered yet (its API does not exist yet) is reported as "not measured yet",
never with a made-up value. To add one: write a run function here, decorate it
with ``@probe(FIGURES, Metric(name, unit, baseline=...))``, done.

ingest_4mib
    MB/s of 4 MiB frame payload from a ``Producer`` with default durability
    (``spool_sync="always"``: every ``send()`` returns after its spool commit is
    fsynced) in this process to a real receiver process
    (``hidra_ng.localrun.ReceiverProcess``, fsync per group commit) on loopback;
    timed from the first ``send()`` until ``flush()`` returns, i.e. until every
    frame is acknowledged as durably stored. Checked afterwards: the stream
    holds every frame.
ingest_1kib
    Messages/s of 1 KiB messages on the same path, sent with
    ``Producer.send_many`` in batches of ``batch_1kib`` (1000): one spool fsync per
    batch, as the raw baseline has one fsync per 1000 puts.

Every run starts a fresh receiver and producer on fresh temp dirs (the same
filesystem as /tmp), waits until the producer has heard from the receiver
before the clock starts, and removes everything afterwards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from harness import MB, Metric, Probe, Run, Scale, probe, scratch_dir, wait_for
from payloads import FRAME_BYTES, SMALL_BYTES, frames_4mib, messages_1kib

from hidra_ng import Consumer, Producer
from hidra_ng.localrun import ReceiverProcess

try:  # a test extra: CPU time of the receiver process, where the time goes
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

FLUSH_TIMEOUT = 600.0
FIGURES: list[Probe] = []

#: Every figure SPEC §12 names, with the baseline it is divided by.
PLANNED: dict[str, str] = {
    "ingest_4mib": "raw_lmdb_append_4mib",
    "ingest_1kib": "raw_lmdb_put_1kib",
    "replay_4mib": "raw_zmq_pushpull_4mib",
    "live_latency_4mib_p50": "raw_zmq_latency_4mib_p50",
    "live_latency_4mib_p99": "raw_zmq_latency_4mib_p99",
    "group_1kib": "raw_lmdb_put_1kib",
    "ingest_4mib_lz4": "raw_lmdb_append_4mib",
}


class _CpuClock:
    """CPU seconds used by this process and by the receiver process since the start."""

    def __init__(self, receiver: ReceiverProcess) -> None:
        self._rx = psutil.Process(receiver.proc.pid) if psutil and receiver.proc else None
        self._own0 = time.process_time()
        self._rx0 = self._receiver()

    def _receiver(self) -> float:
        if self._rx is None:
            return float("nan")
        t = self._rx.cpu_times()
        return t.user + t.system

    def read(self) -> dict[str, float]:
        return {
            "producer_cpu_seconds": time.process_time() - self._own0,
            "receiver_cpu_seconds": self._receiver() - self._rx0,
        }


@contextlib.contextmanager
def _pipeline(label: str, **producer_options) -> Iterator[tuple[ReceiverProcess, Producer]]:
    """A fresh receiver process and a Producer connected to it, on fresh temp dirs."""
    with (
        scratch_dir(label) as d,
        ReceiverProcess(d / "store") as rx,
        Producer(rx.ingest, rx.api, d / "spool", "perf", **producer_options) as p,
    ):
        wait_for(lambda: p.receiver_up, 30, "the producer hearing from the receiver")
        yield rx, p


def _check_stored(rx: ReceiverProcess, stream: str, count: int, nbytes: int | None) -> None:
    with Consumer(rx.api) as c:
        info = c.info(stream)
    if info.count != count or (nbytes is not None and info.bytes != nbytes):
        raise RuntimeError(
            f"stream {stream} holds {info.count} messages of {info.bytes} bytes after flush();"
            f" expected {count} messages of {nbytes} bytes"
        )


@probe(FIGURES, Metric("ingest_4mib", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib(scale: Scale) -> Run:
    """Producer.send() of 4 MiB frames (default durability) -> receiver process, acknowledged."""
    frames = frames_4mib()
    n = scale.frames_4mib
    stream = "perf/ingest_4mib"
    with _pipeline("ingest-4mib") as (rx, p):
        cpu = _CpuClock(rx)
        t0 = time.perf_counter()
        for i in range(n):
            p.send(stream, frames[i % len(frames)])
        sent = time.perf_counter()
        p.flush(timeout=FLUSH_TIMEOUT)
        done = time.perf_counter()
        detail = cpu.read()
        _check_stored(rx, stream, n, n * FRAME_BYTES)
    detail.update(frames=n, send_seconds=sent - t0, flush_seconds=done - sent)
    return Run([n * FRAME_BYTES / (done - t0) / MB], detail)


@probe(FIGURES, Metric("ingest_1kib", "msg/s", baseline="raw_lmdb_put_1kib"))
def ingest_1kib(scale: Scale) -> Run:
    """Producer.send_many() of 1 KiB messages in batches of 1000 -> receiver, acknowledged."""
    pool = messages_1kib()
    batch = [(pool[i % len(pool)], None) for i in range(scale.batch_1kib)]
    calls = scale.messages_1kib // scale.batch_1kib
    n = calls * scale.batch_1kib
    stream = "perf/ingest_1kib"
    with _pipeline("ingest-1kib") as (rx, p):
        cpu = _CpuClock(rx)
        t0 = time.perf_counter()
        for _ in range(calls):
            p.send_many(stream, batch)
        sent = time.perf_counter()
        p.flush(timeout=FLUSH_TIMEOUT)
        done = time.perf_counter()
        detail = cpu.read()
        _check_stored(rx, stream, n, n * SMALL_BYTES)
    detail.update(messages=n, send_seconds=sent - t0, flush_seconds=done - sent)
    detail["MB/s"] = n * SMALL_BYTES / (done - t0) / MB
    return Run([n / (done - t0)], detail)
