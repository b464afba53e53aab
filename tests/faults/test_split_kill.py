"""Fault: a sender killed -9 between the block commits of one call of a split series (§14, G2, G3).

A ``send_many`` of a split series whose images span several blocks is one spool
commit per block, on the spools of three receivers. The sender (a Producer
process, then the sender daemon with an ``hdf5:`` source) kills itself right
after one of those commits, so some blocks of the call are durable and the
others not; after the restart its caller sends the whole call again from its
checkpoint. Then an outside ``kill -9`` at whatever point the sender is, and a
last run to the end. Read back by part and merged: every image once, in order;
lost = duplicated = unexpected = 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from hidra_ng import Consumer, NotYetAvailable, StreamFinished
from hidra_ng.shards import part_name
from tests.faults.split_workload import BLOCK, PARTS, SENDER, SERIES, item
from tests.helpers import wait_for
from tests.shard_helpers import receivers, write_shard_map

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("split_crash.py")
NAMES = ("r0", "r1", "r2")
COUNT = 240
BATCH = 12  # six blocks of two on three receivers: six commits a call
RECOGNIZED = "messages sent again were spooled already by an interrupted send_many"


def digest(data) -> str:
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return hashlib.sha256(memoryview(data)).hexdigest()


def run(tmp_path: Path, name: str, kill_after: int, args: list[str]) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("wb")
    with log:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), str(kill_after), *args], stdout=log, stderr=log
        )


def log_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text(errors="replace")


def stored(c: Consumer) -> int:
    total = 0
    for p in range(PARTS):
        with contextlib.suppress(NotYetAvailable):
            total += c.info(part_name(SERIES, p)).count
    return total


def kill_from_outside(tmp_path: Path, name: str, args: list[str], shards: Path, at: int) -> None:
    """Run the sender until ``at`` images are stored, then kill -9 it wherever it is."""
    proc = run(tmp_path, name, 0, args)
    try:
        with Consumer(shards=shards) as c:
            wait_for(lambda: stored(c) >= at or proc.poll() is not None, timeout=120)
    finally:
        proc.kill()
        code = proc.wait()
    assert code in (-9, 0), log_of(tmp_path, name)  # 0: it was done before the kill


def part_frames(shards: Path) -> list:
    """Every stored frame of every part (not merged: duplicates would show)."""
    frames = []
    with Consumer(shards=shards, request_timeout=30) as c:
        for p in range(PARTS):
            index = 0
            while True:
                try:
                    frames.append(c.get(part_name(SERIES, p), index, timeout=30))
                except StreamFinished:
                    break
                index += 1
    return frames


def check_exactly_once(shards: Path, sent: dict[str, int]) -> None:
    frames = part_frames(shards)
    times = Counter(digest(f.data) for f in frames)
    lost = sum(1 for d in sent if times[d] == 0)
    duplicated = sum(n - 1 for n in times.values() if n > 1)
    unexpected = sum(1 for d in times if d not in sent)
    assert (lost, duplicated, unexpected) == (0, 0, 0)
    with Consumer(shards=shards, request_timeout=30) as c:
        merged = list(c.replay_merged(SERIES))
    assert [sent[digest(f.data)] for f in merged] == list(range(len(sent)))
    assert [f.meta["hidra_split"] for f in merged] == [[k, PARTS, BLOCK] for k in range(len(sent))]


def test_producer_killed_between_the_blocks_of_a_call_stores_each_image_once(
    tmp_path: Path,
) -> None:
    with receivers(tmp_path, NAMES) as rxs:
        shards = write_shard_map(tmp_path / "shards.toml", rxs, [["**"], ["**"], ["**"]])
        args = ["job", str(shards), str(tmp_path / "spool"), str(COUNT), str(BATCH)]
        # the 9th commit: the third of the second call's six (images 12..17 spooled)
        first = run(tmp_path, "first", 9, args)
        assert first.wait(120) == -9, log_of(tmp_path, "first")
        assert "resuming at 0\n" in log_of(tmp_path, "first")
        # again from image 12: six recognized, six new; killed in its second call
        second = run(tmp_path, "second", 5, args)
        assert second.wait(120) == -9, log_of(tmp_path, "second")
        second_log = log_of(tmp_path, "second")
        assert "resuming at 12\n" in second_log
        assert f"6 {RECOGNIZED} (of 6 it had spooled)" in second_log
        kill_from_outside(tmp_path, "third", args, shards, at=COUNT * 2 // 3)
        last = run(tmp_path, "last", 0, args)
        assert last.wait(120) == 0, log_of(tmp_path, "last")
        check_exactly_once(shards, {digest(item(k)[0]): k for k in range(COUNT)})


FRAMES = 300


def write_series(path: Path) -> dict[str, int]:
    """An HDF5 series of FRAMES unique 8x8 frames; digest -> frame number."""
    rng = np.random.default_rng(18)
    frames = rng.integers(0, 2**16, size=(FRAMES, 8, 8), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames, chunks=(1, 8, 8))
    sent = {digest(frame): k for k, frame in enumerate(frames)}
    assert len(sent) == FRAMES
    return sent


def test_sender_daemon_killed_between_the_blocks_of_a_call_stores_each_frame_once(
    tmp_path: Path,
) -> None:
    sent = write_series(tmp_path / "series.h5")
    with receivers(tmp_path, NAMES) as rxs:
        shards = write_shard_map(tmp_path / "shards.toml", rxs, [["**"], ["**"], ["**"]])
        source = f"hdf5:{tmp_path / 'series.h5'}?stream={SERIES}&finish=1"
        args = [
            "cli", "-v", "sender", "--shards", str(shards), "--spool-dir", str(tmp_path / "spool"),
            "--sender-id", SENDER, "--metrics-port", "0", "--split-parts", str(PARTS),
            "--split-block-images", str(BLOCK), "--source", source,
        ]  # fmt: skip
        # the source spools 64 frames a call: 32 blocks; the 40th commit is in the second
        first = run(tmp_path, "first", 40, args)
        assert first.wait(120) == -9, log_of(tmp_path, "first")
        kill_from_outside(tmp_path, "second", args, shards, at=FRAMES * 2 // 3)
        last = run(tmp_path, "last", 0, [*args, "--exit-when-done"])
        assert last.wait(120) == 0, log_of(tmp_path, "last")
        assert RECOGNIZED in log_of(tmp_path, "second") + log_of(tmp_path, "last")
        check_exactly_once(shards, sent)
