"""Aggregate ingest over 1, 2 and 3 receivers (SPEC §14) against raw LMDB appends, same run.

    .venv/bin/python perf/shards.py            # make perf-shards
    .venv/bin/python perf/shards.py --quick    # make perf-shards-quick: about a minute

For K = 1, 2, 3:

* ``raw``: K processes, each appending 4 MiB values to an LMDB environment of its
  own on tmpfs (/dev/shm), one durable write transaction per value (as
  perf/baselines.py's raw_lmdb_append_4mib), started together: the aggregate MB/s
  the machine's memory, page cache and cores give K independent stores;
* ``hidra``: K receiver processes with their data dirs on tmpfs, a shard map of
  one group of K (``streams = ["**"]``), and one ``Producer(shards=...,
  split_parts=K)`` (spool on tmpfs too) sending one series of 4 MiB frames split
  over the K receivers, timed from the first send until the last acknowledgement;
* ratio = hidra / raw for the same K.

tmpfs keeps the one disk of this machine out of the figures: what is left is
CPU and memory bandwidth. Prints one table and what bounds it; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lmdb  # noqa: E402
import numpy as np  # noqa: E402

from hidra_ng import Producer  # noqa: E402
from hidra_ng.testing import ReceiverProcess  # noqa: E402
from perf.harness import machine, text_table  # noqa: E402

MiB = 1 << 20
MB = 1e6
FRAME = 4 * MiB
SHM = Path("/dev/shm")
_KEY = struct.Struct(">Q")


def _raw_writer(directory: str, count: int, start_at: float, out) -> None:
    """One process: ``count`` 4 MiB appends, one fsynced transaction each."""
    value = np.random.default_rng(os.getpid()).bytes(FRAME)
    env = lmdb.open(directory, map_size=count * (FRAME + 8192) + (64 << 20), sync=True)
    try:
        while time.time() < start_at:  # start together: the clock, not a signal
            time.sleep(0.001)
        t0 = time.perf_counter()
        for i in range(count):
            with env.begin(write=True) as txn:
                txn.put(_KEY.pack(i), value, append=True)
        out.put(time.perf_counter() - t0)
    finally:
        env.close()


def raw_mb_s(work: Path, k: int, count: int) -> float:
    """Aggregate MB/s of ``k`` LMDB writers on tmpfs, ``count`` values each."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5  # after the processes have started
    procs = []
    for i in range(k):
        d = work / f"raw-{k}-{i}"
        d.mkdir()
        procs.append(ctx.Process(target=_raw_writer, args=(str(d), count, start_at, out)))
    for p in procs:
        p.start()
    seconds = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return k * count * FRAME / max(seconds) / MB


def hidra_mb_s(work: Path, k: int, count: int) -> tuple[float, float]:
    """(aggregate MB/s, producer CPU seconds per GB) of one split series over ``k`` receivers."""
    receivers = [ReceiverProcess(work / f"store-{k}-{i}") for i in range(k)]
    try:
        for rx in receivers:
            rx.start()
        shards = work / f"shards-{k}.toml"
        shards.write_text(
            "\n".join(
                f'[[shard]]\nname = "r{i}"\nstreams = ["**"]\ningest = "{rx.ingest}"\n'
                f'api = "{rx.api}"\npublish = "{rx.publish}"\n'
                for i, rx in enumerate(receivers)
            )
        )
        frames = [
            np.random.default_rng(i).integers(0, 2**16, FRAME // 2, np.uint16) for i in range(4)
        ]
        total = k * count
        with Producer(
            shards=shards,
            spool_dir=work / f"spool-{k}",
            sender_id="perf",
            split_parts=k,
            split_block_images=1,
            max_spool_bytes=8 << 30,
        ) as producer:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            for first in range(0, total, 4):
                n = min(4, total - first)
                producer.send_many("perf/series", [(frames[j], None) for j in range(n)])
            producer.flush(600)
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        gb = total * FRAME / 1e9
        return total * FRAME / seconds / MB, cpu / gb
    finally:
        for rx in receivers:
            rx.terminate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames, about a minute")
    args = ap.parse_args()
    count = 24 if args.quick else 128  # 4 MiB frames per receiver
    if not SHM.is_dir():
        print("perf/shards.py needs tmpfs at /dev/shm", file=sys.stderr)
        return 2
    line, _ = machine()
    rows = []
    for k in (1, 2, 3):
        with tempfile.TemporaryDirectory(prefix="hidra-perf-shards-", dir=SHM) as tmp:
            work = Path(tmp)
            print(f"K={k}: raw LMDB appends, {k} x {count} frames", file=sys.stderr)
            raw = raw_mb_s(work, k, count)
            print(f"K={k}: hidra_ng, one series split over {k} receivers", file=sys.stderr)
            hidra, cpu_per_gb = hidra_mb_s(work, k, count)
        rows.append(
            [str(k), str(k * count), f"{raw:.0f}", f"{hidra:.0f}", f"{hidra / raw:.2f}",
             f"{hidra / k:.0f}", f"{cpu_per_gb:.2f}"]
        )  # fmt: skip
    print(f"\naggregate ingest of 4 MiB frames over K receivers, data on tmpfs ({line})")
    print(
        f"{'quick' if args.quick else 'full'} mode; raw = K LMDB writer processes in the same run"
    )
    print(
        text_table(
            [
                "K",
                "frames",
                "raw MB/s",
                "hidra MB/s",
                "ratio",
                "per receiver MB/s",
                "producer CPU s/GB",
            ],
            rows,
        )
    )
    cores = os.cpu_count() or 1
    print(
        f"\n{cores} cores: with K receivers, the producer and K receiver processes (and K raw"
        " writers) share them, so past the core count the aggregate is bound by CPU (the"
        " memory copies of the spool, the socket and the store), not by a disk or a NIC."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
