"""The bytes every baseline and figure moves, so that raw and hidra_ng runs compare alike.

4 MiB frames are uint16 images of 1024 x 2048 pixels with Poisson(2) counts, as a
photon-counting detector gives at moderate flux (so a compressed figure sees
realistic data). A small pool of distinct frames is cycled: memory stays bounded
however many frames a run sends. 1 KiB messages are random bytes.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from harness import KiB, MiB

FRAME_SHAPE = (1024, 2048)  # uint16 -> 4 MiB
FRAME_BYTES = 4 * MiB
SMALL_BYTES = 1 * KiB
POOL = 8  # distinct frames (32 MiB)


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
