"""The aggregator: gather the results stream into one per-image map, exactly once.

    python aggregator.py --api tcp://dc:50101 --state spots.npz

Delivery is at-least-once (a result may arrive twice: a worker's image was
redelivered, or this aggregator was killed before its acks), the aggregate is
exactly-once: it keeps, per image, the count or -1 for "not counted yet", and a
result for an image already counted is skipped. The state file is written
atomically (temporary file, fsync, rename) every ``--every`` results and always
*before* those results are acked, so a kill -9 at any moment loses nothing:
unacked results come back after the group's ack timeout and are either counted
(they were not in the state file) or skipped (they were).

It stops once the frames stream is finished and every one of its images is
counted, and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np
from common import AGGREGATOR_GROUP, FRAMES, RESULTS

import hidra_ng


class Aggregate:
    """Per-image spot counts (-1: not counted yet) and their running total, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            with np.load(path) as saved:
                self.counts = saved["counts"].copy()
                self.total = int(saved["total"])
                self.counted = int(saved["counted"])
        else:
            self.counts = np.full(1024, -1, dtype=np.int64)
            self.total = 0
            self.counted = 0
        self.skipped = 0  # duplicates seen by this run

    def add(self, image: int, count: int) -> bool:
        """Count ``image`` unless it is counted already; True if it was new."""
        if image >= len(self.counts):
            grown = np.full(max(image + 1, 2 * len(self.counts)), -1, dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        if self.counts[image] >= 0:
            if self.counts[image] != count:
                raise RuntimeError(
                    f"image {image}: result {count} differs from the {self.counts[image]}"
                    " counted before; the analysis is not deterministic"
                )
            self.skipped += 1
            return False
        self.counts[image] = count
        self.total += count
        self.counted += 1
        return True

    def save(self) -> None:
        """Atomically: the old state or the new one is on disk, never a mix."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, counts=self.counts, total=self.total, counted=self.counted)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="tcp://localhost:50101")
    parser.add_argument("--state", default="spots.npz", help="the persisted aggregate")
    parser.add_argument("--frames", default=FRAMES)
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--group", default=AGGREGATOR_GROUP)
    parser.add_argument("--every", type=int, default=500, help="results per save (and acks)")
    parser.add_argument("--ack-timeout", type=float, default=30.0)
    args = parser.parse_args()

    state = Aggregate(Path(args.state))
    print(f"aggregator: resuming with {state.counted} images counted", flush=True)
    started = time.monotonic()
    seen = 0
    with hidra_ng.Consumer(args.api) as consumer:
        pending: list[hidra_ng.Frame] = []
        while True:
            try:
                # what there is, up to the next save, in one round trip
                frames = consumer.next_many(args.results, args.group,
                                            max_count=max(1, args.every - len(pending)),
                                            timeout=0.2 if pending else 2.0,
                                            ack_timeout=args.ack_timeout)  # fmt: skip
            except (hidra_ng.NotYetAvailable, hidra_ng.ReceiverUnavailable):
                frames = []
            for frame in frames:
                state.add(frame.meta["image"], frame.meta["count"])
                pending.append(frame)
                seen += 1
            if pending and (not frames or len(pending) >= args.every):
                state.save()  # first persist, then ack
                # a lost ack: the result comes back and is skipped as counted
                with contextlib.suppress(hidra_ng.ReceiverUnavailable):
                    consumer.ack_many(pending)
                pending = []
            if not frames and finished(consumer, args.frames, state):
                break
    elapsed = time.monotonic() - started
    print(
        f"aggregator: {state.counted} images counted, total {state.total} spots,"
        f" {state.skipped} duplicate results skipped, {seen} results in {elapsed:.1f} s",
        flush=True,
    )


def finished(consumer: hidra_ng.Consumer, frames: str, state: Aggregate) -> bool:
    """True once the frames stream is finished and each of its images is counted."""
    try:
        info = consumer.info(frames)
    except (hidra_ng.NotYetAvailable, hidra_ng.ReceiverUnavailable):
        return False
    return info.finished and state.counted == info.count


if __name__ == "__main__":
    main()
