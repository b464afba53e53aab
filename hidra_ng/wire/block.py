"""One LMDB value holding many small messages: a spool batch, a store block (ADR 0004).

A block keeps ``n`` messages, each a small *head* (an encoded Header in the
sender's spool, an encoded Record in the receiver's store) and a *payload*::

    b"HB" 0x01 | n: u32 | head ends: n x u32 | payload ends: n x u32 | heads | payloads

All integers are little-endian (the tables are read in place as an array of
u32 on little-endian machines, without decoding). An end is the offset just
past an entry in its area (heads, then payloads), so entry ``j`` is two slices
found with four reads of the table: :meth:`Block.entry` costs the same in a
block of 1 or 4,096.
The payloads of consecutive entries are contiguous, so a run of them is one
slice as well (:meth:`Block.payloads`).

Only messages whose payload is under :data:`PACK_BELOW_BYTES` are packed; a
block holds at most :data:`BLOCK_MAX_COUNT` messages and, past its first
message, at most :data:`BLOCK_MAX_BYTES` of payload. Larger frames stay one
value each, so packing costs them nothing.
"""

from __future__ import annotations

import bisect
import struct
import sys
from collections.abc import Iterator, Sequence
from itertools import accumulate

import numpy as np

from hidra_ng.errors import StorageError

MAGIC = b"HB\x01"
_PREFIX = struct.Struct("<3sI")
#: the table as a sequence of ints: a view of the value where the machine is little-endian
_IN_PLACE = sys.byteorder == "little" and struct.calcsize("I") == 4
#: payloads under this size are packed (the same 64 KiB below which zmq copies a part)
PACK_BELOW_BYTES = 64 * 1024
#: payload bytes of one block: a partly removed block keeps at most this much on disk
BLOCK_MAX_BYTES = 1 << 20
BLOCK_MAX_COUNT = 4096

Buffer = bytes | memoryview


def pack(heads: Sequence[Buffer], payloads: Sequence[Buffer]) -> bytes:
    """One block value of ``heads[j]`` with ``payloads[j]``; one join, no per-entry copies."""
    n = len(heads)
    if n != len(payloads) or not n:
        raise ValueError(
            f"a block needs as many heads as payloads, at least one: {n}, {len(payloads)}"
        )
    table = struct.pack(f"<{2 * n}I", *accumulate(map(len, heads)), *accumulate(map(len, payloads)))
    return b"".join([_PREFIX.pack(MAGIC, n), table, *heads, *payloads])


def runs(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive entries that may share a block, in order.

    An entry of :data:`PACK_BELOW_BYTES` or more is a run of its own (its
    caller stores it as one value); the others are cut at the block limits.
    """
    n = len(sizes)
    if (
        n
        and n <= BLOCK_MAX_COUNT
        and max(sizes) < PACK_BELOW_BYTES
        and (n == 1 or sum(sizes) <= BLOCK_MAX_BYTES)
    ):  # the usual batch: one block
        yield 0, n
        return
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if size >= PACK_BELOW_BYTES:
            if start < i:
                yield start, i
            yield i, i + 1
            start, total = i + 1, 0
            continue
        if start < i and (total + size > BLOCK_MAX_BYTES or i - start >= BLOCK_MAX_COUNT):
            yield start, i
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield start, len(sizes)


def packable(size: int) -> bool:
    return size < PACK_BELOW_BYTES


class Block:
    """A block value read back (a memoryview of the LMDB map or bytes); nothing is copied."""

    __slots__ = ("_ends", "_heads", "_payloads", "_view", "count")

    def __init__(self, value: Buffer, where: str = "block") -> None:
        view = memoryview(value)
        if len(view) < _PREFIX.size or view[:3] != MAGIC:
            raise StorageError(f"{where} is not a block of packed messages (bad magic)")
        _, n = _PREFIX.unpack_from(view)
        table = _PREFIX.size + 8 * n
        if n == 0 or len(view) < table:
            raise StorageError(f"{where} is truncated: {len(view)} bytes for {n} entries")
        raw = view[_PREFIX.size : table]
        ends = raw.cast("I") if _IN_PLACE else struct.unpack(f"<{2 * n}I", raw)
        heads_size, payloads_size = ends[n - 1], ends[2 * n - 1]
        if table + heads_size + payloads_size != len(view):
            raise StorageError(
                f"{where} is corrupt: {len(view)} bytes, its table says"
                f" {table + heads_size + payloads_size}"
            )
        self.count = n
        self._view = view
        self._ends = ends  # head ends, then payload ends
        self._heads = table
        self._payloads = table + heads_size

    def head(self, j: int) -> memoryview:
        ends = self._ends
        start = ends[j - 1] if j else 0
        return self._view[self._heads + start : self._heads + ends[j]]

    def payload(self, j: int) -> memoryview:
        ends, n = self._ends, self.count
        start = ends[n + j - 1] if j else 0
        return self._view[self._payloads + start : self._payloads + ends[n + j]]

    def entry(self, j: int) -> tuple[memoryview, memoryview]:
        """(head, payload) of entry ``j`` (0-based), views of the value."""
        if not 0 <= j < self.count:
            raise IndexError(f"entry {j} of a block of {self.count}")
        return self.head(j), self.payload(j)

    def entries(self, start: int = 0) -> Iterator[tuple[memoryview, memoryview]]:
        """(head, payload) of entries ``start`` .. the last."""
        n, view, ends = self.count, self._view, self._ends
        heads, payloads = self._heads, self._payloads
        h0 = ends[start - 1] if start else 0
        p0 = ends[n + start - 1] if start else 0
        for j in range(start, n):
            h1, p1 = ends[j], ends[n + j]
            yield view[heads + h0 : heads + h1], view[payloads + p0 : payloads + p1]
            h0, p0 = h1, p1

    def run(self, start: int, stop: int) -> tuple[list[memoryview], list[int], memoryview]:
        """(heads, payload sizes, payloads joined) of entries ``start`` .. ``stop - 1``."""
        n, view, ends, at = self.count, self._view, self._ends, self._heads
        h0 = ends[start - 1] if start else 0
        p0 = ends[n + start - 1] if start else 0
        heads, sizes = [], []
        for j in range(start, stop):
            h1, p1 = ends[j], ends[n + j]
            heads.append(view[at + h0 : at + h1])
            sizes.append(p1 - p0)
            h0, p0 = h1, p1
        return heads, sizes, self.payloads(start, stop)

    def payloads(self, start: int, stop: int) -> memoryview:
        """The payloads of entries ``start`` .. ``stop - 1`` joined: one slice."""
        ends, n = self._ends, self.count
        begin = ends[n + start - 1] if start else 0
        end = ends[n + stop - 1] if stop else 0
        return self._view[self._payloads + begin : self._payloads + end]

    def stop(self, start: int, max_count: int, max_bytes: int) -> int:
        """The end of the run from entry ``start`` of at most ``max_count`` entries and
        ``max_bytes`` of payload, but at least one entry."""
        n, ends = self.count, self._ends
        last = min(n, start + max_count)
        begin = ends[n + start - 1] if start else 0
        within = bisect.bisect_right(ends, begin + max_bytes, n + start, n + last)
        return int(max(start + 1, within - n))

    def span(self, start: int, stop: int) -> tuple[memoryview, list[int], memoryview]:
        """(heads joined, payload sizes, payloads joined) of entries ``start`` .. ``stop - 1``.

        :meth:`run` without a Python step per entry: two slices and the sizes
        taken from the table at once.
        """
        n, view, ends = self.count, self._view, self._ends
        h0 = ends[start - 1] if start else 0
        heads = view[self._heads + h0 : self._heads + ends[stop - 1]]
        before = ends[n + start - 1] if start else 0
        sizes = np.diff(np.asarray(ends[n + start : n + stop], dtype=np.int64), prepend=before)
        return heads, sizes.tolist(), self.payloads(start, stop)
