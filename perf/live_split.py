"""Where the live latency of a 4 MiB frame goes, stage by stage, send() -> Subscriber.

    .venv/bin/python perf/live_split.py [--frames 60]

live_latency_4mib (perf/figures.py) measures from ``Producer.send()`` returning to
a Subscriber yielding the frame. This script runs the receiver in this process
(threads) with the store wrapped to note the clock when a batch reaches it,
when its frames went out live, and when its commit started and returned, and
splits the figure into:

- send -> store: the Producer's link thread reading the spool and pushing, the
  first hop, the receiver's receive and validation;
- store -> published: admission, placement and the XPUB send (with a committer
  thread, ``Store.plan`` and the publish; on revisions before it, ``Store.append``
  up to its ``before_commit`` hook: + the LMDB puts; on a revision that
  publishes after the commit, this part includes the commit);
- published -> Subscriber: the second hop, the Subscriber's feed thread and
  decode, and whatever else holds the GIL of either process meanwhile;
- published -> commit done: LMDB's page write and fsync, off the live path now
  (shown for reference);
- published -> commit start: the wait for the committer thread, busy with the
  batch before (0 on revisions without one);
- previous commit after send: how long after ``send()`` returned the commit of
  the frame before was still running (without a committer thread the ingest
  thread commits, then takes the next frame: with frames sent back to back, part
  of an fsync can still be on the path of the next frame; with one, this no
  longer delays the next frame).

It shares one process and its GIL, so the parts read a little higher than in the
two-process figure. A diagnostic: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import inspect
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
STREAM = "live/split"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument(
        "--window-mib",
        type=int,
        default=0,
        help="the Producer's window_bytes in MiB (default: its default, 64 MiB): with frames"
        " sent back to back faster than the disk commits them, the window bounds how far"
        " the live feed runs ahead of the acks",
    )
    args = parser.parse_args()

    stamps: dict[int, dict[str, float]] = {}  # index -> stage -> time.time()
    restore = _instrument(stamps)
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
            window = {"window_bytes": args.window_mib << 20} if args.window_mib else {}
            split = _measure(rx, d, args.frames, stamps, window)
        finally:
            rx.stop()
            restore()
    print(f"{_revision_kind()}; {args.frames} frames")
    for name, values in split.items():
        values.sort()
        p90 = values[int(len(values) * 0.9)]
        print(f"{name:28s} p50 {statistics.median(values):6.2f} ms   p90 {p90:6.2f} ms")


def _revision_kind() -> str:
    if hasattr(Store, "plan"):
        return "committer thread: planned and published, then written by the committer"
    if "before_commit" in inspect.signature(Store.append).parameters:
        return "published from inside the commit, before the fsync"
    return "published after the commit"


def _instrument(stamps: dict[int, dict[str, float]]):
    """Wrap the store (and the live publisher) to stamp each index; returns the undo."""
    if hasattr(Store, "plan"):
        return _instrument_committer(stamps)
    append = Store.append
    publishes_early = "before_commit" in inspect.signature(append).parameters

    def timed_append(self, batch, now=None, before_commit=None):
        began = time.time()

        def published(committed):
            if before_commit is not None:
                before_commit(committed)
            done = time.time()
            for c in committed:
                stamps[c.index] = {"store": began, "published": done}

        if publishes_early:
            result = append(self, batch, now, before_commit=published)
        else:
            result = append(self, batch, now)
        done = time.time()
        for c in result.committed:
            stamp = stamps.setdefault(c.index, {"store": began, "published": done})
            stamp["commit start"] = stamp["published"]  # the same thread: no wait
            stamp["commit done"] = done
        return result

    Store.append = timed_append  # type: ignore[method-assign]

    def restore() -> None:
        Store.append = append  # type: ignore[method-assign]

    return restore


def _instrument_committer(stamps: dict[int, dict[str, float]]):
    from hidra_ng.receiver.live import LivePublisher

    plan, write, publish = Store.plan, Store.write, LivePublisher.publish

    def timed_plan(self, batch, now=None):
        began = time.time()
        planned = plan(self, batch, now)
        for c in planned.result.committed:
            stamps[c.index] = {"store": began}
        return planned

    def timed_publish(self, committed, done=None):
        publish(self, committed, done)
        now = time.time()
        for c in committed:
            stamps[c.index]["published"] = now

    def timed_write(self, planned):
        began = time.time()
        result = write(self, planned)
        done = time.time()
        for c in planned.result.committed:
            stamps[c.index].update({"commit start": began, "commit done": done})
        return result

    Store.plan, Store.write = timed_plan, timed_write  # type: ignore[method-assign]
    LivePublisher.publish = timed_publish  # type: ignore[method-assign]

    def restore() -> None:
        Store.plan, Store.write = plan, write  # type: ignore[method-assign]
        LivePublisher.publish = publish  # type: ignore[method-assign]

    return restore


def _measure(rx: Receiver, d: Path, count: int, stamps: dict[int, dict[str, float]], options: dict):
    frames = frames_4mib()
    split: dict[str, list[float]] = {
        "send -> store": [],
        "store -> published": [],
        "published -> Subscriber": [],
        "published -> commit done": [],
        "published -> commit start": [],
        "previous commit after send": [],
        "send -> Subscriber": [],
    }
    samples: list[tuple[int, float, float]] = []  # (index, sent, arrived)
    ep = rx.endpoints
    with (
        Producer(ep["ingest"], ep["api"], d / "spool", "split", spool_sync="batch", **options) as p,
        Subscriber(publish=ep["publish"], streams=[STREAM]) as sub,
    ):
        while sub.receive(timeout=0.05) is None:  # PUB/SUB joins asynchronously
            p.send(STREAM, frames[0])
        p.flush(timeout=60)
        while sub.receive(timeout=0.2) is not None:
            pass
        for i in range(count + WARMUP):
            p.send(STREAM, frames[i % len(frames)])
            sent = time.time()
            frame = sub.receive(timeout=30)
            arrived = time.time()
            if frame is None:
                raise TimeoutError(f"frame {i} did not arrive within 30 s")
            if i >= WARMUP:
                samples.append((frame.index, sent, arrived))
        p.flush(timeout=60)  # every commit is done: all stamps are there
    for index, sent, arrived in samples:
        s, before = stamps[index], stamps[index - 1]
        split["send -> store"].append((s["store"] - sent) * 1e3)
        split["store -> published"].append((s["published"] - s["store"]) * 1e3)
        split["published -> Subscriber"].append((arrived - s["published"]) * 1e3)
        split["published -> commit done"].append((s["commit done"] - s["published"]) * 1e3)
        split["published -> commit start"].append((s["commit start"] - s["published"]) * 1e3)
        split["previous commit after send"].append(max(0.0, before["commit done"] - sent) * 1e3)
        split["send -> Subscriber"].append((arrived - sent) * 1e3)
    return split


if __name__ == "__main__":
    main()
