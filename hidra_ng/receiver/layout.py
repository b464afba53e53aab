"""Where the store keeps each message: a value of its own, or a block of small ones (ADR 0004).

Tables of messages (named LMDB databases of the store's environment)::

    records   stream id | index (BE)       -> Record (msgpack) of a message kept alone
    payloads  stream id | index (BE)       -> its payload (absent when empty)
    blocks    stream id | last index (BE)  -> block (hidra_ng.wire.block) of the Records
                                              and payloads of consecutive small messages
                                              of one stream, written by one commit

A message is in exactly one of the two places. Payloads of 64 KiB and more
(``PACK_BELOW_BYTES``) are kept alone, as are all messages of a store written
before blocks existed; a commit packs each run of consecutive small messages
of a stream into blocks. A block is keyed by its *last* index, so the block
holding index ``i`` is the first key at or after ``(stream id, i)``: one
cursor ``set_range``, O(log n), then two fixed-size reads inside the block.

This module owns the keys and the reads and writes of these tables; the
:class:`~hidra_ng.receiver.store.Store` owns the transactions, the streams'
state and the errors its callers see.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from hidra_ng.errors import Gone, HidraError, NotYetAvailable
from hidra_ng.receiver.planning import Committed
from hidra_ng.wire.block import Block, pack, packable, runs
from hidra_ng.wire.protocol import Record, decode_meta

KEY = struct.Struct(">IQ")
EMPTY = memoryview(b"")

#: (index, Record, payload or None when not asked for, block key or None when alone)
Entry = tuple[int, memoryview, memoryview | None, bytes | None]


def frame_key(stream_id: int, index: int) -> bytes:
    return KEY.pack(stream_id, index)


class Appender:
    """Puts into one table of a write transaction, appending when the key is the highest.

    LMDB splits a full page in the middle, which leaves pages of keys written in
    order half empty: 1 KiB values took 2 per 4 KiB page instead of 3. With
    ``append=True`` it fills the last page instead. Keys of the newest stream
    (the usual case) are the highest; others are put as usual.
    """

    def __init__(self, txn, db) -> None:
        self.txn, self.db = txn, db
        cursor = txn.cursor(db=db)
        self.last = bytes(cursor.key()) if cursor.last() else b""

    def put(self, key: bytes, value) -> None:
        if key > self.last:
            self.txn.put(key, value, db=self.db, append=True)
            self.last = key
        else:
            self.txn.put(key, value, db=self.db)


def put_committed(txn, dbs: dict, committed: Sequence[Committed], ids: dict[str, int]) -> None:
    """Put the messages of one commit (in index order per stream; ``ids``: stream -> id).

    Messages of 64 KiB and more are kept alone (payload and Record); each run of
    consecutive small messages of a stream becomes blocks. Keys are made per
    block and per message kept alone, lists per stream: no step per message
    beyond those lists.
    """
    if len(ids) == 1:  # one stream: the usual commit
        by_stream: dict[str, Sequence[Committed]] = dict.fromkeys(ids, committed)
    else:
        grouped: dict[str, list[Committed]] = {}
        for item in committed:
            group = grouped.get(item.stream)
            if group is None:
                grouped[item.stream] = [item]
            else:
                group.append(item)
        by_stream = dict(grouped)
    alone: list[tuple[bytes, bytes, memoryview | bytes]] = []
    blocks: list[tuple[bytes, bytes]] = []
    for name, items in by_stream.items():
        if not items:
            continue
        sid = ids[name]
        sizes = [len(c.payload) for c in items]
        for start, stop in _cuts([c.index for c in items], sizes):
            last = items[stop - 1]
            key = frame_key(sid, last.index)
            if stop - start == 1 and not packable(sizes[start]):
                alone.append((key, last.record, last.payload))
                continue
            part = items[start:stop]
            blocks.append((key, pack([c.record for c in part], [c.payload for c in part])))
    if alone:
        at_end = Appender(txn, dbs["payloads"])
        for key, _, payload in alone:
            at_end.put(key, payload)  # never empty: only messages of 64 KiB and more
        at_end = Appender(txn, dbs["records"])
        for key, record, _ in alone:
            at_end.put(key, record)
    if blocks:
        at_end = Appender(txn, dbs["blocks"])
        for key, value in sorted(blocks) if len(blocks) > 1 else blocks:
            at_end.put(key, value)


def _cuts(indices: list[int], sizes: list[int]):
    """Runs of :func:`~hidra_ng.wire.block.runs`, also cut where indices are not consecutive."""
    if indices[-1] - indices[0] == len(indices) - 1:  # consecutive: the usual case
        yield from runs(sizes)
        return
    start = 0
    for i in range(1, len(indices) + 1):
        if i == len(indices) or indices[i] != indices[i - 1] + 1:
            for a, b in runs(sizes[start:i]):
                yield start + a, start + b
            start = i


#: consecutive messages of one block: (Records, payload sizes, payloads joined), views
Run = tuple[list[memoryview], list[int], memoryview]


class Finder:
    """Reads single messages in one read transaction, keeping the last block it decoded."""

    def __init__(self, txn, dbs: dict) -> None:
        self.txn, self.dbs = txn, dbs
        self._cursor = txn.cursor(db=dbs["blocks"])
        self._stream_id, self._first = -1, 0
        self._block: Block | None = None

    def find(self, stream_id: int, index: int) -> tuple[memoryview, memoryview] | None:
        """(Record, payload) views of a stored message, None when it is not there."""
        block = self._block
        if (
            block is not None
            and stream_id == self._stream_id
            and 0 <= index - self._first < block.count
        ):
            return block.entry(index - self._first)
        key = frame_key(stream_id, index)
        cursor = self._cursor
        found, value = cursor.item() if cursor.set_range(key) else (b"", b"")
        if found[:4] == key[:4]:
            last = KEY.unpack(found)[1]
            block = Block(value, f"block {stream_id}:{last}")
            first = last - block.count + 1
            if index >= first:
                self._stream_id, self._first, self._block = stream_id, first, block
                return block.entry(index - first)
        record = self.txn.get(key, db=self.dbs["records"])
        if record is None:
            return None
        payload = self.txn.get(key, db=self.dbs["payloads"])
        return record, EMPTY if payload is None else payload

    def run(self, stream_id: int, index: int, limit: int) -> Run | None:
        """Up to ``limit`` messages from ``index`` on in the block that holds it, as views;
        a message kept alone is a run of one. None when ``index`` is not there.
        """
        found = self.find(stream_id, index)
        if found is None:
            return None
        block, j = self._block, index - self._first
        if block is not None and stream_id == self._stream_id and 0 <= j < block.count:
            return block.run(j, min(block.count, j + limit))
        record, payload = found
        return [record], [len(payload)], payload


class StreamReader:
    """Messages of one stream in one read transaction (``Store.reader``).

    ``visible``: the stream's next index read before the transaction began. The
    store's meta moves once a commit is done, so the transaction holds every
    index below it, and may miss newer ones that the meta already shows: those
    are not written yet as far as this read goes, never "removed".
    """

    def __init__(
        self, finder: Finder, stream: str, check: Callable[[str, int], Any], visible: int
    ) -> None:
        self.finder, self.stream, self.visible = finder, stream, visible
        #: the stream's meta for a reader of an index, or the error it should get
        self.check = check

    def __call__(self, index: int) -> tuple[bytes, memoryview]:
        """(Record copy, payload view) of ``index``; Gone once retention removed it."""
        found = self.finder.find(self.check(self.stream, index).id, index)
        if found is None:
            raise self._missing(index)
        return bytes(found[0]), found[1]

    def run(self, index: int, limit: int) -> Run:
        """Up to ``limit`` messages from ``index`` on (a run of one unless in a block)."""
        run = self.finder.run(self.check(self.stream, index).id, index, limit)
        if run is None:
            raise self._missing(index)
        return run

    def _missing(self, index: int) -> HidraError:
        if index >= self.visible:  # committed after this read began
            return NotYetAvailable(
                f"index {index} of stream {self.stream!r} is not written yet"
                f" (next index is {self.visible})"
            )
        return Gone(f"index {index} of stream {self.stream!r} was removed by retention")


def scan(txn, dbs: dict, stream_id: int, start: int, *, payloads: bool = True) -> Iterator[Entry]:
    """Stored messages of a stream from index ``start`` on, in index order (both places).

    A removed index is simply absent: callers that need consecutive indices
    check them.
    """
    alone = _alone(txn, dbs, stream_id, start, payloads)
    packed = _packed(txn, dbs, stream_id, start)
    return heapq.merge(alone, packed, key=lambda entry: entry[0])


def _alone(txn, dbs: dict, stream_id: int, start: int, payloads: bool) -> Iterator[Entry]:
    cursor = txn.cursor(db=dbs["records"])
    if not cursor.set_range(frame_key(stream_id, start)):
        return
    payload_db = dbs["payloads"]
    for key, record in cursor:
        found, index = KEY.unpack(key)
        if found != stream_id:
            return
        payload = None
        if payloads:
            payload = txn.get(key, db=payload_db)
            payload = EMPTY if payload is None else payload
        yield index, record, payload, None


def _packed(txn, dbs: dict, stream_id: int, start: int) -> Iterator[Entry]:
    cursor = txn.cursor(db=dbs["blocks"])
    if not cursor.set_range(frame_key(stream_id, start)):
        return
    for key, value in cursor:
        found, last = KEY.unpack(key)
        if found != stream_id:
            return
        block = Block(value, f"block {found}:{last}")
        first = last - block.count + 1
        skip = max(0, start - first)
        block_key = bytes(key)
        for j, (record, payload) in enumerate(block.entries(skip), start=first + skip):
            yield j, record, payload, block_key


_record_decoder = msgspec.msgpack.Decoder(Record)


def select(
    txn,
    dbs: dict,
    stream_id: int,
    predicate: Callable[[tuple], object],
    start: int,
    stop: int,
    limit: int,
) -> tuple[list[tuple[int, bytes]], int]:
    """(index, record) of the messages in ``[start, stop)`` whose (meta, index, stored,
    created) match, at most ``limit``; and the first index not examined.

    Examines at most ``stop - start`` records; reads only the records, never the payloads.
    """
    out: list[tuple[int, bytes]] = []
    if start >= stop:
        return out, stop
    for index, value, _, _ in scan(txn, dbs, stream_id, start, payloads=False):
        if index >= stop:
            break
        record = _record_decoder.decode(value)
        if predicate((decode_meta(record.meta), index, record.stored, record.created)):
            out.append((index, bytes(value)))
            if len(out) >= limit:
                return out, index + 1
    return out, stop
