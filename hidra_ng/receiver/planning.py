"""Giving a batch its indices before it is written: the ingest thread's half of a commit.

The receiver's ingest thread decides which messages of a batch to store
(:func:`~hidra_ng.receiver.admission.admit`), gives each accepted message its
stream's next index and encodes its Record here, against the *pending* state:
everything committed plus every batch planned and not committed yet. It then
publishes the frames live (SPEC G6) and hands the :class:`Planned` batch to the
committer thread (:mod:`hidra_ng.receiver.committer`), which writes it with
:meth:`~hidra_ng.receiver.store.Store.write` (one transaction, one fsync) while
the next batch is received and planned on top of it
(docs/adr/0010-committer-thread.md).

The pending state (:class:`Pending`) is an overlay over the store's committed
mirrors: the streams (id, next index, finished) and the last seq of each
sender incarnation that planned batches changed. It stays right because the
committer commits every batch handed to it, in order, with the indices it was
planned with: a failed commit is retried until it works, in parts re-planned
against the committed state (:func:`plan`), which gives each message the same
index, since admission and placement of a message depend only on the messages
before it. Once nothing is in flight the ingest thread drops the overlay
(:meth:`Pending.settle`).

``Record.stored`` is the receiver's clock when the batch is planned, one reading
per plan: the live frame and the stored one carry the same record.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from hidra_ng.receiver.admission import admit
from hidra_ng.wire.protocol import Envelope, Header, Payload

_encoder = msgspec.msgpack.Encoder()

log = logging.getLogger(__name__)

_SEQ = struct.Struct(">Q")


class StreamMeta(msgspec.Struct, array_like=True):
    id: int
    first: int
    next: int
    finished: bool
    bytes: int


def sender_key(sender: str, incarnation: int) -> bytes:
    return sender.encode() + b"\0" + _SEQ.pack(incarnation)


class Incoming(msgspec.Struct, gc=False):
    """One received message, not yet stored.

    A Struct, not a dataclass: one is made per message, and msgspec makes it in C
    (``gc=False``: nothing it holds can refer back to it).
    """

    envelope: Envelope
    header: Header
    payload: memoryview | bytes  # the received buffer; stored without a Python copy


class Committed(msgspec.Struct, gc=False):
    """A planned message with its index and Record (one per message, made in C)."""

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
    #: stream -> [messages, payload bytes, last index] of ``committed``, for the metrics
    stored: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Planned:
    """A batch with its indices and Records, to write in one transaction (Store.write).

    ``result`` is what the commit will report: ``committed`` (each frame with its
    index and record, published live before the commit), acks, gaps, duplicates
    and the touched streams.
    """

    items: list[Incoming]  # every message of the batch, in order: a failed commit re-plans them
    streams: dict[str, StreamMeta] = field(default_factory=dict)  # id, next, finished as planned
    added: dict[str, int] = field(default_factory=dict)  # payload bytes added per stream
    senders: dict[bytes, int] = field(default_factory=dict)  # sender key -> last seq
    next_id: int = 0  # the id of the next new stream after this batch
    nbytes: int = 0  # payload bytes of ``items`` (the commit limits count them)
    result: AppendResult = field(default_factory=AppendResult)

    def extend(self, later: Planned) -> None:
        """Take in a batch planned right after this one: one commit for both (group commit)."""
        self.items += later.items
        self.streams.update(later.streams)
        for name, nbytes in later.added.items():
            self.added[name] = self.added.get(name, 0) + nbytes
        self.senders.update(later.senders)
        self.next_id = later.next_id
        self.nbytes += later.nbytes
        result, more = self.result, later.result
        result.committed += more.committed
        result.acks.update(more.acks)
        result.gaps.update(more.gaps)
        result.duplicates += more.duplicates
        result.touched |= more.touched
        for name, (messages, nbytes, last) in more.stored.items():
            stored = result.stored.setdefault(name, [0, 0, last])
            stored[0] += messages
            stored[1] += nbytes
            stored[2] = last


def plan(
    batch: Sequence[Incoming],
    stream_of: Callable[[str], StreamMeta | None],
    seq_of: Callable[[bytes], int | None],
    next_id: int,
    now: float | None = None,
) -> Planned:
    """Admission and placement of ``batch`` against a state given by its lookups.

    ``stream_of(name)`` and ``seq_of(sender key)`` answer for the state the batch
    follows (None: unknown), ``next_id`` is the id of the next new stream. No I/O;
    nothing is changed but the returned plan (metas are copied before a change).
    """
    verdict = admit(
        [(item.envelope, item.header.seq) for item in batch],
        lambda who: seq_of(sender_key(*who)),
    )
    for sender, first, last in verdict.behind:
        log.warning(
            "store is behind sender %s: seqs %d..%d were acknowledged before but"
            " are not here (store restored from an older copy?)",
            sender,
            first,
            last,
        )
    planned = Planned(list(batch), next_id=next_id)
    planned.nbytes = sum([len(item.payload) for item in batch])
    result = planned.result
    result.acks, result.gaps, result.duplicates = verdict.acks, verdict.gaps, verdict.duplicates
    if verdict.accepted:
        planned.senders = {sender_key(*who): seq for who, seq in verdict.last_seqs.items()}
        stored = time.time() if now is None else now
        _place([batch[i] for i in verdict.accepted], stream_of, planned, stored)
    return planned


def _place(
    accepted: list[Incoming],
    stream_of: Callable[[str], StreamMeta | None],
    planned: Planned,
    stored: float,
) -> None:
    """Give each accepted message its stream's next index and its Record, in ``planned``.

    The loop is the receiver's per-message Python: one Record encoded,
    one Committed, nothing else (keys are made per block when it is written).
    """
    streams, added = planned.streams, planned.added
    result = planned.result
    append, encode = result.committed.append, _encoder.encode
    first_index: dict[str, int] = {}  # stream -> its first index in this plan
    name, meta = "", None
    for item in accepted:
        hdr = item.header
        if hdr.stream != name or meta is None:
            name = hdr.stream
            meta = streams.get(name) or _first_of(name, stream_of, planned)
            first_index.setdefault(name, meta.next)
        if hdr.payload == Payload.FINISH:
            meta.finished = True  # in touched: the api wakes its waiters
            continue
        payload = item.payload
        size = len(payload)
        # a Record's fields in order: Record is array_like, so a tuple encodes to the same
        # bytes, without making the struct first (tests/unit/test_test_ingest_batches.py compares)
        record = encode(
            (
                item.envelope.sender,
                hdr.seq,
                hdr.payload,
                hdr.dtype,
                hdr.shape,
                hdr.compression,
                hdr.meta,
                hdr.created,
                stored,
                size,
            )
        )
        index = meta.next
        meta.next = index + 1
        added[name] += size
        append(Committed(name, index, record, payload))
    for name, first in first_index.items():
        messages = streams[name].next - first
        if messages:
            result.stored[name] = [messages, added[name], first + messages - 1]


def _first_of(
    name: str, stream_of: Callable[[str], StreamMeta | None], planned: Planned
) -> StreamMeta:
    """A stream's meta as ``planned`` starts it: a copy of the known one, or a new stream."""
    known = stream_of(name)
    if known is not None:
        meta = msgspec.structs.replace(known)
    else:
        meta = StreamMeta(planned.next_id, 0, 0, False, 0)
        planned.next_id += 1
    planned.streams[name] = meta
    planned.added[name] = 0
    planned.result.touched.add(name)
    return meta


class Pending:
    """The state batches are planned against: committed, plus planned and not committed yet.

    Used by one thread (the receiver's ingest thread, or the caller of
    ``Store.append``). ``committed_stream``, ``committed_seq`` and
    ``committed_next_id`` read the store's committed mirrors.
    """

    def __init__(
        self,
        committed_stream: Callable[[str], StreamMeta | None],
        committed_seq: Callable[[bytes], int | None],
        committed_next_id: Callable[[], int],
    ) -> None:
        self._committed_stream = committed_stream
        self._committed_seq = committed_seq
        self._committed_next_id = committed_next_id
        self._streams: dict[str, StreamMeta] = {}
        self._senders: dict[bytes, int] = {}
        self._next_id: int | None = None

    def plan(self, batch: Sequence[Incoming], now: float | None = None) -> Planned:
        """Plan ``batch`` after everything planned before; the pending state moves on."""
        next_id = self._committed_next_id() if self._next_id is None else self._next_id
        planned = plan(batch, self._stream, self._seq, next_id, now)
        # planned.streams' metas are never changed again: the next plan copies them
        self._streams.update(planned.streams)
        self._senders.update(planned.senders)
        self._next_id = planned.next_id
        return planned

    def settle(self) -> None:
        """Nothing planned is in flight (all committed, or given up): follow the committed state."""
        self._streams.clear()
        self._senders.clear()
        self._next_id = None

    def _stream(self, name: str) -> StreamMeta | None:
        meta = self._streams.get(name)
        return self._committed_stream(name) if meta is None else meta

    def _seq(self, key: bytes) -> int | None:
        seq = self._senders.get(key)
        return self._committed_seq(key) if seq is None else seq
