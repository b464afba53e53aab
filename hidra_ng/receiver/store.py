"""The receiver's LMDB stream store: indices, ordering, dedupe.

Layout (named LMDB databases in one environment)::

    streams    name                    -> StreamMeta (id, first, next, finished, bytes)
    records    stream id | index (BE)  -> Record (msgpack, small: metadata queries read only this)
    payloads   stream id | index (BE)  -> payload bytes as received (absent when empty)
    senders    sender \\0 incarnation   -> last committed seq (8 bytes BE)

Which messages of a batch to store (duplicate, gap, accept: go-back-N per
sender incarnation) is decided by :func:`hidra_ng.receiver.admission.admit`,
which does no I/O; the store writes what it accepted, with the new last seq of
each incarnation, in one transaction. Indices are assigned at commit, so they
are consecutive and never reused.

One writer thread calls :meth:`Store.append`; any thread may read.
"""

from __future__ import annotations

import contextlib
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
from hidra_ng.receiver.admission import admit
from hidra_ng.wire.protocol import (
    Envelope,
    Header,
    Payload,
    Record,
    StreamInfo,
    decode_meta,
    encode_body,
)

log = logging.getLogger(__name__)

_KEY = struct.Struct(">IQ")
#: messages removed per retention transaction
RETENTION_BATCH = 20_000
_SEQ = struct.Struct(">Q")


class StreamMeta(msgspec.Struct, array_like=True):
    id: int
    first: int
    next: int
    finished: bool
    bytes: int


def frame_key(stream_id: int, index: int) -> bytes:
    return _KEY.pack(stream_id, index)


class _Appender:
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

    DBS = ("streams", "records", "payloads", "senders")

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

    def append(self, batch: Sequence[Incoming], now: float | None = None) -> AppendResult:
        """Store a batch in one transaction with one fsync; return what happened.

        ``Record.stored`` is the clock when every write of the transaction is done,
        just before its commit (``now`` in tests).
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
        streams, writes, next_id = self._place([batch[i] for i in plan.accepted], result.touched)

        def fill(txn) -> list[bytes]:
            return self._write(txn, streams, senders, writes, result.touched, now)

        encoded = self.env.write(fill)
        result.committed = [
            Committed(stream, index, record, payload)
            for (stream, index, _, _, payload), record in zip(writes, encoded, strict=True)
        ]
        with self._lock:
            self._streams.update(streams)
            self._senders.update(senders)
        self._next_id = next_id
        return result

    def _place(
        self, accepted: list[Incoming], touched: set[str]
    ) -> tuple[dict[str, StreamMeta], list[_Write], int]:
        """Give each accepted message its stream's next index (on copies of the mirrors)."""
        streams: dict[str, StreamMeta] = {}
        writes: list[_Write] = []
        next_id = self._next_id
        for item in accepted:
            hdr = item.header
            meta = streams.get(hdr.stream)
            if meta is None:
                known = self._streams.get(hdr.stream)
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
        records, payloads = self._db["records"], self._db["payloads"]
        at_end = _Appender(txn, payloads)
        for _, _, key, _, payload in writes:
            if len(payload):
                at_end.put(key, payload)
        for name in touched:
            txn.put(name.encode(), encode_body(streams[name]), db=self._db["streams"])
        for key, seq in senders.items():
            txn.put(key, _SEQ.pack(seq), db=self._db["senders"])
        stored = time.time() if now is None else now  # the payloads are in: commit time
        encoded = []
        at_end = _Appender(txn, records)
        for _, _, key, fields, payload in writes:
            record = encode_body(Record(*fields, stored, len(payload)))  # type: ignore[call-arg]
            at_end.put(key, record)
            encoded.append(record)
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
        records, payloads = self._db["records"], self._db["payloads"]
        with self.env.read() as txn:

            def read(index: int) -> tuple[bytes, memoryview]:
                key = frame_key(self.check_index(stream, index).id, index)
                record = txn.get(key, db=records)
                if record is None:
                    raise Gone(f"index {index} of stream {stream!r} was removed by retention")
                payload = txn.get(key, db=payloads)
                return bytes(record), memoryview(b"") if payload is None else payload  # type: ignore[return-value]

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
        dec = msgspec.msgpack.Decoder(Record)
        out: list[tuple[int, bytes]] = []
        position = max(start, meta.first)
        if position >= stop:
            return out, max(start, stop)
        with self.env.read() as txn:
            cursor = txn.cursor(db=self._db["records"])
            if not cursor.set_range(frame_key(meta.id, position)):
                return out, stop
            for key, value in cursor:
                stream_id, index = _KEY.unpack(key)
                if stream_id != meta.id or index >= stop:
                    break
                record = dec.decode(value)
                row = (decode_meta(record.meta), index, record.stored, record.created)
                if predicate(row):
                    out.append((index, bytes(value)))
                    if len(out) >= limit:
                        return out, index + 1
        return out, stop

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
        dec = msgspec.msgpack.Decoder(Record)
        doomed: list[bytes] = []
        touched: set[str] = set()
        with self.env.read() as txn:
            records = txn.cursor(db=self._db["records"])
            for name, meta in metas.items():
                if not records.set_range(frame_key(meta.id, meta.first)):
                    continue
                for key, value in records:
                    stream_id, index = _KEY.unpack(key)
                    if stream_id != meta.id or len(doomed) >= max_delete:
                        break
                    record = dec.decode(value)
                    too_old = max_age_seconds and record.stored < cutoff
                    too_big = max_bytes and total > max_bytes
                    if not (too_old or too_big):
                        break
                    doomed.append(bytes(key))
                    meta.first = index + 1
                    meta.bytes -= record.nbytes
                    total -= record.nbytes
                    touched.add(name)
        if not doomed:
            return 0

        def fill(txn) -> None:
            for key in doomed:
                txn.delete(key, db=self._db["records"])
                txn.delete(key, db=self._db["payloads"])
            for name in touched:
                txn.put(name.encode(), encode_body(metas[name]), db=self._db["streams"])

        self.env.write(fill)
        with self._lock:
            for name in touched:
                self._streams[name] = metas[name]
                if metas[name].first >= metas[name].next:
                    self._emptied.add(name)
        log.info("retention removed %d messages from %d streams", len(doomed), len(touched))
        return len(doomed)

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
        records_db, payloads_db = self._db["records"], self._db["payloads"]
        with self.env.read() as txn:
            cursor = txn.cursor(db=records_db)
            if not cursor.set_key(frame_key(meta.id, start)):
                raise Gone(f"index {start} of stream {stream!r} was removed by retention")
            for index in range(start, stop):
                if len(out) >= max_frames:
                    break
                key = frame_key(meta.id, index)
                if cursor.key() != key:
                    break  # removed while we read: the next call reports Gone
                payload = txn.get(key, db=payloads_db)
                size = 0 if payload is None else len(payload)
                if out and total + size > max_bytes:
                    break
                out.append(
                    (index, bytes(cursor.value()), b"" if payload is None else bytes(payload))
                )
                total += size
                if not cursor.next():
                    break
        return out

    def close(self) -> None:
        self.env.close()


def _info(name: str, meta: StreamMeta) -> StreamInfo:
    return StreamInfo(
        name=name,
        first=meta.first,
        last=meta.next - 1 if meta.next else None,
        count=meta.next - meta.first,
        bytes=meta.bytes,
        finished=meta.finished,
    )
