"""hidra_ng's figures (SPEC §12), each divided by the raw baseline it declares.

A figure is a probe registered in :data:`FIGURES` with the baseline it is
compared to. :data:`PLANNED` lists every figure SPEC §12 names; one that is not
registered (because its API does not exist yet) is reported as "not measured
yet", never with a made-up value. To add one: write a run function here and
decorate it with ``@probe(FIGURES, Metric(name, unit, baseline=...))``.

ingest_4mib
    MB/s of 4 MiB frame payload from a ``Producer`` with default durability
    (``spool_sync="always"``: every ``send()`` returns after its spool commit is
    fsynced) in this process to a real receiver process
    (``hidra_ng.testing.ReceiverProcess``, fsync per group commit) on loopback;
    timed from the first ``send()`` until ``flush()`` returns, i.e. until every
    frame is acknowledged as durably stored. Checked afterwards: the stream
    holds every frame. Baseline: raw_lmdb_append_4mib.
ingest_4mib_lz4
    The same with ``Producer(compression="lz4")`` (blosc2 LZ4 + bitshuffle, in
    the caller's thread); MB/s of frame data before compression. The frames are
    Poisson(2) counts (perf/payloads.py), so the ratio depends on that choice.
ingest_1kib
    Messages/s of 1 KiB messages on the ingest path, sent with
    ``Producer.send_many`` in batches of ``batch_1kib`` (1000): one spool fsync per
    batch, as the baseline raw_lmdb_put_1kib has one fsync per 1000 puts.
replay_4mib
    MB/s of ``Consumer.replay(stream, 0, n)`` (default window, frames decoded to
    arrays) of the ``frames_4mib`` frames that ingest_4mib stored in the same round
    (or, when it did not run, of frames stored just before, untimed): the data is
    in the page cache as the baseline's is in memory. From the call until the
    last frame is in. Baseline: raw_zmq_pushpull_4mib.
live_latency_4mib_p50 / _p99
    Milliseconds from ``Producer.send()`` returning to a ``Subscriber`` in the same
    process yielding the frame (SPEC §12): the link's push, the receiver's
    validation, the publish (before the commit's fsync, SPEC G6), the two
    network hops and the Subscriber's feed thread and decode. Frames are sent one
    at a time, each after the previous one arrived, so nothing queues; the
    producer uses ``spool_sync="batch"``, as the spool's fsync is inside send(),
    not after it. Percentiles over all samples after a warm-up; ratio = ours /
    raw_zmq_relay_4mib (the same two hops in raw pyzmq; lower is better). Detail:
    the same from ``Frame.stored`` (the receiver's clock once the frame is in the
    transaction) to the Subscriber, and the frames not yet acknowledged when
    each frame arrived (``samples_with_full_window``: samples that found the
    Producer's 64 MiB window full, so its link waited for the receiver's next
    group commit; sent back to back, the frames outrun this VM's disk).
live_latency_4mib_paced_p50 / _p99
    The same with one frame sent every 1 / ``LIVE_PACED_HZ`` s (25 Hz, 105 MB/s:
    written twice on one disk, spool and store, below what it takes durably), as
    a detector sends; baseline raw_zmq_relay_4mib_paced, the relay at the same
    pace. No goal of its own: it shows the live path without the disk's backlog.
group_1kib
    Messages/s through one consumer group of 4 members (4 threads of this
    process, each with its own ``Consumer``), each taking messages with
    ``next_many(max_count=16, ack=previous batch)`` (one round trip per batch:
    the acks of the last batch travel with the request for the next) until
    ``StreamFinished``, on a finished stream of 1 KiB messages stored just before
    (untimed). Checked: every index delivered exactly once. Baseline:
    raw_lmdb_put_1kib, as SPEC §12 fixes it.
group_1kib_single
    The same with ``next()`` and ``ack()`` of one message at a time (two round
    trips per message): what a member that handles messages one by one gets.

The figures of one round share one receiver process (default settings, store in
a temp dir on the filesystem of /tmp, removed after the round); each run has its
own Producer, spool dir, sender id and stream, and waits until the producer has
heard from the receiver before its clock starts. Details kept per run: CPU
seconds of this process and of the receiver process in the timed part, and for
ingest the split between the send() calls and the final flush().
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from harness import (
    MB,
    Metric,
    MiB,
    Probe,
    Round,
    Run,
    Scale,
    percentile,
    probe,
    scratch_dir,
    wait_for,
)
from payloads import FRAME_BYTES, LIVE_PACED_HZ, SMALL_BYTES, frames_4mib, messages_1kib

from hidra_ng import Consumer, Producer, StreamFinished, Subscriber
from hidra_ng.testing import ReceiverProcess

try:  # a test extra: CPU time of the receiver process, where the time goes
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

FLUSH_TIMEOUT = 600.0
#: the live figures' Producer window: Producer's default, named for the detail
LIVE_WINDOW_BYTES = 64 * MiB
STORED_4MIB = "stored 4 MiB stream"  # Round key: (stream, frames) of uncompressed 4 MiB frames
FIGURES: list[Probe] = []

#: Every figure SPEC §12 names, with the baseline it is divided by.
PLANNED: dict[str, str] = {
    "ingest_4mib": "raw_lmdb_append_4mib",
    "ingest_1kib": "raw_lmdb_put_1kib",
    "replay_4mib": "raw_zmq_pushpull_4mib",
    "live_latency_4mib_p50": "raw_zmq_relay_4mib_p50",
    "live_latency_4mib_p99": "raw_zmq_relay_4mib_p99",
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


#: Makes the receiver process from its data dir; profile_ingest.py swaps in one that
#: runs under cProfile.
receiver_factory: Callable[[Path], ReceiverProcess] = ReceiverProcess


@contextlib.contextmanager
def _receiver() -> Iterator[ReceiverProcess]:
    with scratch_dir("receiver") as d, receiver_factory(d / "store") as rx:
        yield rx


def _round_receiver(rnd: Round) -> ReceiverProcess:
    """The round's receiver process, started on first use, stopped after the round."""
    rx = rnd.shared("receiver", _receiver)
    if rx.proc is not None and rx.proc.poll() is not None:
        raise RuntimeError(f"the receiver exited with {rx.proc.returncode}:\n{rx.read_log()}")
    return rx


@contextlib.contextmanager
def _pipeline(
    rnd: Round, name: str, **producer_options
) -> Iterator[tuple[ReceiverProcess, Producer]]:
    """The round's receiver and a new Producer (own spool dir and sender id) connected to it."""
    rx = _round_receiver(rnd)
    with (
        scratch_dir(name) as d,
        Producer(rx.ingest, rx.api, d / "spool", f"perf-{name}", **producer_options) as p,
    ):
        wait_for(lambda: p.receiver_up, 30, "the producer hearing from the receiver")
        yield rx, p


def _check_stored(rx: ReceiverProcess, stream: str, count: int, nbytes: int | None = None):
    """The stream's StreamInfo, after checking it holds what was sent."""
    with Consumer(rx.api) as c:
        info = c.info(stream)
    if info.count != count or (nbytes is not None and info.bytes != nbytes):
        raise RuntimeError(
            f"stream {stream} holds {info.count} messages of {info.bytes} bytes after flush();"
            f" expected {count} messages of {nbytes or 'any number of'} bytes"
        )
    return info


def _fill(p: Producer, stream: str, pool: tuple, n: int, batch: int) -> None:
    """Untimed set-up: ``n`` messages cycled from ``pool``, ``batch`` per send_many, acked."""
    for start in range(0, n, batch):
        p.send_many(
            stream, [(pool[i % len(pool)], None) for i in range(start, min(start + batch, n))]
        )
    p.flush(timeout=FLUSH_TIMEOUT)


def _ingest_4mib(scale: Scale, rnd: Round, name: str, **producer_options) -> Run:
    frames = frames_4mib()
    n = scale.frames_4mib
    stream = f"perf/{name}"
    with _pipeline(rnd, name, **producer_options) as (rx, p):
        seconds, detail = send_timed(rx, p, stream, frames, n)
        stored = _check_stored(rx, stream, n)
    if not producer_options:  # replay_4mib reads this stream, rather than storing another
        rnd.shared(STORED_4MIB, lambda: contextlib.nullcontext((stream, n)))
    detail["stored_bytes_per_frame"] = stored.bytes / n
    return Run({name: [n * FRAME_BYTES / seconds / MB]}, detail)


def send_timed(rx: ReceiverProcess, p: Producer, stream: str, frames, n: int):
    """``n`` send() calls cycling ``frames``, then flush(): see :func:`timed_until_acked`."""

    def send_all() -> None:
        for i in range(n):
            p.send(stream, frames[i % len(frames)])

    return timed_until_acked(rx, p, send_all)


def send_many_timed(rx: ReceiverProcess, p: Producer, stream: str, batch: list, calls: int):
    """``calls`` send_many() calls of ``batch``, then flush(): see :func:`timed_until_acked`."""

    def send_all() -> None:
        for _ in range(calls):
            p.send_many(stream, batch)

    return timed_until_acked(rx, p, send_all)


def timed_until_acked(rx: ReceiverProcess, p: Producer, send_all: Callable[[], None]):
    """``send_all()``, then flush(): (seconds until everything is acked, detail).

    The detail has the CPU seconds of both processes and the split between the
    sending and the final flush().
    """
    cpu = _CpuClock(rx)
    t0 = time.perf_counter()
    send_all()
    sent = time.perf_counter()
    p.flush(timeout=FLUSH_TIMEOUT)
    done = time.perf_counter()
    detail = cpu.read()
    detail.update(send_seconds=sent - t0, flush_seconds=done - sent)
    return done - t0, detail


@probe(FIGURES, Metric("ingest_4mib", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() of 4 MiB frames (default durability) -> receiver process, acknowledged."""
    return _ingest_4mib(scale, rnd, "ingest_4mib")


@probe(FIGURES, Metric("ingest_4mib_lz4", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib_lz4(scale: Scale, rnd: Round) -> Run:
    """ingest_4mib with Producer(compression="lz4"); MB/s of frame data before compression."""
    return _ingest_4mib(scale, rnd, "ingest_4mib_lz4", compression="lz4")


@probe(FIGURES, Metric("ingest_1kib", "msg/s", baseline="raw_lmdb_put_1kib"))
def ingest_1kib(scale: Scale, rnd: Round) -> Run:
    """Producer.send_many() of 1 KiB messages in batches of 1000 -> receiver, acknowledged."""
    pool = messages_1kib()
    batch = [(pool[i % len(pool)], None) for i in range(scale.batch_1kib)]
    calls = scale.messages_1kib // scale.batch_1kib
    n = calls * scale.batch_1kib
    stream = "perf/ingest_1kib"
    with _pipeline(rnd, "ingest_1kib") as (rx, p):
        seconds, detail = send_many_timed(rx, p, stream, batch, calls)
        _check_stored(rx, stream, n, n * SMALL_BYTES)
    detail["MB/s"] = n * SMALL_BYTES / seconds / MB
    return Run({"ingest_1kib": [n / seconds]}, detail)


@probe(FIGURES, Metric("replay_4mib", "MB/s", baseline="raw_zmq_pushpull_4mib"))
def replay_4mib(scale: Scale, rnd: Round) -> Run:
    """Consumer.replay() of a stored stream of 4 MiB frames, decoded to arrays."""
    stream, n = rnd.shared(STORED_4MIB, lambda: _stored_4mib(rnd, scale))
    rx = _round_receiver(rnd)
    with Consumer(rx.api) as c:
        cpu = _CpuClock(rx)
        nbytes, expected = 0, 0
        t0 = time.perf_counter()
        for frame in c.replay(stream, 0, n):
            if frame.index != expected:
                raise RuntimeError(f"replay gave index {frame.index}, expected {expected}")
            expected += 1
            nbytes += frame.data.nbytes
        seconds = time.perf_counter() - t0
        detail = cpu.read()
    if expected != n or nbytes != n * FRAME_BYTES:
        raise RuntimeError(f"replay gave {expected} frames of {nbytes} bytes; expected {n}")
    detail["consumer_cpu_seconds"] = detail.pop("producer_cpu_seconds")
    detail["seconds"] = seconds
    return Run({"replay_4mib": [n * FRAME_BYTES / seconds / MB]}, detail)


@contextlib.contextmanager
def _stored_4mib(rnd: Round, scale: Scale) -> Iterator[tuple[str, int]]:
    """A stream of ``frames_4mib`` uncompressed frames in the round's receiver (untimed)."""
    stream, n = "perf/replay_4mib", scale.frames_4mib
    with _pipeline(rnd, "replay_4mib", spool_sync="batch") as (rx, p):
        _fill(p, stream, frames_4mib(), n, 16)
        _check_stored(rx, stream, n, n * FRAME_BYTES)
    yield stream, n


@probe(
    FIGURES,
    Metric("live_latency_4mib_p50", "ms", percentile=50, baseline="raw_zmq_relay_4mib_p50"),
    Metric("live_latency_4mib_p99", "ms", percentile=99, baseline="raw_zmq_relay_4mib_p99"),
)
def live_latency_4mib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() returning -> Subscriber of 4 MiB frames sent one at a time."""
    return _live_latency(scale, rnd, "live_latency_4mib", period=0.0)


@probe(
    FIGURES,
    Metric(
        "live_latency_4mib_paced_p50",
        "ms",
        percentile=50,
        baseline="raw_zmq_relay_4mib_paced_p50",
    ),
    Metric(
        "live_latency_4mib_paced_p99",
        "ms",
        percentile=99,
        baseline="raw_zmq_relay_4mib_paced_p99",
    ),
)
def live_latency_4mib_paced(scale: Scale, rnd: Round) -> Run:
    """The same at LIVE_PACED_HZ frames a second, a rate the disk keeps up with."""
    return _live_latency(scale, rnd, "live_latency_4mib_paced", period=1 / LIVE_PACED_HZ)


def _live_latency(scale: Scale, rnd: Round, name: str, period: float) -> Run:
    """Samples of send() returning -> Subscriber yielding, one frame in flight at a time.

    ``period`` 0: each frame is sent as soon as the one before arrived live;
    otherwise one every ``period`` seconds (the next send waits for both). The
    detail counts the frames not yet acknowledged when each frame arrived live:
    once they fill the Producer's window (``window_bytes``), its link waits for
    an ack, i.e. for the receiver's next group commit and fsync, before it can
    push the next frame.
    """
    frames = frames_4mib()
    stream = f"perf/{name}"
    end_to_end, after_stored, unacked = [], [], []
    # the spool's fsync per send() is not on the measured path (after send() returns),
    # and without it each sample takes half the time
    with (
        _pipeline(rnd, name, spool_sync="batch", window_bytes=LIVE_WINDOW_BYTES) as (rx, p),
        Subscriber(rx.publish, [stream]) as sub,
    ):
        # PUB/SUB joins asynchronously: send until the subscriber sees a frame
        deadline = time.monotonic() + 30
        while sub.receive(timeout=0.05) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the subscriber got no frame within 30 s")
            p.send(stream, frames[0])
        p.flush(timeout=FLUSH_TIMEOUT)
        while sub.receive(timeout=0.05) is not None:
            pass  # the warm-up frames still on their way
        cpu, began = _CpuClock(rx), time.monotonic()
        due = began
        for i in range(scale.latency_warmup + scale.latency_samples):
            if period:
                due += period
                time.sleep(max(0.0, due - time.monotonic()))
            seq = p.send(stream, frames[i % len(frames)])
            sent = time.time()
            frame = sub.receive(timeout=30)
            arrived = time.time()
            if frame is None:
                raise TimeoutError(f"frame {i} of the latency run did not arrive within 30 s")
            if i >= scale.latency_warmup:
                end_to_end.append(1000 * (arrived - sent))
                after_stored.append(1000 * (arrived - frame.stored))
                unacked.append(seq - p.acked_seq)
        busy = sum(cpu.read().values()) / (time.monotonic() - began)
        p.flush(timeout=FLUSH_TIMEOUT)
    detail = {
        # CPU of this process (Producer, Subscriber) and the receiver per second: on
        # 2 cores, near 2 means the live path queues for a core behind the commits
        "cores_busy": busy,
        "stored_to_subscriber_p50_ms": percentile(after_stored, 50),
        "stored_to_subscriber_p99_ms": percentile(after_stored, 99),
        "unacknowledged_max_frames": max(unacked),
        "samples_with_full_window": sum(1 for n in unacked if n * FRAME_BYTES >= LIVE_WINDOW_BYTES),
        "skipped": sub.skipped,
    }
    return Run({f"{name}_p50": end_to_end, f"{name}_p99": end_to_end}, detail)


GROUP_MEMBERS = 4
GROUP_BATCH = 16  # group_1kib: messages per next request
GROUP_PREFETCH = 2  # group_1kib: batches in flight beside the one taken (Consumer.worker)


@probe(FIGURES, Metric("group_1kib", "msg/s", baseline="raw_lmdb_put_1kib"))
def group_1kib(scale: Scale, rnd: Round) -> Run:
    """4 consumer-group members (threads): Consumer.worker, batches of 16, 2 more in flight."""
    return _group_run(scale, rnd, "group_1kib", GROUP_BATCH)


@probe(FIGURES, Metric("group_1kib_single", "msg/s", baseline="raw_lmdb_put_1kib"))
def group_1kib_single(scale: Scale, rnd: Round) -> Run:
    """4 consumer-group members (threads), next() + ack() of each 1 KiB message."""
    return _group_run(scale, rnd, "group_1kib_single", 1)


def _take(c: Consumer, stream: str, group: str, batch: int, done: list) -> list:
    """The next message; the last one (``done``) is acked first."""
    if done:
        c.ack(done[0])
    return [c.next(stream, group, timeout=30)]


def _group_run(scale: Scale, rnd: Round, name: str, batch: int) -> Run:
    pool = messages_1kib()
    n = scale.group_messages_1kib
    stream, group = f"perf/{name}", "perf"
    # filling the stream is not timed; finished, so the members stop at its end
    with _pipeline(rnd, name, spool_sync="batch") as (rx, p):
        _fill(p, stream, pool, n, scale.batch_1kib)
        p.finish(stream)
        p.flush(timeout=FLUSH_TIMEOUT)
        _check_stored(rx, stream, n, n * SMALL_BYTES)
        got: list[list[int]] = [[] for _ in range(GROUP_MEMBERS)]
        failures: list[BaseException] = []
        ready = threading.Barrier(GROUP_MEMBERS + 1)

        def member(i: int) -> None:
            with Consumer(rx.api) as c:
                ready.wait()
                frames: list = []
                try:
                    if batch > 1:
                        with c.worker(
                            stream, group, batch=batch, prefetch=GROUP_PREFETCH, timeout=30
                        ) as work:
                            for frames in work:
                                got[i].extend(f.index for f in frames)
                        return
                    while True:
                        frames = _take(c, stream, group, batch, frames)
                        got[i].extend(f.index for f in frames)
                except StreamFinished:
                    pass
                except BaseException as err:
                    failures.append(err)

        threads = [threading.Thread(target=member, args=(i,)) for i in range(GROUP_MEMBERS)]
        for t in threads:
            t.start()
        cpu = _CpuClock(rx)
        ready.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        detail = cpu.read()
    if failures:
        raise failures[0]
    delivered = sorted(i for member_got in got for i in member_got)
    if delivered != list(range(n)):
        raise RuntimeError(
            f"the group got {len(delivered)} messages ({len(set(delivered))} distinct); expected"
            f" each of the {n} once"
        )
    detail["consumer_cpu_seconds"] = detail.pop("producer_cpu_seconds")
    detail.update(seconds=seconds, busiest_member_share=max(map(len, got)) / n, batch=batch)
    return Run({name: [n / seconds]}, detail)
