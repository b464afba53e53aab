"""The split-series fault tests' workload: item ``k`` of a series, derived from ``k`` alone.

Imported by ``test_split_kill.py`` and by ``split_crash.py``, which runs as a
plain script: it must not import pytest or the tests' conftest.
"""

from __future__ import annotations

import numpy as np

SERIES = "det/run_0007"
SENDER = "split-kill"
CHECKPOINT = "split_crash"
PARTS = 3
BLOCK = 2  # images per block: a call of 12 is six commits on three spools


def item(k: int) -> tuple[np.ndarray | bytes, dict[str, int]]:
    """Message ``k``: a uint16 image every third, bytes otherwise, every tenth 96 KiB."""
    rng = np.random.default_rng([18, k])
    meta = {"k": k}
    if k % 3 == 0:
        return rng.integers(0, 2**16, size=(16, 32), dtype=np.uint16), meta
    size = 96 * 1024 if k % 10 == 1 else 256 + 300 * (k % 7)
    return f"{k}|".encode() + rng.bytes(size), meta
