"""The sender's durable LMDB spool: every message waits here until acknowledged.

Layout::

    state      b"sender" -> sender id, b"incarnation" -> 8 bytes, b"next_seq" -> 8 bytes,
               b"finished:" + stream -> b"" for streams this sender finished,
               b"checkpoint:" + name -> bytes (source positions, written with the messages),
               b"released" -> 8 bytes: every seq below it is acknowledged
    headers    seq (8 bytes BE) -> encoded protocol.Header      } a message kept alone:
    payloads   seq (8 bytes BE) -> payload bytes (absent when empty)   } 64 KiB and more
    batches    last seq (8 bytes BE) -> block (hidra_ng.wire.block) of the headers and
               payloads of consecutive small messages spooled by one append

A ``send_many`` of small messages is one put (ADR 0004); a batch is deleted
once every message in it is acknowledged (``released`` says which of a partly
acknowledged batch are; a restart resends nothing below it). Spools written
before batches existed hold every message alone and are read as they are.

Size: :attr:`Spool.bytes` counts the LMDB values of the spooled messages
(payloads, encoded headers with their metadata, block tables), so
metadata-only messages count against a sender's ``max_spool_bytes`` too; a
partly acknowledged batch counts whole until it is deleted.

The incarnation is a random id made when the spool is created: a receiver
dedupes by (sender id, incarnation, seq), so a wiped spool that starts again
at seq 0 is a new incarnation, not a stream of duplicates.

Durability: with ``sync="always"`` every append commits with fsync before it
returns. With ``sync="batch"`` appends commit without fsync and a background
flush syncs every ``batch_seconds``; a crash of the machine (not of the
process) may lose the appends of the last interval.
"""

from __future__ import annotations

import heapq
import logging
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from msgspec.structs import replace

from hidra_ng.errors import ConfigError
from hidra_ng.lmdbenv import Env
from hidra_ng.wire.block import Block, pack, packable, runs
from hidra_ng.wire.protocol import Header, encode_body

log = logging.getLogger(__name__)

_SEQ = struct.Struct(">Q")
SYNC_MODES = ("always", "batch")


@dataclass(slots=True)
class Outgoing:
    """A spooled message as read back for sending."""

    seq: int
    header: bytes  # encoded Header
    payload: bytes | memoryview  # a view of the map from read_views()


@dataclass(slots=True)
class SpooledRun:
    """Consecutive messages of one spool batch, as slices of its block (``read_run``)."""

    first: int  # seq of the first
    headers: memoryview  # their encoded Headers, joined
    sizes: list[int]  # payload sizes
    payloads: memoryview  # their payloads, joined: a view of the map

    def __len__(self) -> int:
        return len(self.sizes)


class Spool:
    """Durable, bounded queue of a sender's unacknowledged messages."""

    DBS = ("state", "headers", "payloads", "batches")

    def __init__(
        self,
        path: Path,
        sender_id: str,
        *,
        sync: str = "always",
        batch_seconds: float = 0.5,
        map_bytes: int = 1 << 30,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ConfigError(f"spool_sync {sync!r} is unknown; expected one of {SYNC_MODES}")
        self.sync_mode = sync
        self.env = Env(Path(path), self.DBS, sync=sync == "always", map_bytes=map_bytes)
        self._db = self.env.dbs
        self._lock = threading.RLock()  # serializes appends (seq assignment)
        try:
            self._load(sender_id)
        except BaseException:
            # LMDB refuses a second open of the same environment in one process, so an
            # environment left open here would make every later open of this spool fail.
            self.env.close()
            raise
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        if sync == "batch":
            self._flusher = threading.Thread(
                target=self._flush_loop, args=(batch_seconds,), name="spool-flush", daemon=True
            )
            self._flusher.start()

    def _load(self, sender_id: str) -> None:
        state = self._db["state"]
        with self.env.read() as txn:
            raw_owner = txn.get(b"sender", db=state)
            owner = None if raw_owner is None else bytes(raw_owner).decode()
            inc = txn.get(b"incarnation", db=state)
            nxt = txn.get(b"next_seq", db=state)
            self.finished = {
                bytes(k)[len(b"finished:") :].decode()
                for k, _ in _prefixed(txn.cursor(db=state), b"finished:")
            }
            released = txn.get(b"released", db=state)
            released = None if released is None else _SEQ.unpack(released)[0]
            lowest = _lowest(txn, self._db)
            nbytes = 0
            for name in ("headers", "payloads", "batches"):
                for _, value in txn.cursor(db=self._db[name]):
                    nbytes += len(value)
        if owner is not None and owner != sender_id:
            raise ConfigError(
                f"spool at {self.env.path} belongs to sender {owner!r}, not {sender_id!r};"
                " use that sender id or another spool_dir"
            )
        if inc is None:
            self.incarnation = secrets.randbits(63)
            self.next_seq = 0

            def init(txn) -> None:
                txn.put(b"sender", sender_id.encode(), db=state)
                txn.put(b"incarnation", _SEQ.pack(self.incarnation), db=state)
                txn.put(b"next_seq", _SEQ.pack(0), db=state)

            self.env.write(init)
        else:
            self.incarnation = _SEQ.unpack(inc)[0]
            self.next_seq = _SEQ.unpack(nxt)[0]  # type: ignore[arg-type]  # set with incarnation
        self.sender_id = sender_id
        self.bytes = nbytes
        #: lowest seq still spooled (== next_seq when empty)
        self.lowest = self.next_seq if lowest is None else lowest
        if released is not None:  # the acknowledged head of a partly released batch
            self.lowest = min(max(self.lowest, released), self.next_seq)
        self.count = self.next_seq - self.lowest
        log.info(
            "spool at %s: sender %s, incarnation %x, %d messages (%d bytes) unacknowledged",
            self.env.path,
            sender_id,
            self.incarnation,
            self.count,
            nbytes,
        )

    # ----------------------------------------------------------------- writes

    def append(
        self,
        items: Sequence[tuple[Header, memoryview | bytes]],
        *,
        finish: Iterable[str] = (),
        checkpoint: Checkpoints = None,
    ) -> list[int]:
        """Spool messages in one transaction; headers get their seq here. Returns the seqs.

        ``checkpoint``: one ``(name, value)`` or a list of them, written in the same commit.
        """
        with self._lock:
            first = self.next_seq
            heads = [encode_body(replace(h, seq=seq)) for seq, (h, _) in enumerate(items, first)]
            new_next = first + len(heads)
            finish = list(finish)

            values = _values(first, heads, [p for _, p in items])

            def fill(txn) -> None:
                for name, key, value in values:
                    txn.put(key, value, db=self._db[name], append=True)
                state = self._db["state"]
                txn.put(b"next_seq", _SEQ.pack(new_next), db=state)
                for stream in finish:
                    txn.put(b"finished:" + stream.encode(), b"", db=state)
                for name, value in _checkpoints(checkpoint):
                    txn.put(b"checkpoint:" + name.encode(), value, db=state)

            self.env.write(fill)
            self.next_seq = new_next
            self.count += len(heads)
            self.bytes += sum(len(value) for _, _, value in values)
            self.finished.update(finish)
            return list(range(first, new_next))

    def release(self, up_to: int) -> int:
        """Delete every message with seq <= ``up_to`` (acknowledged). Returns bytes freed."""
        with self._lock:
            if up_to < self.lowest:
                return 0
            stop = min(up_to + 1, self.next_seq)

            def fill(txn) -> int:
                freed = sum(_delete_below(txn, self._db[name], stop) for name in self.DBS[1:])
                txn.put(b"released", _SEQ.pack(stop), db=self._db["state"])
                return freed

            freed = self.env.write(fill, buffers=True)
            self.count -= stop - self.lowest
            self.lowest = stop
            self.bytes -= freed
            return freed

    def try_release(self, up_to: int) -> int | None:
        """:meth:`release`, or None at once if another thread holds the spool (an append)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.release(up_to)
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ reads

    def read(self, start: int, max_count: int, max_bytes: int) -> list[Outgoing]:
        """Copies of spooled messages from ``start`` on, at least one if any is there."""
        out: list[Outgoing] = []
        total = 0
        with self.env.read() as txn:
            for seq, header, payload in _scan(txn, self._db, start):
                size = len(payload)
                if out and (len(out) >= max_count or total + size > max_bytes):
                    break
                out.append(Outgoing(seq, bytes(header), bytes(payload)))
                total += size
        return out

    def read_views(self, txn, start: int, max_count: int, max_bytes: int) -> list[Outgoing]:
        """:meth:`read` in ``txn`` (``Env.hold()``): payloads are views of the map, no copy.

        The views are valid while ``txn`` is open (hidra_ng/sender/lending.py).
        """
        out: list[Outgoing] = []
        total = 0
        for seq, header, payload in _scan(txn, self._db, start):
            size = len(payload)
            if out and (len(out) >= max_count or total + size > max_bytes):
                break
            out.append(Outgoing(seq, bytes(header), payload))
            total += size
        return out

    def read_run(self, txn, start: int, max_count: int, max_bytes: int) -> SpooledRun | None:
        """The messages from ``start`` on in its batch, in ``txn`` (``Env.hold()``), without
        a step per message: at most ``max_count`` and ``max_bytes`` of payload, at least
        one. None when ``start`` is not in a batch (kept alone, or not spooled).

        The views are valid while ``txn`` is open (hidra_ng/sender/lending.py).
        """
        cursor = txn.cursor(db=self._db["batches"])
        if not cursor.set_range(_SEQ.pack(start)):
            return None
        last = _SEQ.unpack(cursor.key())[0]
        block = Block(cursor.value(), f"spool batch {last}")
        first = last - block.count + 1
        if start < first:
            return None
        j = start - first
        headers, sizes, payloads = block.span(j, block.stop(j, max_count, max_bytes))
        return SpooledRun(start, headers, sizes, payloads)

    def checkpoint(self, name: str) -> bytes | None:
        with self.env.read() as txn:
            value = txn.get(b"checkpoint:" + name.encode(), db=self._db["state"])
            return None if value is None else bytes(value)

    # ------------------------------------------------------------------ close

    def _flush_loop(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.env.sync()
            except Exception:  # keep flushing; the next append reports a broken disk
                log.exception("spool flush failed")

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
            self.env.sync()
        self.env.close()


#: what ``append`` takes as checkpoints: none, one (name, value), or a list of them
Checkpoints = tuple[str, bytes] | list[tuple[str, bytes]] | None


def _checkpoints(checkpoint: Checkpoints) -> list[tuple[str, bytes]]:
    if checkpoint is None:
        return []
    return [checkpoint] if isinstance(checkpoint, tuple) else checkpoint


def entry_bytes(header: Header, payload: memoryview | bytes) -> int:
    """Spool bytes a message will take at most (its seq is not assigned yet)."""
    # msgpack takes 1 byte for the placeholder seq 0 and at most 9 for a real one; in a
    # batch a message adds 8 bytes to its table and a batch of one the 7 of its prefix
    return len(payload) + len(encode_body(header)) + 8 + 8 + 7


def entries_bytes(items: Sequence[tuple[Header, memoryview | bytes]]) -> int:
    """The sum of :func:`entry_bytes` of ``items``, with one encoding call for all headers."""
    if not items:
        return 0
    headers = encode_body([h for h, _ in items])  # a msgpack array: a prefix, then each header
    n = len(items)
    prefix = 1 if n < 16 else 3 if n < 1 << 16 else 5
    return sum(len(p) for _, p in items) + len(headers) - prefix + (8 + 8 + 7) * n


def _prefixed(cursor, prefix: bytes):
    if cursor.set_range(prefix):
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                break
            yield key, value


def _values(
    first: int, heads: list[bytes], payloads: list[memoryview | bytes]
) -> list[tuple[str, bytes, bytes]]:
    """(table, key, value) of appended messages from seq ``first``: small ones in batches."""
    out: list[tuple[str, bytes, bytes]] = []
    sizes = [len(p) for p in payloads]
    for start, stop in runs(sizes):
        key = _SEQ.pack(first + stop - 1)
        if stop - start == 1 and not packable(sizes[start]):
            out.append(("headers", key, heads[start]))
            out.append(("payloads", key, payloads[start]))  # type: ignore[arg-type]  # LMDB takes views
        else:
            out.append(("batches", key, pack(heads[start:stop], payloads[start:stop])))
    return out


def _delete_below(txn, db, stop: int) -> int:
    """Delete the values with keys below seq ``stop`` (a batch: its last seq); bytes freed."""
    freed = 0
    cursor = txn.cursor(db=db)
    found = cursor.first()
    while found and len(cursor.key()) and _SEQ.unpack(cursor.key())[0] < stop:
        freed += len(cursor.value())
        found = cursor.delete()
    return freed


def _lowest(txn, dbs: dict) -> int | None:
    """The lowest spooled seq (alone or in a batch), None when the spool is empty."""
    found = []
    cursor = txn.cursor(db=dbs["headers"])
    if cursor.first():
        found.append(_SEQ.unpack(cursor.key())[0])
    cursor = txn.cursor(db=dbs["batches"])
    if cursor.first():
        found.append(_SEQ.unpack(cursor.key())[0] - Block(cursor.value()).count + 1)
    return min(found, default=None)


def _scan(txn, dbs: dict, start: int) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(seq, header, payload) from ``start`` on, in seq order, alone and from batches."""
    return heapq.merge(_alone(txn, dbs, start), _batched(txn, dbs, start), key=lambda e: e[0])


def _alone(txn, dbs: dict, start: int) -> Iterator[tuple[int, memoryview, memoryview]]:
    headers = txn.cursor(db=dbs["headers"])
    if not headers.set_range(_SEQ.pack(start)):
        return
    for key, header in headers:
        payload = txn.get(key, db=dbs["payloads"])
        yield _SEQ.unpack(key)[0], header, memoryview(b"") if payload is None else payload


def _batched(txn, dbs: dict, start: int) -> Iterator[tuple[int, memoryview, memoryview]]:
    cursor = txn.cursor(db=dbs["batches"])
    if not cursor.set_range(_SEQ.pack(start)):
        return
    for key, value in cursor:
        block = Block(value, f"spool batch {_SEQ.unpack(key)[0]}")
        first = _SEQ.unpack(key)[0] - block.count + 1
        skip = max(0, start - first)
        for seq, (header, payload) in enumerate(block.entries(skip), start=first + skip):
            yield seq, header, payload
