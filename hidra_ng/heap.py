"""Frame-sized buffers from the heap, reused, instead of fresh pages per frame (daemons only).

A receiver allocates two buffers of each frame's size per frame: libzmq's for the
message it receives and LMDB's dirty pages for the put (LMDB ``malloc``s and
``free``s overflow pages per commit). glibc serves such sizes with a fresh
``mmap`` (and gives freed heap tops back to the kernel), so each frame cost
~500-650 page faults and the kernel's zeroing of every page: a 4 MiB frame
took ~1.9 s of system time per GB in the receiver (perf/NOTES.md "CPU per byte").
With allocations up to 32 MiB from the heap, and freed memory kept for reuse,
the same buffers come back frame after frame.

Memory stays bounded (G9): glibc keeps at most what the process used at its
peak, which the commit and socket limits bound. Called by the daemon commands
(``hidra-ng receiver``, ``hidra-ng sender``), never by the library, whose
process belongs to its caller.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): frames up to it
MMAP_THRESHOLD = 32 << 20
#: a free heap top this large is kept, not returned to the kernel
TRIM_THRESHOLD = 256 << 20
#: the heap grows by this much more than asked (address space; pages only once touched)
TOP_PAD = 64 << 20


def keep_frame_buffers() -> bool:
    """Tune glibc's malloc for frame-sized buffers; False where there is no glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    ok = all(mallopt(param, value) for param, value in settings)
    if not ok:
        log.debug("mallopt refused the frame-buffer settings")
    return bool(ok)
