"""The bytes every baseline and figure moves, so that raw and hidra_ng runs compare alike.

4 MiB frames are uint16 images of 1024 x 2048 pixels with Poisson(2) counts, as a
photon-counting detector gives at moderate flux (so a compressed figure sees
realistic data). A small pool of distinct frames is cycled: memory stays bounded
however many frames a run sends. 1 KiB messages are random bytes.

perf/scaling.py also moves frames of other sizes (64 KiB to 16 MiB): the same
Poisson(2) uint16 images, twice as wide as high, made once per size and process,
at most 64 MiB of them per size.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from harness import KiB, MiB

FRAME_SHAPE = (1024, 2048)  # uint16 -> 4 MiB
FRAME_BYTES = 4 * MiB
SMALL_BYTES = 1 * KiB
POOL = 8  # distinct frames (32 MiB)
#: live_latency_4mib_paced and its relay baseline: 4 MiB frames a second. 25 x 4 MiB =
#: 105 MB/s, written twice (spool and store on one disk): ~210 MB/s, below what this
#: VM's disk takes durably (raw_lmdb_append_4mib, ~330 MB/s), as a detector's rate is.
LIVE_PACED_HZ = 25.0
POOL_BYTES = 64 * MiB  # at most this much of a pool of frames of another size


@cache
def frames_4mib() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(12)
    frames = tuple(rng.poisson(2.0, FRAME_SHAPE).astype(np.uint16) for _ in range(POOL))
    assert all(f.nbytes == FRAME_BYTES for f in frames)
    return frames


@cache
def frame_buffers() -> tuple[memoryview, ...]:
    """The same frames as flat byte views, for raw pyzmq and LMDB (no copies)."""
    return tuple(memoryview(f.reshape(-1).view(np.uint8)) for f in frames_4mib())


@cache
def messages_1kib() -> tuple[bytes, ...]:
    rng = np.random.default_rng(13)
    return tuple(rng.integers(0, 256, SMALL_BYTES, dtype=np.uint8).tobytes() for _ in range(POOL))


@cache
def frames_of(nbytes: int) -> tuple[np.ndarray, ...]:
    """Distinct uint16 Poisson(2) frames of rows x 2 rows pixels, ``nbytes`` = 4 * rows**2.

    4 MiB gives :func:`frames_4mib`; other sizes at most :data:`POOL_BYTES` of frames.
    """
    if nbytes == FRAME_BYTES:
        return frames_4mib()
    rows = math.isqrt(nbytes // 4)
    if 2 * rows * rows * 2 != nbytes:
        raise ValueError(f"frame size {nbytes} is not 4 * rows**2 bytes")
    rng = np.random.default_rng(14 + rows)
    count = max(2, min(POOL, POOL_BYTES // nbytes))
    return tuple(rng.poisson(2.0, (rows, 2 * rows)).astype(np.uint16) for _ in range(count))


@cache
def buffers_of(nbytes: int) -> tuple[memoryview, ...]:
    """The frames of :func:`frames_of` as flat byte views, for raw LMDB (no copies)."""
    return tuple(memoryview(f.reshape(-1).view(np.uint8)) for f in frames_of(nbytes))
