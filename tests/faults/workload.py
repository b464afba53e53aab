"""Deterministic workloads and a Jepsen-style checker for the fault tests.

Message ``k`` of a workload is derived from ``(seed, k)`` alone, so the checker
knows every payload it may find without a log kept by the process under test.
Payloads are random bytes or arrays of mixed sizes (1 KiB to 4 MiB); their
sha256 identifies them, so the checker counts what was lost, what was stored
more than once and what was stored that nobody sent.

This module is imported by the tests and by ``producer_job.py``, which runs as
a plain script: it must not import pytest or the tests' conftest.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from hidra_ng import Consumer, Frame, StreamFinished

KiB = 1 << 10
MiB = 1 << 20


def message_size(seed: int, k: int) -> int:
    """Payload bytes of message ``k``: mostly small, every tenth large, some exactly 4 MiB."""
    rng = np.random.default_rng([seed, k, 1])
    if k % 50 == 7:
        return 4 * MiB
    if k % 10 == 3:
        return int(rng.integers(256 * KiB, 4 * MiB))
    return int(rng.integers(1 * KiB, 64 * KiB)) // 16 * 16


def message(seed: int, k: int) -> tuple[np.ndarray | bytes, dict[str, int]]:
    """Message ``k`` of workload ``seed``: (data, meta); every third one is a uint16 image."""
    size = message_size(seed, k)
    rng = np.random.default_rng([seed, k])
    meta = {"k": k, "seed": seed}
    if k % 3 == 0:
        width = 256
        pixels = rng.integers(0, 2**16, size=size // 2, dtype=np.uint16)
        return pixels[: size // 2 // width * width].reshape(-1, width), meta
    return rng.bytes(size), meta


def payload_digest(data: np.ndarray | bytes | None) -> str:
    """sha256 of a payload as sent or as read back (arrays by their raw bytes)."""
    if data is None:
        return "none"
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return hashlib.sha256(memoryview(data)).hexdigest()


def expected_digests(seed: int, ks: Iterable[int]) -> dict[str, int]:
    """Digest -> message number for messages ``ks`` of workload ``seed``."""
    digests = {payload_digest(message(seed, k)[0]): k for k in ks}
    assert len(set(digests.values())) == len(digests), "workload payloads must be unique"
    return digests


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """What the checker keeps of a stored frame: no payload, just its digest."""

    index: int
    digest: str
    sender: str
    seq: int
    meta: dict


def stored_frame(frame: Frame) -> StoredFrame:
    return StoredFrame(frame.index, payload_digest(frame.data), frame.sender, frame.seq, frame.meta)


def read_finished_stream(api: str, stream: str, timeout: float = 30.0) -> list[StoredFrame]:
    """Every frame of a finished stream, from index 0 until ``StreamFinished``.

    Asserts G4 on the way: each ``get(i)`` answers index ``i``, and the stream's
    info agrees with what was read.
    """
    frames: list[StoredFrame] = []
    with Consumer(api) as consumer:
        while True:
            try:
                frame = consumer.get(stream, len(frames), timeout=timeout)
            except StreamFinished:
                break
            assert frame.index == len(frames), f"get({len(frames)}) answered index {frame.index}"
            frames.append(stored_frame(frame))
        info = consumer.info(stream)
    assert info.finished
    assert (info.first, info.count) == (0, len(frames)), f"{info} but {len(frames)} frames read"
    assert info.last == (len(frames) - 1 if frames else None)
    return frames


@dataclass
class Verdict:
    """The outcome of a run, Jepsen style."""

    lost: list[int] = field(default_factory=list)  # required messages not stored
    duplicated: dict[int, int] = field(default_factory=dict)  # message -> times stored (> 1)
    unexpected: list[int] = field(default_factory=list)  # indices holding no sent payload
    present: list[int] = field(default_factory=list)  # message numbers in index order

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def summary(self) -> str:
        return (
            f"lost={len(self.lost)} {self.lost[:10]} duplicated={len(self.duplicated)}"
            f" {dict(list(self.duplicated.items())[:10])} unexpected={len(self.unexpected)}"
            f" at indices {self.unexpected[:10]}"
        )


def check(
    frames: list[StoredFrame],
    expected: dict[str, int],
    required: Iterable[int],
) -> Verdict:
    """Count lost, duplicated and unexpected messages by payload digest.

    ``expected`` maps the digest of every message that may be stored to its
    number; ``required`` are the messages that must be stored (exactly once).
    A message in ``expected`` but not in ``required`` may be absent.
    """
    verdict = Verdict()
    times = Counter()
    for frame in frames:
        k = expected.get(frame.digest)
        if k is None:
            verdict.unexpected.append(frame.index)
            continue
        times[k] += 1
        verdict.present.append(k)
    verdict.lost = sorted(k for k in required if times[k] == 0)
    verdict.duplicated = {k: n for k, n in sorted(times.items()) if n > 1}
    return verdict


def assert_sender_order(frames: list[StoredFrame], expected: dict[str, int], sender: str) -> None:
    """G5: the messages of ``sender`` have increasing message numbers and seqs by index."""
    mine = [f for f in frames if f.sender == sender]
    ks = [expected[f.digest] for f in mine]
    seqs = [f.seq for f in mine]
    assert ks == sorted(ks), f"sender {sender}: message numbers out of order by index"
    assert seqs == sorted(set(seqs)), f"sender {sender}: seqs not strictly increasing by index"
    for f in mine:
        assert f.meta["k"] == expected[f.digest], f"index {f.index}: meta does not match payload"


def assert_each_exactly_once(
    frames: list[StoredFrame], seed: int, messages: int, sender: str
) -> None:
    """Messages 0..messages-1 of ``seed`` are all stored, once each, in ``sender``'s order:
    lost = duplicated = unexpected = 0, and the indices are consecutive."""
    expected = expected_digests(seed, range(messages))
    verdict = check(frames, expected, required=range(messages))
    assert verdict.ok, verdict.summary()
    assert len(frames) == messages
    assert_sender_order(frames, expected, sender)
    assert verdict.present == list(range(messages))
