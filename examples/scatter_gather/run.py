"""Run the whole scatter-gather example on this machine and time it.

    python run.py --images 2000 --workers 4

Starts a receiver on free loopback ports in a temporary directory, sends the
images, then starts the workers and the aggregator together and reports the
pipeline's throughput (results aggregated per second, from the workers' start
to the aggregator's end) and whether the aggregate is exactly what it should be.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import count_spots, image, parse_shape, threshold

from hidra_ng.testing import ReceiverProcess

HERE = Path(__file__).resolve().parent


def script(name: str, *args: object) -> list[str]:
    return [sys.executable, str(HERE / name), *(str(a) for a in args)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--shape", default="16x16")
    parser.add_argument("--lam", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="scatter-gather-"))
    with ReceiverProcess(root / "store") as rx:
        common = ["--ingest", rx.ingest, "--api", rx.api]
        subprocess.run(
            script("producer.py", *common, "--spool-dir", root / "spool-producer",
                   "--count", args.images, "--shape", args.shape, "--lam", args.lam,
                   "--seed", args.seed),
            check=True,
        )  # fmt: skip
        started = time.monotonic()
        workers = []
        for w in range(args.workers):
            command = script("worker.py", *common, "--id", w, "--spool-dir", root / f"spool-{w}",
                             "--lam", args.lam, "--batch", args.batch)  # fmt: skip
            workers.append(subprocess.Popen(command))
        aggregator = subprocess.run(
            script("aggregator.py", "--api", rx.api, "--state", root / "spots.npz",
                   "--every", args.every),
            check=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.wait(60)
    del aggregator
    with np.load(root / "spots.npz") as saved:
        counts = saved["counts"][: args.images]
        total = int(saved["total"])
    shape, above = parse_shape(args.shape), threshold(args.lam)
    expected = [
        count_spots(image(args.seed, k, shape, args.lam), above) for k in range(args.images)
    ]
    ok = counts.tolist() == expected and total == sum(expected)
    print(
        f"{args.images} results through {args.workers} workers and the aggregator in"
        f" {elapsed:.1f} s: {args.images / elapsed:.0f} results/s; aggregate"
        f" {'exact' if ok else 'WRONG'}; files in {root}"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
