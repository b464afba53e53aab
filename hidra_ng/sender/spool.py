"""The sender's durable LMDB spool: every message waits here until acknowledged.

Layout::

    state      b"sender" -> sender id, b"incarnation" -> 8 bytes, b"next_seq" -> 8 bytes,
               b"finished:" + stream -> b"" for streams this sender finished,
               b"checkpoint:" + name -> bytes (source positions, written with the messages)
    headers    seq (8 bytes BE) -> encoded protocol.Header
    payloads   seq (8 bytes BE) -> payload bytes (absent when empty)

Size: :attr:`Spool.bytes` counts the payloads and the encoded headers (with their
metadata) of the spooled messages, so metadata-only messages count against a
sender's ``max_spool_bytes`` too.

The incarnation is a random id made when the spool is created: a receiver
dedupes by (sender id, incarnation, seq), so a wiped spool that starts again
at seq 0 is a new incarnation, not a stream of duplicates.

Durability: with ``sync="always"`` every append commits with fsync before it
returns. With ``sync="batch"`` appends commit without fsync and a background
flush syncs every ``batch_seconds``; a crash of the machine (not of the
process) may lose the appends of the last interval.
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hidra_ng.errors import ConfigError
from hidra_ng.lmdbenv import Env
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


class Spool:
    """Durable, bounded queue of a sender's unacknowledged messages."""

    DBS = ("state", "headers", "payloads")

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
            count, nbytes, lowest = 0, 0, None
            cur = txn.cursor(db=self._db["headers"])
            if cur.first():
                lowest = _SEQ.unpack(cur.key())[0]
            count = txn.stat(self._db["headers"])["entries"]
            for name in ("headers", "payloads"):
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
        self.count = count
        self.bytes = nbytes
        #: lowest seq still spooled (== next_seq when empty)
        self.lowest = self.next_seq if lowest is None else lowest
        log.info(
            "spool at %s: sender %s, incarnation %x, %d messages (%d bytes) unacknowledged",
            self.env.path,
            sender_id,
            self.incarnation,
            count,
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
            encoded = [
                (_SEQ.pack(first + i), encode_body(_with_seq(h, first + i)), p)
                for i, (h, p) in enumerate(items)
            ]
            new_next = first + len(encoded)
            finish = list(finish)

            def fill(txn) -> None:
                for key, header, payload in encoded:
                    txn.put(key, header, db=self._db["headers"], append=True)
                    if len(payload):
                        txn.put(key, payload, db=self._db["payloads"], append=True)
                state = self._db["state"]
                txn.put(b"next_seq", _SEQ.pack(new_next), db=state)
                for stream in finish:
                    txn.put(b"finished:" + stream.encode(), b"", db=state)
                for name, value in _checkpoints(checkpoint):
                    txn.put(b"checkpoint:" + name.encode(), value, db=state)

            self.env.write(fill)
            self.next_seq = new_next
            self.count += len(encoded)
            self.bytes += sum(len(h) + len(p) for _, h, p in encoded)
            self.finished.update(finish)
            return list(range(first, new_next))

    def release(self, up_to: int) -> int:
        """Delete every message with seq <= ``up_to`` (acknowledged). Returns bytes freed."""
        with self._lock:
            if up_to < self.lowest:
                return 0
            stop = min(up_to + 1, self.next_seq)

            def fill(txn) -> tuple[int, int]:
                freed = removed = 0
                headers, payloads = self._db["headers"], self._db["payloads"]
                for seq in range(self.lowest, stop):
                    key = _SEQ.pack(seq)
                    # a view gives the size without copying a 4 MiB payload out to count it
                    payload = txn.get(key, db=payloads)
                    if payload is not None:
                        freed += len(payload)
                        txn.delete(key, db=payloads)
                    header = txn.get(key, db=headers)
                    if header is not None:
                        freed += len(header)
                        removed += 1
                        txn.delete(key, db=headers)
                return freed, removed

            freed, removed = self.env.write(fill, buffers=True)
            self.lowest = stop
            self.count -= removed
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
            headers = txn.cursor(db=self._db["headers"])
            payload_db = self._db["payloads"]
            if not headers.set_range(_SEQ.pack(start)):
                return out
            for key, header in headers:
                payload = txn.get(key, db=payload_db)
                size = 0 if payload is None else len(payload)
                if out and (len(out) >= max_count or total + size > max_bytes):
                    break
                out.append(
                    Outgoing(
                        _SEQ.unpack(key)[0],
                        bytes(header),
                        b"" if payload is None else bytes(payload),
                    )
                )
                total += size
        return out

    def read_views(self, txn, start: int, max_count: int, max_bytes: int) -> list[Outgoing]:
        """:meth:`read` in ``txn`` (``Env.hold()``): payloads are views of the map, no copy.

        The views are valid while ``txn`` is open (hidra_ng/sender/lending.py).
        """
        out: list[Outgoing] = []
        total = 0
        headers = txn.cursor(db=self._db["headers"])
        payload_db = self._db["payloads"]
        if not headers.set_range(_SEQ.pack(start)):
            return out
        for key, header in headers:
            payload = txn.get(key, db=payload_db)
            size = 0 if payload is None else len(payload)
            if out and (len(out) >= max_count or total + size > max_bytes):
                break
            out.append(Outgoing(_SEQ.unpack(key)[0], bytes(header), payload or b""))
            total += size
        return out

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
    # msgpack takes 1 byte for the placeholder seq 0 and at most 9 for a real one
    return len(payload) + len(encode_body(header)) + 8


def _with_seq(header: Header, seq: int) -> Header:
    return Header(
        header.stream,
        seq,
        header.payload,
        header.dtype,
        header.shape,
        header.compression,
        header.meta,
        header.created,
    )


def _prefixed(cursor, prefix: bytes):
    if cursor.set_range(prefix):
        for key, value in cursor:
            if not bytes(key).startswith(prefix):
                break
            yield key, value
