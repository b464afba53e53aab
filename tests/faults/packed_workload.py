"""A workload of small messages for the packed-storage fault tests (ADR 0004).

Message ``k`` is derived from ``(seed, k)`` alone: 1 KiB of random bytes, and
every 37th a frame of 100 KiB (kept alone, between blocks). Imported by the
tests and by ``packed_job.py`` (a plain script: no pytest here).
"""

from __future__ import annotations

import numpy as np

try:  # imported by the tests
    from tests.faults.workload import StoredFrame, assert_sender_order, check, payload_digest
except ImportError:  # by packed_job.py, run as a script from this directory
    from workload import (  # type: ignore[no-redef]
        StoredFrame,
        assert_sender_order,
        check,
        payload_digest,
    )

KiB = 1 << 10


def small_message(seed: int, k: int) -> tuple[bytes, dict[str, int]]:
    rng = np.random.default_rng([seed, k, 7])
    size = 100 * KiB if k % 37 == 36 else KiB
    return rng.bytes(size), {"k": k, "seed": seed}


def assert_small_each_exactly_once(
    frames: list[StoredFrame], seed: int, messages: int, sender: str
) -> None:
    """lost = duplicated = unexpected = 0, consecutive indices, in the sender's order."""
    expected = {payload_digest(small_message(seed, k)[0]): k for k in range(messages)}
    assert len(expected) == messages
    verdict = check(frames, expected, required=range(messages))
    assert verdict.ok, verdict.summary()
    assert len(frames) == messages
    assert_sender_order(frames, expected, sender)
    assert verdict.present == list(range(messages))
