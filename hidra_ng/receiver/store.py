"""The receiver's LMDB stream store: indices, ordering, dedupe.

Layout (named LMDB databases in one environment)::

    streams    name                    -> StreamMeta (id, first, next, finished, bytes)
    senders    sender \\0 incarnation   -> last committed seq (8 bytes BE)
    records, payloads, blocks          -> the messages: small ones packed in blocks,
                                          large ones alone (hidra_ng.receiver.layout)

Which messages of a batch to store (duplicate, gap, accept: go-back-N per
sender incarnation) is decided by :func:`hidra_ng.receiver.admission.admit`,
which does no I/O; the store writes what it accepted, with the new last seq of
each incarnation, in one transaction. Indices are assigned at commit, so they
are consecutive and never reused.

One writer thread calls :meth:`Store.append`; any thread may read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hidra_ng.errors import Gone, NotYetAvailable, StreamFinished
from hidra_ng.lmdbenv import Env
from hidra_ng.receiver import layout
from hidra_ng.receiver.admission import admit
from hidra_ng.receiver.layout import frame_key
from hidra_ng.receiver.retention import plan_retention
from hidra_ng.wire.block import PACK_BELOW_BYTES as BIG
from hidra_ng.wire.protocol import (
    Envelope,
    Header,
    Payload,
    Record,
    StreamInfo,
    encode_body,
)

log = logging.getLogger(__name__)

#: messages removed per retention transaction
RETENTION_BATCH = 20_000
_SEQ = struct.Struct(">Q")


class StreamMeta(msgspec.Struct, array_like=True):
    id: int
    first: int
    next: int
    finished: bool
    bytes: int


def sender_key(sender: str, incarnation: int) -> bytes:
    return sender.encode() + b"\0" + _SEQ.pack(incarnation)


@dataclass(slots=True)
class Incoming:
    """One received message, not yet stored."""

    envelope: Envelope
    header: Header
    payload: memoryview | bytes  # the received buffer; stored without a Python copy


#: (stream, index, key, Record fields before ``stored``, payload)
_Write = tuple[str, int, bytes, tuple, memoryview | bytes]


@dataclass(slots=True)
class Committed:
    stream: str
    index: int
    record: bytes  # encoded Record
    payload: memoryview | bytes


@dataclass
class AppendResult:
    """What one group commit did."""

    committed: list[Committed] = field(default_factory=list)
    acks: dict[tuple[str, int], int] = field(default_factory=dict)  # (sender, inc) -> last seq
    gaps: dict[tuple[str, int], tuple[int, int]] = field(
        default_factory=dict
    )  # -> (expected, epoch)
    duplicates: int = 0
    touched: set[str] = field(default_factory=set)


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

    # ----------------------------------------------------------------- writes

    def append(
        self,
        batch: Sequence[Incoming],
        now: float | None = None,
        before_commit: Callable[[list[Committed]], None] | None = None,
    ) -> AppendResult:
        """Store a batch in one transaction with one fsync; return what happened.

        ``Record.stored`` is the clock when every write of the transaction is done,
        just before its commit (``now`` in tests). ``before_commit(committed)`` runs
        then, inside the transaction, before LMDB writes the pages and fsyncs (the
        receiver publishes live frames there); again if the transaction is retried.
        """
        # Only this (writer) thread mutates the mirrors, so it reads them without the
        # lock; changes are planned on copies and applied after the commit succeeded.
        result = AppendResult()
        plan = admit(
            ((item.envelope, item.header.seq) for item in batch),
            lambda who: self._senders.get(sender_key(*who)),
        )
        for sender, first, last in plan.behind:
            log.warning(
                "store is behind sender %s: seqs %d..%d were acknowledged before but"
                " are not here (store restored from an older copy?)",
                sender,
                first,
                last,
            )
        result.acks, result.gaps, result.duplicates = plan.acks, plan.gaps, plan.duplicates
        if not plan.accepted:
            return result  # only duplicates and gaps: nothing to write
        senders = {sender_key(*who): seq for who, seq in plan.last_seqs.items()}
        accepted = [batch[i] for i in plan.accepted]
        streams, writes, next_id = _place(accepted, self._streams, self._next_id, result.touched)

        def fill(txn) -> None:
            encoded = self._write(txn, streams, senders, writes, result.touched, now)
            result.committed = [
                Committed(stream, index, record, payload)
                for (stream, index, _, _, payload), record in zip(writes, encoded, strict=True)
            ]
            if before_commit is not None:
                before_commit(result.committed)

        self.env.write(fill)
        with self._lock:
            self._streams.update(streams)
            self._senders.update(senders)
        self._next_id = next_id
        return result

    def _write(
        self,
        txn,
        streams: dict[str, StreamMeta],
        senders: dict[bytes, int],
        writes: list[_Write],
        touched: set[str],
        now: float | None,
    ) -> list[bytes]:
        """The writes of one group commit; returns the encoded records."""
        layout.put_payloads(txn, self._db, [(w[2], w[4]) for w in writes if len(w[4]) >= BIG])
        for name in touched:
            txn.put(name.encode(), encode_body(streams[name]), db=self._db["streams"])
        for key, seq in senders.items():
            txn.put(key, _SEQ.pack(seq), db=self._db["senders"])
        stored = time.time() if now is None else now  # the payloads are in: commit time
        encoded = [
            encode_body(Record(*fields, stored, len(payload)))  # type: ignore[call-arg]
            for _, _, _, fields, payload in writes
        ]
        layout.put_records(
            txn,
            self._db,
            [(w[2], w[1], record, w[4]) for w, record in zip(writes, encoded, strict=True)],
        )
        return encoded

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
    def reader(self, stream: str) -> Iterator[Callable[[int], tuple[bytes, memoryview]]]:
        """``read(index)`` -> (Record copy, payload) of several indices in one read transaction.

        The payload is a view of the map, valid only inside the block: copy it
        (or send it with zmq's copy) before the block ends.
        """
        with self.env.read() as txn:
            finder = layout.Finder(txn, self._db)

            def read(index: int) -> tuple[bytes, memoryview]:
                found = finder.find(self.check_index(stream, index).id, index)
                if found is None:
                    raise Gone(f"index {index} of stream {stream!r} was removed by retention")
                return bytes(found[0]), found[1]

            yield read

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


def _place(
    accepted: list[Incoming], known_streams: dict[str, StreamMeta], next_id: int, touched: set[str]
) -> tuple[dict[str, StreamMeta], list[_Write], int]:
    """Give each accepted message its stream's next index (on copies of ``known_streams``)."""
    streams: dict[str, StreamMeta] = {}
    writes: list[_Write] = []
    for item in accepted:
        hdr = item.header
        meta = streams.get(hdr.stream)
        if meta is None:
            known = known_streams.get(hdr.stream)
            if known is not None:
                meta = msgspec.structs.replace(known)
            else:
                meta = StreamMeta(next_id, 0, 0, False, 0)
                next_id += 1
            streams[hdr.stream] = meta
        touched.add(hdr.stream)
        if hdr.payload == Payload.FINISH:
            meta.finished = True  # in touched: the api wakes its waiters
            continue
        fields = (
            item.envelope.sender,
            hdr.seq,
            hdr.payload,
            hdr.dtype,
            hdr.shape,
            hdr.compression,
            hdr.meta,
            hdr.created,
        )
        index = meta.next
        meta.next += 1
        meta.bytes += len(item.payload)
        writes.append((hdr.stream, index, frame_key(meta.id, index), fields, item.payload))
    return streams, writes, next_id


def _info(name: str, meta: StreamMeta) -> StreamInfo:
    return StreamInfo(
        name=name,
        first=meta.first,
        last=meta.next - 1 if meta.next else None,
        count=meta.next - meta.first,
        bytes=meta.bytes,
        finished=meta.finished,
    )
