"""How far a follower (the bridge's broker copy, the writer's files) trails the receiver.

A sampler records, every few ms, the time, how many frames of the stream the
receiver has stored and how many the follower has (confirmed by the broker, in
the writer's files). The lag of a sample in frames is their difference; in
seconds it is how long the oldest frame the follower lacks has been stored: the
time since the first sample that saw it stored (so to within one sampling
period). Summaries give p50 and max over the run.

Ingest of 4 MiB frames to this VM's disk reaches ~150 MB/s (37 Hz), so a lag
run at 100 Hz puts the receiver's data dir and the producer's spool on tmpfs
(``/dev/shm``, see :func:`fast_dir`): the figure is then the follower's own lag,
not the disk's.
"""

from __future__ import annotations

import bisect
import statistics
import tempfile
from pathlib import Path

MiB = 1 << 20


def fast_dir(prefix: str) -> tempfile.TemporaryDirectory:
    """A temp dir on tmpfs when there is one with room, else in the default temp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        return tempfile.TemporaryDirectory(prefix=prefix, dir=shm)
    return tempfile.TemporaryDirectory(prefix=prefix)


class LagSamples:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.stored: list[int] = []  # frames stored by then (non-decreasing)
        self.done: list[int] = []  # frames the follower has by then

    def add(self, t: float, stored: int, done: int) -> None:
        if self.stored and stored < self.stored[-1]:
            stored = self.stored[-1]
        self.times.append(t)
        self.stored.append(stored)
        self.done.append(done)

    def frames(self) -> list[int]:
        return [max(0, s - d) for s, d in zip(self.stored, self.done, strict=True)]

    def seconds(self) -> list[float]:
        out = []
        for t, s, d in zip(self.times, self.stored, self.done, strict=True):
            if d >= s:
                out.append(0.0)
                continue
            # the first sample that saw frame d (count d + 1) stored
            j = bisect.bisect_left(self.stored, d + 1)
            out.append(t - self.times[min(j, len(self.times) - 1)])
        return out

    def summary(self) -> dict:
        frames, seconds = self.frames(), self.seconds()
        if not frames:
            return {"samples": 0}
        return {
            "samples": len(frames),
            "lag_frames_p50": statistics.median(frames),
            "lag_frames_max": max(frames),
            "lag_seconds_p50": round(statistics.median(seconds), 3),
            "lag_seconds_max": round(max(seconds), 3),
        }
