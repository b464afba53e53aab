"""Where the live latency of a 4 MiB frame goes: ``stored`` -> commit done -> Subscriber.

    .venv/bin/python perf/live_split.py [--frames 60]

live_latency_4mib (perf/figures.py) measures Subscriber arrival minus
``Frame.stored``, the receiver's clock taken when the frame's payload is in the
transaction, just before LMDB's commit (page write + fsync). This script splits
that figure in two by running the receiver in this process (threads) with
``Store.append`` wrapped to note the clock when each commit returned:

- stored -> commit done: LMDB writing the pages and fsyncing (G1: nothing is
  published before it is durable);
- commit done -> Subscriber: the publish path (XPUB send without copy, the
  kernel's copies, the Subscriber's thread and decode), comparable to a raw
  one-way pyzmq message.

It shares one process and its GIL, so both parts read a little higher than in
the two-process figure. A diagnostic: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from payloads import frames_4mib

from hidra_ng import Producer, Subscriber
from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.receiver.store import Store

WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()

    committed_at: dict[int, float] = {}
    append = Store.append

    def timed_append(self, batch, now=None):
        result = append(self, batch, now)
        done = time.time()
        for c in result.committed:
            committed_at[c.index] = done
        return result

    Store.append = timed_append
    with tempfile.TemporaryDirectory(prefix="hidra-ng-live-") as tmp:
        d = Path(tmp)
        config = ReceiverConfig(
            data_dir=str(d / "store"),
            ingest="tcp://127.0.0.1:*",
            api="tcp://127.0.0.1:*",
            publish="tcp://127.0.0.1:*",
            metrics_port=0,
        )
        rx = Receiver(config)
        rx.start()
        try:
            split = _measure(rx, d, args.frames, committed_at)
        finally:
            rx.stop()
            Store.append = append
    for name, values in split.items():
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"{name:26s} p50 {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")


def _measure(rx: Receiver, d: Path, count: int, committed_at: dict[int, float]):
    frames = frames_4mib()
    split: dict[str, list[float]] = {
        "stored -> commit done": [],
        "commit done -> Subscriber": [],
        "stored -> Subscriber": [],
    }
    ep = rx.endpoints
    with (
        Producer(ep["ingest"], ep["api"], d / "spool", "split", spool_sync="batch") as p,
        Subscriber(publish=ep["publish"], streams=["live/split"]) as sub,
    ):
        time.sleep(0.5)  # the subscription reaches the receiver
        live = iter(sub)
        for i in range(count + WARMUP):
            p.send("live/split", frames[i % len(frames)])
            frame = next(live)
            arrived = time.time()
            if i < WARMUP:
                continue
            done = committed_at[frame.index]
            split["stored -> commit done"].append((done - frame.stored) * 1e3)
            split["commit done -> Subscriber"].append((arrived - done) * 1e3)
            split["stored -> Subscriber"].append((arrived - frame.stored) * 1e3)
    return split


if __name__ == "__main__":
    main()
