"""A split series spooled exactly once across a crash (SPEC §14, G2, G3; ADR 0008).

A ``send_many`` of a split series whose images span several blocks is one spool
commit per block, on the spools of several receivers: no single commit holds the
whole call. A sender killed between two of them has spooled the first blocks and
not the others, and its caller (a source resuming from its checkpoint, which goes
with the last commit; or a caller whose ``send_many`` raised) sends the whole
call again. Spooled again, the first blocks would be new images: duplicates.

So every block's commit also writes a record of the series (state key
``split:STREAM`` of the spool, in the same transaction as the block): how many
images of the series are spooled, a stamp, and the fingerprints of the caller's
messages of the unfinished call that are spooled already, in the caller's order.
The last commit of a call writes an empty list: the call is complete, and the
caller's checkpoint goes with it. After a restart the newest record (most images,
then the latest stamp, over every receiver's spool) says what an interrupted call
left. The messages the caller sends next are compared with those fingerprints in
order; each one that matches (the same data, dtype, shape, codec and meta as the
message spooled at that place) is recognized as spooled and not spooled again.
The first one that differs ends the recognition, and it and the rest are new
images after the spooled ones: a caller that cannot send again what it sent (a
detector stream: its images come once) loses nothing either. A caller that
sends the interrupted call again in smaller calls is recognized across them:
a call whose messages were all recognized commits the record alone, with the
fingerprints still to come and the caller's checkpoint.

A fingerprint is 8 bytes of BLAKE2b over the message's kind, dtype, shape and
codec, its meta as JSON, and the length and XXH3-128 of its payload (tens of
GB/s: a 4 MiB frame costs about 0.1 ms). Only the messages of the blocks before
a call's last need one, so a call that stays in one block (the usual ``send()``
of a large frame) costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import xxhash

from hidra_ng.sender.producer import Producer
from hidra_ng.shards import SPLIT_META_KEY, SplitLayout, part_name
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded
from hidra_ng.wire.frames import Data, describe

log = logging.getLogger(__name__)

Item = tuple[Data, dict[str, Any] | None]
_COUNT = struct.Struct(">Q")  # the record before fingerprints: the image count alone
_LENGTH = struct.Struct(">Q")
#: the seq a message gets that was recognized as spooled by an interrupted call
RECOGNIZED_SEQ = -1


def record_key(stream: str) -> str:
    """The spool checkpoint name of split ``stream``'s record."""
    return f"split:{stream}"


def fingerprint(data: Data, meta: dict[str, Any] | None, max_meta_bytes: int) -> bytes:
    """8 bytes that tell one message from another: kind, dtype, shape, codec, meta, payload."""
    if isinstance(data, Encoded):
        head: list[Any] = ["encoded", data.dtype, list(data.shape), data.compression]
        payload: memoryview | bytes = memoryview(data.payload).cast("B")
    else:
        kind, dtype, shape, payload = describe(data)
        head = [int(kind), dtype, list(shape), "none"]
    digest = hashlib.blake2b(msgspec.msgpack.encode(head), digest_size=8)
    digest.update(proto.encode_meta(meta, max_meta_bytes))
    digest.update(_LENGTH.pack(len(payload)) + xxhash.xxh3_128_digest(payload))
    return digest.digest()


@dataclass(slots=True)
class SeriesRecord:
    """What the spools know of a split series (see the module docstring)."""

    images: int  # images spooled: the next one's number
    stamp: int  # orders records with the same image count
    spooled: list[bytes] = field(default_factory=list)  # fingerprints of an unfinished call

    @property
    def order(self) -> tuple[int, int]:
        return self.images, self.stamp

    def encode(self) -> bytes:
        return msgspec.msgpack.encode([self.images, self.stamp, self.spooled])

    @classmethod
    def decode(cls, raw: bytes) -> SeriesRecord:
        if len(raw) == _COUNT.size:  # written before records had fingerprints
            return cls(_COUNT.unpack(raw)[0], 0)
        images, stamp, spooled = msgspec.msgpack.decode(raw, type=tuple[int, int, list[bytes]])
        return cls(images, stamp, spooled)


@dataclass(slots=True)
class _Block:
    """New messages of one call that go to one part, in one commit."""

    name: str  # the part stream
    link: Producer
    items: list[Item]  # as the caller gave them
    tagged: list[Item] = field(default_factory=list)  # with their place in the series
    prepared: list[Any] = field(default_factory=list)


class SplitSender:
    """Spools the messages of split series for a ShardedProducer, exactly once."""

    def __init__(
        self,
        layout: SplitLayout,
        link_of: Callable[[str], Producer],
        links: Callable[[], Iterable[Producer]],
        max_meta_bytes: int,
    ) -> None:
        self.layout = layout
        self._link_of = link_of
        self._links = links
        self._max_meta = max_meta_bytes
        self._series: dict[str, SeriesRecord] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._stamp = 0

    def send(self, stream: str, items: list[Item], points: list[tuple[str, bytes]]) -> list[int]:
        """Spool ``items`` of split ``stream``; the caller's checkpoints go with the last commit.

        Returns the seqs (each per its receiver); a message recognized as spooled by
        an interrupted call gets :data:`RECOGNIZED_SEQ`.
        """
        if not items:
            return []
        with self._lock(stream):  # one series' messages are numbered in send order
            series = self.series(stream)
            known = self._recognize(stream, series, items)
            if known == len(items):
                left = SeriesRecord(series.images, self._next_stamp(), series.spooled[known:])
                link = self._link_of(part_name(stream, self.layout.part(series.images)))
                self.commit(link, [], [(record_key(stream), left.encode()), *points])
                self._series[stream] = left
                return [RECOGNIZED_SEQ] * known
            blocks = self._blocks(stream, series.images, items[known:])
            return [RECOGNIZED_SEQ] * known + self._commit_blocks(
                stream, series.spooled[:known], blocks, points
            )

    def _recognize(self, stream: str, series: SeriesRecord, items: list[Item]) -> int:
        """How many of ``items`` (from the first) are spooled already by an interrupted call."""
        known = 0
        for data, meta in items[: len(series.spooled)]:
            if fingerprint(data, meta, self._max_meta) != series.spooled[known]:
                break
            known += 1
        if series.spooled:
            log.info(
                "split series %s: %d messages sent again were spooled already by an"
                " interrupted send_many (of %d it had spooled); not spooled twice",
                stream,
                known,
                len(series.spooled),
            )
        if known < len(items) and known < len(series.spooled):
            log.warning(
                "split series %s: a send_many interrupted by a crash or an error had spooled"
                " %d messages; the caller sent %d of them again, then others, which follow"
                " as new images from image %d",
                stream,
                len(series.spooled),
                known,
                series.images,
            )
        return known

    def _blocks(self, stream: str, first_image: int, items: list[Item]) -> list[_Block]:
        """New messages numbered from ``first_image``, by part, validated before any commit."""
        layout = self.layout
        blocks: list[_Block] = []
        for offset, (data, meta) in enumerate(items):
            image = first_image + offset
            part = layout.part(image)
            tagged = dict(meta or {})
            tagged[SPLIT_META_KEY] = [image, layout.parts, layout.block]
            name = part_name(stream, part)
            if not blocks or blocks[-1].name != name:
                blocks.append(_Block(name, self._link_of(name), []))
            blocks[-1].items.append((data, meta))
            blocks[-1].tagged.append((data, tagged))
        # bad data is refused before the first block is spooled, not between blocks
        for block in blocks:
            block.prepared = block.link._prepare_many(block.name, block.tagged)
        return blocks

    def _commit_blocks(
        self,
        stream: str,
        spooled: list[bytes],
        blocks: list[_Block],
        points: list[tuple[str, bytes]],
    ) -> list[int]:
        """One commit per block, each with the series' record; the last completes the call."""
        series = self._series[stream]
        seqs: list[int] = []
        for n, block in enumerate(blocks):
            last = n == len(blocks) - 1
            if not last:  # a crash before the last commit leaves these to recognize
                spooled = spooled + [
                    fingerprint(data, meta, self._max_meta) for data, meta in block.items
                ]
            record = SeriesRecord(
                series.images + len(block.items), self._next_stamp(), [] if last else spooled
            )
            point = [(record_key(stream), record.encode())]
            seqs += self.commit(block.link, block.prepared, point + (points if last else []))
            # an error before the next commit leaves the call for the caller to send again
            series = self._series[stream] = record
        return seqs

    def commit(
        self, link: Producer, prepared: list[Any], points: list[tuple[str, bytes]]
    ) -> list[int]:
        """One spool commit on ``link`` (a checkpoint alone when ``prepared`` is empty)."""
        return link._commit_prepared(prepared, points)

    def finish(self, stream: str) -> None:
        """``stream`` is finished: nothing of it is sent again."""
        with self._lock(stream):
            if stream in self._series:
                self._series[stream].spooled = []

    def series(self, stream: str) -> SeriesRecord:
        """The series' record: from memory, or (first use after a start) the newest spooled."""
        if stream not in self._series:
            found = [
                SeriesRecord.decode(raw)
                for link in self._links()
                if (raw := link.checkpoint(record_key(stream))) is not None
            ]
            record = max(found, key=lambda r: r.order, default=SeriesRecord(0, 0))
            self._stamp = max(self._stamp, record.stamp)
            self._series[stream] = record
        return self._series[stream]

    def _lock(self, stream: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(stream, threading.Lock())

    def _next_stamp(self) -> int:
        with self._locks_lock:
            self._stamp = max(time.time_ns(), self._stamp + 1)
            return self._stamp
