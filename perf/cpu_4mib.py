"""CPU per byte of the 4 MiB ingest path: CPU seconds per GB of each process, and each pass alone.

    .venv/bin/python perf/cpu_4mib.py [--rounds 3] [--frames 128] [--passes] [--at REV]

Runs ingest_4mib and ingest_4mib_lz4 exactly as perf/run.py does (a Producer
with default durability in this process, a receiver process, timed until every
frame is acknowledged), ``--rounds`` times, interleaved, and prints per figure
the medians over rounds of: MB/s, CPU seconds per GB of frame data (10**9
bytes, uncompressed) of the producer process and of the receiver process, each
split into user and system time, and the minor page faults per frame of each
(a fresh 4 MiB buffer costs 1,024 of them). The CPU of the producer process is
all of this process (caller, link thread, pyzmq's threads).

``--passes`` also times, alone and without profiler, each pass over one 4 MiB
frame the path makes (perf/NOTES.md "CPU per byte"): a memcpy into a fresh and
into a reused buffer, a ``bytes()`` copy out of an LMDB map, an LMDB put and
its commit without fsync, zmq's send and receive over loopback, blosc2 LZ4.
A diagnostic: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import figures
from harness import Round, machine, progress, rerun_at, text_table
from payloads import FRAME_BYTES, frame_buffers, frames_4mib

GB = 1e9
MB = 1e6


def proc_stat(pid: int | str = "self") -> dict[str, float]:
    """minflt, majflt, utime and stime (seconds) of a process, from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    rest = raw[raw.rindex(")") + 2 :].split()  # rest[0] is field 3 (state)
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "minflt": float(rest[7]),
        "majflt": float(rest[9]),
        "user": int(rest[11]) / tick,
        "system": int(rest[12]) / tick,
    }


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def one_run(rnd: Round, name: str, n: int, **options) -> dict[str, float]:
    """One timed ingest of ``n`` frames; rates per GB of frame data and per frame."""
    frames = frames_4mib()
    stream = f"perf/{name}"
    with figures._pipeline(rnd, name, **options) as (rx, p):
        pid = rx.proc.pid
        own0, rx0 = proc_stat(), proc_stat(pid)
        seconds, _ = figures.send_timed(rx, p, stream, frames, n)
        own, rxd = _delta(proc_stat(), own0), _delta(proc_stat(pid), rx0)
        figures._check_stored(rx, stream, n)
    gb = n * FRAME_BYTES / GB
    return {
        "MB/s": n * FRAME_BYTES / seconds / MB,
        "producer s/GB": (own["user"] + own["system"]) / gb,
        "producer user": own["user"] / gb,
        "producer sys": own["system"] / gb,
        "receiver s/GB": (rxd["user"] + rxd["system"]) / gb,
        "receiver user": rxd["user"] / gb,
        "receiver sys": rxd["system"] / gb,
        "total s/GB": (own["user"] + own["system"] + rxd["user"] + rxd["system"]) / gb,
        "producer faults/frame": own["minflt"] / n,
        "receiver faults/frame": rxd["minflt"] / n,
    }


def ingest(rounds: int, n: int) -> None:
    runs: dict[str, list[dict[str, float]]] = {"ingest_4mib": [], "ingest_4mib_lz4": []}
    options = {"ingest_4mib": {}, "ingest_4mib_lz4": {"compression": "lz4"}}
    for r in range(rounds):
        rnd = Round()
        try:
            for name in runs:
                progress(f"round {r + 1}/{rounds}: {name} ...")
                runs[name].append(one_run(rnd, name, n, **options[name]))
        finally:
            rnd.close()
    keys = list(runs["ingest_4mib"][0])
    rows = [
        [k, *(f"{statistics.median(x[k] for x in runs[name]):.2f}" for name in runs)] for k in keys
    ]
    print(f"medians of {rounds} rounds, {n} frames of 4 MiB per run, {machine()[0]}")
    print(text_table(["per GB of frame data / per frame", *runs], rows))


def passes() -> None:
    """Each pass over one 4 MiB frame, alone (ms per frame, median of 20)."""
    import blosc2
    import lmdb
    import numpy as np
    import zmq

    view = frame_buffers()[0]
    size = len(view)
    reused = bytearray(size)
    rows: list[list[str]] = []

    def timed(label: str, fn, n: int = 20) -> None:
        times, faults = [], []
        for _ in range(n):
            f0 = proc_stat()["minflt"]
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            faults.append(proc_stat()["minflt"] - f0)
        ms = statistics.median(times) * 1e3
        rows.append(
            [label, f"{ms:.2f}", f"{size / MB / ms:.2f}", f"{statistics.median(faults):.0f}"]
        )

    timed("bytes(frame): copy into a fresh buffer", lambda: bytes(view))
    timed("memcpy into a reused buffer", lambda: reused.__setitem__(slice(None), view))
    timed("read the frame (sum of uint64s)", lambda: np.frombuffer(view, np.uint64).sum())
    with tempfile.TemporaryDirectory(prefix="hidra-ng-passes-") as tmp:
        env = lmdb.open(tmp, map_size=1 << 30, sync=False, metasync=False)
        keys = iter(range(10**9))
        with env.begin(write=True) as txn:
            txn.put(b"k", view)

        def put_only() -> None:
            txn = env.begin(write=True)
            txn.put(b"z" + next(keys).to_bytes(8, "big"), view, append=True)
            txn.abort()

        def put_commit() -> None:
            with env.begin(write=True) as txn:
                txn.put(b"k", view)

        timed("LMDB put (memcpy into a dirty page), aborted", put_only)
        timed("LMDB put + commit (pwrite), no fsync", put_commit)
        with env.begin(buffers=True) as txn:
            stored = txn.get(b"k")
            timed("bytes() of an LMDB view (Spool.read before)", lambda: bytes(stored))
        env.close()
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        timed(
            "zmq send(copy=False) + recv(copy=False), loopback",
            lambda: (push.send(view, copy=False), pull.recv(copy=False)),
        )
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
    cparams = {"codec": blosc2.Codec.LZ4, "clevel": 5, "filters": [blosc2.Filter.BITSHUFFLE],
               "typesize": 2, "nthreads": 1}  # fmt: skip
    timed("blosc2 LZ4 + bitshuffle, 1 thread", lambda: blosc2.compress2(view, cparams=cparams))
    print("each pass over one 4 MiB frame alone, this process (median of 20)")
    print(text_table(["pass", "ms", "GB/s", "minor faults"], rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=128, help="4 MiB frames per run")
    ap.add_argument("--passes", action="store_true", help="also time each pass alone")
    ap.add_argument("--lz4-threads", type=int, help="blosc2 threads per compression")
    ap.add_argument("--at", metavar="REV", help="measure hidra_ng as committed at REV")
    args = ap.parse_args(argv)
    if args.at:
        return rerun_at(args.at, Path(__file__), argv if argv is not None else sys.argv[1:])
    frames_4mib()
    if args.lz4_threads:
        from hidra_ng.wire import compression

        compression.THREADS = args.lz4_threads
    if args.passes:
        passes()
    ingest(args.rounds, args.frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
