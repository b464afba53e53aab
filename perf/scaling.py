"""How hidra_ng's figures scale: with producers, with frame size, with stream length.

Scaling figures are printed as a table of their own ("Scaling") and kept under
"scaling" in results.json, apart from SPEC §12's "figures", whose names are fixed.
Each is divided by a raw baseline of perf/baselines.py measured in the same run.

scaling_ingest_4mib_1producer / _2producers / _4producers
    Aggregate MB/s of 4 MiB frames from 1, 2 or 4 Producers at once into the
    round's receiver process. Each Producer runs in a process of its own (as each
    detector has its own sender; threads of this process would share its GIL),
    with its own spool dir, sender id and stream (separate streams, one per
    producer), default durability (``spool_sync="always"``, one ``send()`` per
    frame). ``2 * scaling_bytes`` (512 MiB; 64 MiB in quick mode) of frames per
    run, split evenly between the producers. Timed from the earliest first
    ``send()`` to the latest return of ``flush()`` (CLOCK_MONOTONIC, the same
    clock in every process on Linux); the producers start on one signal after
    each has heard from the receiver. Baseline: raw_lmdb_append_4mib (one writer,
    512 frames; 64 in quick mode).
scaling_ingest_64kib / _1mib / _4mib / _16mib
    ingest_4mib (one Producer in this process, default durability, one ``send()``
    per frame, timed until ``flush()`` returns) with Poisson(2) uint16 frames of
    64 KiB, 1 MiB, 4 MiB and 16 MiB: ``scaling_bytes`` (256 MiB; 32 MiB in quick
    mode, but at least 8 frames) per run. Baseline: raw_lmdb_append_ of the same
    frame size and count (the 4 MiB one: raw_lmdb_append_4mib, 512 frames).
scaling_store_1kib_ingest / _bytes_per_msg / _get_first_us / _get_last_us / _get_last_over_first
    Once per perf run (first round; ~1 min in full mode):
    ``scaling_messages_1kib`` (1,000,000; 50,000 in quick mode) 1 KiB messages
    through one Producer in ``send_many`` batches of 1000 into a fresh receiver
    process of its own; messages/s until ``flush()`` returns. Then the bytes of
    the LMDB data files (every ``data.mdb``) in that receiver's data dir per
    message; and the median microseconds of ``Consumer.get(stream, 0)`` and of
    ``Consumer.get(stream, n - 1)``, ``scaling_lookups`` (200) of each,
    alternating, after 10 untimed of each; and their ratio, last / first.
    Baselines: raw_lmdb_store_1kib_* (the same number of values in raw LMDB).

Every run checks afterwards that each stream holds exactly the messages and
bytes sent, and that its first and last entries hold the payload sent there.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import multiprocessing
import statistics
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from figures import (
    FLUSH_TIMEOUT,
    _check_stored,
    _CpuClock,
    _pipeline,
    _round_receiver,
    send_many_timed,
    send_timed,
)
from harness import MB, KiB, Metric, MiB, Probe, Round, Run, Scale, probe, scratch_dir, wait_for
from payloads import FRAME_BYTES, SMALL_BYTES, frames_of, messages_1kib

from hidra_ng import Consumer, Producer
from hidra_ng.testing import ReceiverProcess

SCALING: list[Probe] = []
MAX_PRODUCERS = 4
STEP_TIMEOUT = 120.0  # seconds a producer process may take to start, or to get ready
LOOKUP_WARMUP = 10

# "spawn": a fresh interpreter, not a fork of this process with its zmq contexts
_MP = multiprocessing.get_context("spawn")


# ------------------------------------------------------- producer processes


def _worker(conn: Connection) -> None:
    """A producer process: runs one Producer per task the parent sends, until None."""
    frames_of(FRAME_BYTES)  # made before any timed run
    conn.send(("up",))
    while (task := conn.recv()) is not None:
        try:
            conn.send(("done", _worker_task(conn, **task)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _worker_task(
    conn: Connection, ingest: str, api: str, spool_dir: str, sender_id: str, stream: str, n: int
) -> dict[str, float]:
    frames = frames_of(FRAME_BYTES)
    with Producer(ingest, api, spool_dir, sender_id) as p:
        wait_for(lambda: p.receiver_up, 30, f"producer {sender_id} hearing from the receiver")
        conn.send(("ready",))
        if conn.recv() != "go":
            raise RuntimeError("the perf process sent something else than 'go'")
        cpu0 = time.process_time()
        t0 = time.monotonic()
        for i in range(n):
            p.send(stream, frames[i % len(frames)])
        sent = time.monotonic()
        p.flush(timeout=FLUSH_TIMEOUT)
        done = time.monotonic()
        cpu = time.process_time() - cpu0
    return {"start": t0, "sent": sent, "done": done, "cpu_seconds": cpu}


class _Producers:
    """Producer processes, started once per perf run and idle between runs."""

    def __init__(self, count: int) -> None:
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._conns: list[Connection] = []
        for i in range(count):
            mine, theirs = _MP.Pipe()
            proc = _MP.Process(target=_worker, args=(theirs,), name=f"perf-producer-{i}")
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns.append(mine)
        try:
            for i in range(count):
                self._expect(i, "up")
        except BaseException:
            self.close()
            raise

    def _expect(self, i: int, what: str, timeout: float = STEP_TIMEOUT) -> Any:
        conn, proc = self._conns[i], self._procs[i]
        if not conn.poll(timeout):
            raise TimeoutError(f"producer process {i} did not say {what!r} within {timeout} s")
        try:
            answer = conn.recv()
        except EOFError:
            raise RuntimeError(f"producer process {i} exited with {proc.exitcode}") from None
        if answer[0] == "error":
            raise RuntimeError(f"producer process {i} failed:\n{answer[1]}")
        if answer[0] != what:
            raise RuntimeError(f"producer process {i} said {answer[0]!r}, not {what!r}")
        return answer[1] if len(answer) > 1 else None

    def run(self, tasks: list[dict[str, Any]]) -> list[dict[str, float]]:
        """Run one task per process at once, started together; each one's times.

        After a failure the processes are stopped (they may be mid-task), and the
        next run starts new ones.
        """
        try:
            for conn, task in zip(self._conns, tasks, strict=False):
                conn.send(task)
            for i in range(len(tasks)):
                self._expect(i, "ready")
            for conn in self._conns[: len(tasks)]:
                conn.send("go")
            return [self._expect(i, "done", FLUSH_TIMEOUT + 60) for i in range(len(tasks))]
        except BaseException:
            _producers.cache_clear()
            self.close()
            raise

    def close(self) -> None:
        """Stop the processes: each exits on reading None; one still busy is killed after 10 s."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._procs.clear()


@functools.cache
def _producers() -> _Producers:
    """The producer processes, started on first use (~4 s on 2 cores), stopped at exit."""
    workers = _Producers(MAX_PRODUCERS)
    atexit.register(workers.close)
    return workers


def _ingest_producers(scale: Scale, rnd: Round, k: int, name: str) -> Run:
    total = 2 * scale.scaling_frames(FRAME_BYTES)
    n = total // k
    workers = _producers()
    rx = _round_receiver(rnd)
    streams = [f"perf/{name}/{i}" for i in range(k)]
    with scratch_dir(name) as d:
        tasks = [
            {
                "ingest": rx.ingest,
                "api": rx.api,
                "spool_dir": str(d / f"spool-{i}"),
                "sender_id": f"perf-{name}-{i}",
                "stream": streams[i],
                "n": n,
            }
            for i in range(k)
        ]
        cpu = _CpuClock(rx)
        times = workers.run(tasks)
        detail = cpu.read()
    for stream in streams:
        _check_frames(rx, stream, n, frames_of(FRAME_BYTES))
    start = min(t["start"] for t in times)
    done = max(t["done"] for t in times)
    detail["producer_cpu_seconds"] = sum(t["cpu_seconds"] for t in times)
    detail["seconds"] = done - start
    detail["flush_seconds"] = done - max(t["sent"] for t in times)  # after the last send()
    detail["start_spread_seconds"] = max(t["start"] for t in times) - start
    detail["slowest_over_fastest_producer"] = max(t["done"] - t["start"] for t in times) / min(
        t["done"] - t["start"] for t in times
    )
    work = f"{k} x {n} frames of 4 MiB, separate streams, a process per producer"
    return Run({name: [k * n * FRAME_BYTES / (done - start) / MB]}, detail, work=work)


@probe(SCALING, Metric("scaling_ingest_4mib_1producer", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib_1producer(scale: Scale, rnd: Round) -> Run:
    """One Producer process -> the round's receiver; 4 MiB frames, default durability."""
    return _ingest_producers(scale, rnd, 1, "scaling_ingest_4mib_1producer")


@probe(SCALING, Metric("scaling_ingest_4mib_2producers", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib_2producers(scale: Scale, rnd: Round) -> Run:
    """Two Producer processes at once, one stream each; aggregate MB/s of 4 MiB frames."""
    return _ingest_producers(scale, rnd, 2, "scaling_ingest_4mib_2producers")


@probe(SCALING, Metric("scaling_ingest_4mib_4producers", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib_4producers(scale: Scale, rnd: Round) -> Run:
    """Four Producer processes at once, one stream each; aggregate MB/s of 4 MiB frames."""
    return _ingest_producers(scale, rnd, 4, "scaling_ingest_4mib_4producers")


# ------------------------------------------------------------------ frame sizes


def _check_frames(rx: ReceiverProcess, stream: str, n: int, pool: tuple[np.ndarray, ...]) -> None:
    """The stream holds ``n`` frames of ``pool`` cycled: count, bytes, first and last."""
    _check_stored(rx, stream, n, n * pool[0].nbytes)
    with Consumer(rx.api) as c:
        for index in (0, n - 1):
            data = c.get(stream, index).data
            if not np.array_equal(data, pool[index % len(pool)]):
                raise RuntimeError(f"frame {index} of {stream} is not the frame sent")


def _ingest_sized(scale: Scale, rnd: Round, nbytes: int, name: str) -> Run:
    frames = frames_of(nbytes)
    n = scale.scaling_frames(nbytes)
    stream = f"perf/{name}"
    with _pipeline(rnd, name) as (rx, p):
        seconds, detail = send_timed(rx, p, stream, frames, n)
    _check_frames(rx, stream, n, frames)
    detail["ms_per_frame"] = 1000 * seconds / n
    size = f"{nbytes // MiB} MiB" if nbytes >= MiB else f"{nbytes // KiB} KiB"
    return Run({name: [n * nbytes / seconds / MB]}, detail, work=f"{n:,} frames of {size}")


@probe(SCALING, Metric("scaling_ingest_64kib", "MB/s", baseline="raw_lmdb_append_64kib"))
def ingest_64kib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() of 64 KiB frames (default durability) -> receiver, acknowledged."""
    return _ingest_sized(scale, rnd, 64 * KiB, "scaling_ingest_64kib")


@probe(SCALING, Metric("scaling_ingest_1mib", "MB/s", baseline="raw_lmdb_append_1mib"))
def ingest_1mib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() of 1 MiB frames (default durability) -> receiver, acknowledged."""
    return _ingest_sized(scale, rnd, MiB, "scaling_ingest_1mib")


@probe(SCALING, Metric("scaling_ingest_4mib", "MB/s", baseline="raw_lmdb_append_4mib"))
def ingest_4mib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() of 4 MiB frames (default durability) -> receiver, acknowledged."""
    return _ingest_sized(scale, rnd, FRAME_BYTES, "scaling_ingest_4mib")


@probe(SCALING, Metric("scaling_ingest_16mib", "MB/s", baseline="raw_lmdb_append_16mib"))
def ingest_16mib(scale: Scale, rnd: Round) -> Run:
    """Producer.send() of 16 MiB frames (default durability) -> receiver, acknowledged."""
    return _ingest_sized(scale, rnd, 16 * MiB, "scaling_ingest_16mib")


# ------------------------------------------------- a long stream of 1 KiB messages


def _data_file_bytes(data_dir: Path) -> tuple[int, int]:
    """Size and allocated bytes of every LMDB data file (data.mdb) under ``data_dir``."""
    stats = [f.stat() for f in data_dir.rglob("data.mdb")]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def _store_metric(what: str, unit: str, percentile: float | None = None) -> Metric:
    """scaling_store_1kib_WHAT, divided by raw_lmdb_store_1kib_WHAT (put for ingest)."""
    raw = "put" if what == "ingest" else what
    return Metric(f"scaling_store_1kib_{what}", unit, percentile, f"raw_lmdb_store_1kib_{raw}")


@probe(
    SCALING,
    _store_metric("ingest", "msg/s"),
    _store_metric("bytes_per_msg", "B/msg"),
    _store_metric("get_first_us", "us", percentile=50),
    _store_metric("get_last_us", "us", percentile=50),
    _store_metric("get_last_over_first", "x"),
    once=True,
)
def store_1kib(scale: Scale, rnd: Round) -> Run:
    """Once: 1,000,000 1 KiB messages (quick: 50,000) stored; rate, disk bytes, get first/last."""
    pool = messages_1kib()
    n, per_call = scale.scaling_messages_1kib, scale.batch_1kib
    batch = [(pool[i % len(pool)], None) for i in range(per_call)]
    if n % per_call or per_call % len(pool):
        raise ValueError(f"{n} messages are not whole batches of {per_call} cycling the pool")
    stream = "perf/scaling_store_1kib"
    with (
        scratch_dir("scaling-store") as d,
        ReceiverProcess(d / "store") as rx,
        Producer(rx.ingest, rx.api, d / "spool", "perf-scaling_store_1kib") as p,
    ):
        wait_for(lambda: p.receiver_up, 30, "the producer hearing from the receiver")
        seconds, detail = send_many_timed(rx, p, stream, batch, n // per_call)
        _check_stored(rx, stream, n, n * SMALL_BYTES)
        store_bytes, store_allocated = _data_file_bytes(rx.data_dir)
        spool_bytes, _ = _data_file_bytes(d / "spool")
        first, last = _lookups(rx, stream, n, scale.scaling_lookups, pool)
    detail.update(
        messages=n,
        store_data_file_bytes=store_bytes,
        store_allocated_bytes=store_allocated,
        spool_data_file_bytes=spool_bytes,
    )
    return Run(
        {
            "scaling_store_1kib_ingest": [n / seconds],
            "scaling_store_1kib_bytes_per_msg": [store_bytes / n],
            "scaling_store_1kib_get_first_us": first,
            "scaling_store_1kib_get_last_us": last,
            "scaling_store_1kib_get_last_over_first": [
                statistics.median(last) / statistics.median(first)
            ],
        },
        detail,
        work=f"{n:,} messages of 1 KiB, send_many of {per_call}; once per perf run",
    )


def _lookups(
    rx: ReceiverProcess, stream: str, n: int, count: int, pool: tuple[bytes, ...]
) -> tuple[list[float], list[float]]:
    """Microseconds of Consumer.get() of index 0 and of index n - 1, alternating."""
    first: list[float] = []
    last: list[float] = []
    with Consumer(rx.api) as c:
        for i in range(LOOKUP_WARMUP + count):
            for index, times in ((0, first), (n - 1, last)):
                t0 = time.perf_counter_ns()
                frame = c.get(stream, index)
                elapsed = (time.perf_counter_ns() - t0) / 1000
                if frame.index != index or frame.data != pool[index % len(pool)]:
                    raise RuntimeError(f"get({stream!r}, {index}) gave another message")
                if i >= LOOKUP_WARMUP:
                    times.append(elapsed)
    return first, last
