"""The receiver's LMDB stream store: indices, ordering, dedupe.

Layout (named LMDB databases in one environment)::

    streams    name                    -> StreamMeta (id, first, next, finished, bytes)
    senders    sender \\0 incarnation   -> last committed seq (8 bytes BE)
    records, payloads, blocks          -> the messages: small ones packed in blocks,
                                          large ones alone (hidra_ng.receiver.layout)

Which messages of a batch to store (duplicate, gap, accept: go-back-N per
sender incarnation) is decided by :func:`hidra_ng.receiver.admission.admit`,
which does no I/O; :mod:`hidra_ng.receiver.planning` gives the accepted ones
their indices against the pending state (committed plus planned), and
:meth:`Store.write` writes a planned batch, with the new last seq of each
incarnation, in one transaction. Indices are consecutive and never reused.

One thread plans (:meth:`Store.plan`: the receiver's ingest thread), one thread
writes (:meth:`Store.write`, retention: its committer thread), in the order
planned; :meth:`Store.append` does both in the caller's thread. Any thread may
read; readers see a batch once its commit is durable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec

from hidra_ng.errors import Gone, NotYetAvailable, StreamFinished
from hidra_ng.lmdbenv import Env
from hidra_ng.receiver import layout
from hidra_ng.receiver.planning import (
    AppendResult,
    Committed,
    Incoming,
    Pending,
    Planned,
    StreamMeta,
    plan,
    sender_key,
)
from hidra_ng.receiver.retention import plan_retention
from hidra_ng.wire.protocol import StreamInfo, encode_body

log = logging.getLogger(__name__)

#: messages removed per retention transaction
RETENTION_BATCH = 20_000
_SEQ = struct.Struct(">Q")


class Store:
    """Streams of messages with consecutive indices, kept in LMDB."""

    DBS = ("streams", "records", "payloads", "senders", "blocks")

    def __init__(self, path: Path, *, map_bytes: int = 1 << 30) -> None:
        self.env = Env(Path(path), self.DBS, sync=True, map_bytes=map_bytes)
        self._db = self.env.dbs
        self._lock = threading.Lock()  # guards the in-memory mirror below
        self._streams: dict[str, StreamMeta] = {}
        self._senders: dict[bytes, int] = {}
        self._emptied: set[str] = set()  # streams retention emptied, for drain_emptied
        self._load()
        self.pending = Pending(self._meta, self._committed_seq, lambda: self._next_id)

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        dec = msgspec.msgpack.Decoder(StreamMeta)
        with self.env.read() as txn:
            for name, value in txn.cursor(self._db["streams"]):
                self._streams[bytes(name).decode()] = dec.decode(value)
            for key, value in txn.cursor(self._db["senders"]):
                self._senders[bytes(key)] = _SEQ.unpack(value)[0]
        self._next_id = max((m.id for m in self._streams.values()), default=-1) + 1
        log.info(
            "store at %s opened: %d streams, %d sender incarnations",
            self.env.path,
            len(self._streams),
            len(self._senders),
        )

    def last_seq(self, sender: str, incarnation: int) -> int:
        """Highest committed seq of a sender incarnation, -1 if none."""
        with self._lock:
            return self._senders.get(sender_key(sender, incarnation), -1)

    def _committed_seq(self, key: bytes) -> int | None:
        with self._lock:
            return self._senders.get(key)

    # ----------------------------------------------------------------- writes

    def plan(self, batch: Sequence[Incoming], now: float | None = None) -> Planned:
        """Give ``batch`` its indices and Records after everything planned before (the
        planning thread); nothing is written. ``Record.stored`` is ``now`` (default: the
        clock, once per plan)."""
        return self.pending.plan(batch, now)

    def replan(self, items: Sequence[Incoming], now: float | None = None) -> Planned:
        """Plan ``items`` against the committed state alone (the writing thread, to commit
        part of a planned batch whose commit failed: each message gets the same index)."""
        return plan(items, self._meta, self._committed_seq, self._next_id, now)

    def settle(self) -> None:
        """Nothing planned is in flight: plan against the committed state again."""
        self.pending.settle()

    def write(self, planned: Planned) -> AppendResult:
        """Write a planned batch in one transaction with one fsync; return what it did.

        Batches are written in the order planned. Readers see the batch once this
        returns. Raises :class:`~hidra_ng.errors.StorageError` (nothing written, the
        committed state unchanged) when the commit fails.
        """
        if not planned.senders:
            return planned.result  # only duplicates and gaps: nothing to write
        with self._lock:  # retention may have moved a stream's first index and bytes
            metas = {
                name: _extent(self._streams.get(name), meta, planned.added[name])
                for name, meta in planned.streams.items()
            }

        def fill(txn) -> None:
            for name, meta in metas.items():
                txn.put(name.encode(), encode_body(meta), db=self._db["streams"])
            for key, seq in planned.senders.items():
                txn.put(key, _SEQ.pack(seq), db=self._db["senders"])
            ids = {name: meta.id for name, meta in planned.streams.items()}
            layout.put_committed(txn, self._db, planned.result.committed, ids)

        self.env.write(fill)
        with self._lock:
            self._streams.update(metas)
            self._senders.update(planned.senders)
        self._next_id = max(self._next_id, planned.next_id)
        return planned.result

    def append(
        self,
        batch: Sequence[Incoming],
        now: float | None = None,
        before_commit: Callable[[list[Committed]], None] | None = None,
    ) -> AppendResult:
        """Plan and write a batch in the caller's thread, with nothing else in flight.

        ``before_commit(committed)`` runs in between: the frames have their indices
        and Records, nothing is written yet (where the receiver publishes them live).
        """
        planned = self.plan(batch, now)
        if before_commit is not None:
            before_commit(planned.result.committed)
        try:
            return self.write(planned)
        except BaseException:
            self.settle()  # this batch was all that was in flight
            raise

    # ------------------------------------------------------------------ reads

    def _meta(self, stream: str) -> StreamMeta | None:
        with self._lock:
            return self._streams.get(stream)

    def info(self, stream: str) -> StreamInfo:
        meta = self._meta(stream)
        if meta is None:
            raise NotYetAvailable(f"stream {stream!r} has no messages yet")
        return _info(stream, meta)

    def streams(self) -> list[StreamInfo]:
        with self._lock:
            items = sorted(self._streams.items())
        return [_info(name, meta) for name, meta in items]

    def next_index(self, stream: str) -> int:
        meta = self._meta(stream)
        return 0 if meta is None else meta.next

    def is_finished(self, stream: str) -> bool:
        meta = self._meta(stream)
        return meta is not None and meta.finished

    def check_index(self, stream: str, index: int) -> StreamMeta:
        """Raise the error a reader of ``index`` should get, if any; else the stream's meta."""
        if index < 0:
            raise Gone(f"index {index} of stream {stream!r} is negative; indices start at 0")
        meta = self._meta(stream)
        if meta is None or index >= meta.next:
            if meta is not None and meta.finished:
                raise StreamFinished(
                    f"stream {stream!r} is finished; its last index is {meta.next - 1},"
                    f" index {index} will never be written"
                )
            raise NotYetAvailable(
                f"index {index} of stream {stream!r} is not written yet"
                f" (next index is {0 if meta is None else meta.next})"
            )
        if index < meta.first:
            raise Gone(
                f"index {index} of stream {stream!r} was removed by retention;"
                f" the first stored index is {meta.first}"
            )
        return meta

    def read(self, stream: str, index: int) -> tuple[bytes, bytes]:
        """Copies of the encoded Record and payload of one stored message."""
        with self.reader(stream) as read:
            record, payload = read(index)
            return record, bytes(payload)

    @contextlib.contextmanager
    def reader(self, stream: str) -> Iterator[layout.StreamReader]:
        """``read(index)`` -> (Record copy, payload) of several indices in one read transaction
        (and ``read.run(index, limit)``: consecutive ones of a block at once).

        The payload is a view of the map, valid only inside the block: copy it
        (or send it with zmq's copy) before the block ends.
        """
        visible = self.next_index(stream)  # first: the read holds every index below it
        with self.env.read() as txn:
            finder = layout.Finder(txn, self._db)
            yield layout.StreamReader(finder, stream, self.check_index, visible)

    def select(
        self, stream: str, predicate: Callable[[tuple], object], start: int, stop: int, limit: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """(index, record) of stored messages in ``[start, stop)`` whose (meta, index,
        stored, created) match, at most ``limit``; and the first index not examined.

        Examines at most ``stop - start`` records, in one read transaction; reads only
        the records, never the payloads.
        """
        meta = self._meta(stream)
        if meta is None:
            raise NotYetAvailable(f"stream {stream!r} has no messages yet")
        first = max(start, meta.first)
        if first >= stop:
            return [], max(start, stop)
        with self.env.read() as txn:
            return layout.select(txn, self._db, meta.id, predicate, first, stop, limit)

    # -------------------------------------------------------------- retention

    def drain_emptied(self) -> list[str]:
        """Streams that retention emptied since the last call (their metrics can go)."""
        with self._lock:
            emptied, self._emptied = sorted(self._emptied), set()
        return emptied

    def stored_bytes(self) -> int:
        with self._lock:
            return sum(m.bytes for m in self._streams.values())

    def enforce_retention(
        self,
        max_bytes: int = 0,
        max_age_seconds: float = 0.0,
        now: float | None = None,
        max_delete: int = RETENTION_BATCH,
    ) -> int:
        """Remove the oldest messages until within the limits (0: no limit); returns how many.

        Age: every message stored before ``now - max_age_seconds``. Size: the oldest
        messages of the oldest streams (by creation) until the payload bytes fit.
        Indices are never reused: a removed index reads as ``Gone``. At most
        ``max_delete`` messages go per call (one transaction), so a writer thread
        can interleave commits; call again while it returns ``max_delete``.
        """
        cutoff = (time.time() if now is None else now) - max_age_seconds
        with self._lock:
            order = sorted(self._streams.items(), key=lambda item: item[1].id)
            metas = {name: msgspec.structs.replace(meta) for name, meta in order}
        total = sum(m.bytes for m in metas.values())
        if not max_age_seconds and (not max_bytes or total <= max_bytes):
            return 0
        with self.env.read() as txn:
            plan = plan_retention(
                txn, self._db, metas, total, max_bytes, max_age_seconds and cutoff, max_delete
            )
        if not plan.removed:
            return 0

        def fill(txn) -> None:
            for key in plan.alone:
                txn.delete(key, db=self._db["records"])
                txn.delete(key, db=self._db["payloads"])
            for key in plan.blocks:
                txn.delete(key, db=self._db["blocks"])
            for name in plan.touched:
                txn.put(name.encode(), encode_body(metas[name]), db=self._db["streams"])

        self.env.write(fill)
        with self._lock:
            for name in plan.touched:
                self._streams[name] = metas[name]
                if metas[name].first >= metas[name].next:
                    self._emptied.add(name)
        log.info("retention removed %d messages from %d streams", plan.removed, len(plan.touched))
        return plan.removed

    def read_range(
        self, stream: str, start: int, stop: int, max_frames: int, max_bytes: int
    ) -> list[tuple[int, bytes, bytes]]:
        """Copies of (index, record, payload) from ``start`` up to ``stop`` (exclusive).

        At least one frame is returned when ``start`` is stored, even one larger
        than ``max_bytes``; fewer when the limits are reached.
        """
        meta = self.check_index(stream, start)
        out: list[tuple[int, bytes, bytes]] = []
        total = 0
        with self.env.read() as txn:
            rows = layout.scan(txn, self._db, meta.id, start)
            head = next(rows, None)
            if head is None or head[0] != start:
                raise Gone(f"index {start} of stream {stream!r} was removed by retention")
            for index, record, payload, _ in itertools.chain([head], rows):
                if index != start + len(out) or index >= stop or len(out) >= max_frames:
                    break  # a gap: removed while we read, the next call reports Gone
                size = len(payload)  # type: ignore[arg-type]  # scanned with payloads
                if out and total + size > max_bytes:
                    break
                out.append((index, bytes(record), bytes(payload)))  # type: ignore[arg-type]
                total += size
        return out

    def close(self) -> None:
        self.env.close()


def _extent(committed: StreamMeta | None, planned: StreamMeta, added: int) -> StreamMeta:
    """A stream's meta after a commit: planned next index and finish, committed first index
    (retention moves it meanwhile) and bytes, plus the bytes added."""
    if committed is None:
        return StreamMeta(planned.id, 0, planned.next, planned.finished, added)
    return StreamMeta(
        committed.id, committed.first, planned.next, planned.finished, committed.bytes + added
    )


def _info(name: str, meta: StreamMeta) -> StreamInfo:
    return StreamInfo(
        name=name,
        first=meta.first,
        last=meta.next - 1 if meta.next else None,
        count=meta.next - meta.first,
        bytes=meta.bytes,
        finished=meta.finished,
    )
