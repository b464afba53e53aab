"""Raw baselines: what pyzmq and LMDB alone do with the same bytes on the same machine.

Each baseline states what it measures; hidra_ng's figures are divided by them.

raw_zmq_pushpull_4mib
    MB/s of 4 MiB frames from a PUSH socket in this process to a PULL socket in a
    child process (perf/zmq_peer.py) over tcp loopback, sent with ``copy=False``
    and received with ``copy=False``; timed from the first send until the child
    reports the last frame received.
raw_zmq_latency_4mib_p50 / _p99
    One-way latency in ms of one 4 MiB message over the same pair of sockets: the
    send time (monotonic clock, shared by both processes on Linux) travels in a
    first frame and the child subtracts it from the arrival time of the whole
    message. The next message is sent only after the child answered the previous
    one, so nothing queues. Percentiles over the samples of all runs, each run's
    first ``latency_warmup`` samples dropped.
raw_zmq_relay_4mib_p50 / _p99
    Milliseconds of one 4 MiB message over the two hops a live frame takes: a PUSH
    socket in this process, a child process (perf/zmq_peer.py ``relay``) that
    PULLs it and republishes it on a PUB socket, and a SUB socket in this process,
    all without copies, over tcp loopback; from the send call returning to the
    SUB's receive returning with the whole message (one clock). The next message
    is sent only once the previous one arrived. The baseline of
    live_latency_4mib (SPEC §12).
raw_zmq_relay_4mib_paced_p50 / _p99
    The same, one message every 1 / ``LIVE_PACED_HZ`` s (25 Hz): the baseline of
    live_latency_4mib_paced.
raw_lmdb_append_4mib
    MB/s of a durable LMDB append of 4 MiB values: each value put (``append=True``,
    8-byte big-endian key) in its own write transaction committed with
    ``sync=True`` (one fsync per frame), as ``Producer.send()`` with the default
    ``spool_sync="always"`` does. Same open flags as hidra_ng's store and spool.
raw_lmdb_append_4mib_batch16
    The same with 16 frames per transaction (one fsync per 16 frames), for
    reference: what group commit can at best buy.
raw_lmdb_put_1kib
    Messages/s of LMDB puts of 1 KiB values, ``batch_1kib`` (1000) per write
    transaction, each committed with ``sync=True``.
raw_lmdb_append_64kib / _1mib / _16mib
    raw_lmdb_append_4mib for the frames of perf/scaling.py's other sizes:
    ``scaling_bytes`` (256 MiB; 64 MiB in quick mode, but at least 8 frames) of
    Poisson(2) uint16 frames per run, one durable write transaction per frame.
raw_lmdb_store_1kib_put / _bytes_per_msg / _get_first_us / _get_last_us / _get_last_over_first
    Once per perf run (first round), ``scaling_messages_1kib`` (1,000,000; 100,000
    in quick mode) 1 KiB values put as raw_lmdb_put_1kib does (1000 per durable
    transaction): messages/s; bytes of the LMDB data file per value; then the
    median microseconds of a lookup of the first and of the last key, each in its
    own read transaction, ``scaling_lookups`` (200) of each, alternating; and the
    ratio last / first.

Throughputs are the median over the rounds of a perf run (see run.py). Every
LMDB environment is fresh, lives in a temp dir on the filesystem of /tmp,
is sized up front (no map growth while timed) and is removed after its run.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import zmq
from harness import (
    MB,
    PERF_DIR,
    KiB,
    Metric,
    MiB,
    Probe,
    Round,
    Run,
    Scale,
    probe,
    scratch_dir,
)
from payloads import FRAME_BYTES, LIVE_PACED_HZ, buffers_of, frame_buffers, messages_1kib

PEER = PERF_DIR / "zmq_peer.py"
PEER_TIMEOUT_MS = 120_000
ZMQ_HWM = 64  # both ends: bounds what can queue in memory to 64 frames (256 MiB)
_KEY = struct.Struct(">Q")
_NS = struct.Struct("<q")

BASELINES: list[Probe] = []


# ------------------------------------------------------------------------ pyzmq


@contextlib.contextmanager
def _peer(role: str, count: int, *extra: str) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A PUSH socket here, a zmq_peer.py child PULLing from it, and its answers."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, ZMQ_HWM)
    back = ctx.socket(zmq.PULL)
    proc = None
    try:
        data_ep = f"tcp://127.0.0.1:{push.bind_to_random_port('tcp://127.0.0.1')}"
        back_ep = f"tcp://127.0.0.1:{back.bind_to_random_port('tcp://127.0.0.1')}"
        cmd = [sys.executable, str(PEER), role, data_ep, back_ep, str(count), str(ZMQ_HWM), *extra]
        proc = subprocess.Popen(cmd)
        if not push.poll(PEER_TIMEOUT_MS, zmq.POLLOUT):
            raise TimeoutError(f"zmq peer {role} did not connect")
        push.send(b"hello")
        if _recv(back, proc) != b"ready":
            raise RuntimeError("zmq peer did not answer ready")
        yield push, back
    finally:
        push.close(linger=0)
        back.close(linger=0)
        ctx.term()
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _recv(sock: zmq.Socket, proc: subprocess.Popen | None = None) -> bytes:
    if not sock.poll(PEER_TIMEOUT_MS):
        state = "" if proc is None else f" (peer exit code {proc.poll()})"
        raise TimeoutError(f"zmq peer did not answer within {PEER_TIMEOUT_MS / 1000} s{state}")
    return sock.recv()


@probe(BASELINES, Metric("raw_zmq_pushpull_4mib", "MB/s"))
def zmq_pushpull_4mib(scale: Scale, _round: Round) -> Run:
    """4 MiB frames PUSH -> PULL to another process over tcp loopback, copy=False."""
    frames = frame_buffers()
    n = scale.frames_4mib
    with _peer("sink", n) as (push, back):
        t0 = time.perf_counter()
        for i in range(n):
            push.send(frames[i % len(frames)], copy=False)
        summary = json.loads(_recv(back))
        seconds = time.perf_counter() - t0
    if summary["bytes"] != n * FRAME_BYTES:
        raise RuntimeError(f"zmq sink got {summary['bytes']} bytes, not {n * FRAME_BYTES}")
    return Run({"raw_zmq_pushpull_4mib": [n * FRAME_BYTES / seconds / MB]}, {"seconds": seconds})


@probe(
    BASELINES,
    Metric("raw_zmq_latency_4mib_p50", "ms", percentile=50),
    Metric("raw_zmq_latency_4mib_p99", "ms", percentile=99),
)
def zmq_latency_4mib(scale: Scale, _round: Round) -> Run:
    """One-way latency of one 4 MiB message to another process over tcp loopback."""
    frames = frame_buffers()
    total = scale.latency_warmup + scale.latency_samples
    with _peer("latency", total) as (push, back):
        for i in range(total):
            push.send_multipart(
                [_NS.pack(time.monotonic_ns()), frames[i % len(frames)]], copy=False
            )
            if _recv(back) != b"k":
                raise RuntimeError("zmq latency peer answered something else than b'k'")
        result = json.loads(_recv(back))
    ms = [ns / 1e6 for ns in result["latencies_ns"][scale.latency_warmup :]]
    return Run(
        {"raw_zmq_latency_4mib_p50": ms, "raw_zmq_latency_4mib_p99": ms}, {"max_ms": max(ms)}
    )


@probe(
    BASELINES,
    Metric("raw_zmq_relay_4mib_p50", "ms", percentile=50),
    Metric("raw_zmq_relay_4mib_p99", "ms", percentile=99),
)
def zmq_relay_4mib(scale: Scale, _round: Round) -> Run:
    """4 MiB messages PUSH -> relay process (PULL, PUB) -> SUB here, one at a time."""
    return _zmq_relay(scale, "raw_zmq_relay_4mib", period=0.0)


@probe(
    BASELINES,
    Metric("raw_zmq_relay_4mib_paced_p50", "ms", percentile=50),
    Metric("raw_zmq_relay_4mib_paced_p99", "ms", percentile=99),
)
def zmq_relay_4mib_paced(scale: Scale, _round: Round) -> Run:
    """The same, one message every 1 / LIVE_PACED_HZ seconds."""
    return _zmq_relay(scale, "raw_zmq_relay_4mib_paced", period=1 / LIVE_PACED_HZ)


def _zmq_relay(scale: Scale, name: str, period: float) -> Run:
    """Samples of the relay's two hops; ``period`` > 0: one send every ``period`` s at most."""
    frames = frame_buffers()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, ZMQ_HWM)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    ms: list[float] = []
    try:
        sub_ep = f"tcp://127.0.0.1:{sub.bind_to_random_port('tcp://127.0.0.1')}"
        with _peer("relay", 0, sub_ep) as (push, back):
            # PUB/SUB joins asynchronously: probes until one comes through, then none left
            while not _relayed(push, sub, b"probe", 50):
                pass
            while sub.poll(100):
                sub.recv()
            due = time.monotonic()
            for i in range(scale.latency_warmup + scale.latency_samples):
                if period:
                    due += period
                    time.sleep(max(0.0, due - time.monotonic()))
                push.send(frames[i % len(frames)], copy=False)
                sent = time.perf_counter()
                if not sub.poll(PEER_TIMEOUT_MS):
                    raise TimeoutError(f"relayed message {i} did not arrive")
                message = sub.recv(copy=False)
                arrived = time.perf_counter()
                if len(message) != FRAME_BYTES:
                    raise RuntimeError(f"relayed {len(message)} bytes, not {FRAME_BYTES}")
                if i >= scale.latency_warmup:
                    ms.append(1000 * (arrived - sent))
            push.send(b"end")
            _recv(back)
    finally:
        sub.close(linger=0)
        ctx.term()
    return Run({f"{name}_p50": ms, f"{name}_p99": ms}, {"max_ms": max(ms)})


def _relayed(push: zmq.Socket, sub: zmq.Socket, probe: bytes, timeout_ms: int) -> bool:
    push.send(probe)
    return bool(sub.poll(timeout_ms))


# ------------------------------------------------------------------------- LMDB


def _open_lmdb(path, data_bytes: int) -> lmdb.Environment:
    # the flags hidra_ng.lmdbenv.Env uses; the map is sized so it never grows while timed
    return lmdb.open(
        str(path),
        map_size=int(data_bytes * 1.25) + (64 << 20),
        sync=True,
        metasync=True,
        readahead=False,
        max_dbs=2,
    )


def _lmdb_append(values: tuple, count: int, per_txn: int, label: str) -> float:
    """Seconds to append ``count`` values, ``per_txn`` per durable transaction."""
    with _lmdb_appended(values, count, per_txn, label) as (_env, _dir, seconds):
        return seconds


@contextlib.contextmanager
def _lmdb_appended(
    values: tuple, count: int, per_txn: int, label: str
) -> Iterator[tuple[lmdb.Environment, Path, float]]:
    """The environment and dir of :func:`_lmdb_append`'s run and its seconds, until closed."""
    size = memoryview(values[0]).nbytes
    with scratch_dir(label) as d:
        env = _open_lmdb(d, count * (size + 2 * 4096))
        try:
            t0 = time.perf_counter()
            for start in range(0, count, per_txn):
                with env.begin(write=True) as txn:
                    for i in range(start, min(start + per_txn, count)):
                        txn.put(_KEY.pack(i), values[i % len(values)], append=True)
            seconds = time.perf_counter() - t0
            entries = env.stat()["entries"]
            if entries != count:
                raise RuntimeError(f"LMDB holds {entries} entries, not {count}")
            yield env, d, seconds
        finally:
            env.close()


def _lmdb_append_4mib(scale: Scale, per_txn: int, name: str) -> Run:
    n = scale.frames_4mib
    seconds = _lmdb_append(frame_buffers(), n, per_txn, "lmdb-4mib")
    return Run(
        {name: [n * FRAME_BYTES / seconds / MB]},
        {"seconds": seconds, "ms_per_commit": 1000 * seconds * per_txn / n},
    )


@probe(BASELINES, Metric("raw_lmdb_append_4mib", "MB/s"))
def lmdb_append_4mib(scale: Scale, _round: Round) -> Run:
    """LMDB append of 4 MiB values, one write transaction with sync=True (fsync) per value."""
    return _lmdb_append_4mib(scale, 1, "raw_lmdb_append_4mib")


@probe(BASELINES, Metric("raw_lmdb_append_4mib_batch16", "MB/s"))
def lmdb_append_4mib_batch16(scale: Scale, _round: Round) -> Run:
    """LMDB append of 4 MiB values, 16 per write transaction with sync=True (reference)."""
    return _lmdb_append_4mib(scale, 16, "raw_lmdb_append_4mib_batch16")


@probe(BASELINES, Metric("raw_lmdb_put_1kib", "msg/s"))
def lmdb_put_1kib(scale: Scale, _round: Round) -> Run:
    """LMDB put of 1 KiB values, 1000 per write transaction with sync=True."""
    n, per_txn = scale.messages_1kib, scale.batch_1kib
    seconds = _lmdb_append(messages_1kib(), n, per_txn, "lmdb-1kib")
    return Run({"raw_lmdb_put_1kib": [n / seconds]}, {"seconds": seconds})


# ------------------------------------------------- for perf/scaling.py's figures


def _lmdb_append_sized(scale: Scale, nbytes: int, name: str) -> Run:
    n = scale.scaling_frames(nbytes)
    seconds = _lmdb_append(buffers_of(nbytes), n, 1, f"lmdb-{nbytes}")
    return Run(
        {name: [n * nbytes / seconds / MB]},
        {"seconds": seconds, "ms_per_commit": 1000 * seconds / n},
        work=f"{n:,} values of {_size_name(nbytes)}",
    )


def _size_name(nbytes: int) -> str:
    return f"{nbytes // MiB} MiB" if nbytes >= MiB else f"{nbytes // KiB} KiB"


@probe(BASELINES, Metric("raw_lmdb_append_64kib", "MB/s"))
def lmdb_append_64kib(scale: Scale, _round: Round) -> Run:
    """LMDB append of 64 KiB values, one write transaction with sync=True (fsync) per value."""
    return _lmdb_append_sized(scale, 64 * KiB, "raw_lmdb_append_64kib")


@probe(BASELINES, Metric("raw_lmdb_append_1mib", "MB/s"))
def lmdb_append_1mib(scale: Scale, _round: Round) -> Run:
    """LMDB append of 1 MiB values, one write transaction with sync=True (fsync) per value."""
    return _lmdb_append_sized(scale, MiB, "raw_lmdb_append_1mib")


@probe(BASELINES, Metric("raw_lmdb_append_16mib", "MB/s"))
def lmdb_append_16mib(scale: Scale, _round: Round) -> Run:
    """LMDB append of 16 MiB values, one write transaction with sync=True (fsync) per value."""
    return _lmdb_append_sized(scale, 16 * MiB, "raw_lmdb_append_16mib")


@probe(
    BASELINES,
    Metric("raw_lmdb_store_1kib_put", "msg/s"),
    Metric("raw_lmdb_store_1kib_bytes_per_msg", "B/msg"),
    Metric("raw_lmdb_store_1kib_get_first_us", "us", percentile=50),
    Metric("raw_lmdb_store_1kib_get_last_us", "us", percentile=50),
    Metric("raw_lmdb_store_1kib_get_last_over_first", "x"),
    once=True,
)
def lmdb_store_1kib(scale: Scale, _round: Round) -> Run:
    """Once: 1,000,000 1 KiB values (quick: 50,000) in LMDB: put rate, bytes, get first/last."""
    n, per_txn = scale.scaling_messages_1kib, scale.batch_1kib
    pool = messages_1kib()
    with _lmdb_appended(pool, n, per_txn, "lmdb-store-1kib") as (env, d, seconds):
        file_bytes = (d / "data.mdb").stat().st_size
        first, last = [], []
        for _ in range(scale.scaling_lookups):
            for index, times in ((0, first), (n - 1, last)):
                t0 = time.perf_counter_ns()
                with env.begin() as txn:
                    value = txn.get(_KEY.pack(index))
                times.append((time.perf_counter_ns() - t0) / 1000)
                if value != pool[index % len(pool)]:
                    raise RuntimeError(f"LMDB value {index} is not the one put")
    return Run(
        {
            "raw_lmdb_store_1kib_put": [n / seconds],
            "raw_lmdb_store_1kib_bytes_per_msg": [file_bytes / n],
            "raw_lmdb_store_1kib_get_first_us": first,
            "raw_lmdb_store_1kib_get_last_us": last,
            "raw_lmdb_store_1kib_get_last_over_first": [
                statistics.median(last) / statistics.median(first)
            ],
        },
        {"seconds": seconds, "data_file_bytes": file_bytes, "messages": n},
        work=f"{n:,} values of 1 KiB, once per perf run",
    )
