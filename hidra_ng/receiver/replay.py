"""Replay sessions: a consumer's credit window, served round-robin a bounded slice a turn.

A replay is a session with a credit window (frames and bytes the consumer said
it can take); it is served a bounded slice per turn of the api loop, so one
replay never stalls other consumers and the receiver never holds more than the
window for one consumer. A follow replay that waits for new frames says it is
alive (``ReplayEvent.IDLE``) every ``IDLE_SECONDS``; a replay whose consumer
said nothing for ``SESSION_SECONDS`` is dropped.

A batched replay (``ReplayRequest.batch``, what ``Consumer.replay`` asks for)
answers with ``FrameBatch`` bodies: small frames joined, many per reply, and each
frame of ``ZERO_COPY_BYTES`` or more alone, sent as a view of the store's map with
its read transaction held until zmq is done with it (held.py). Credit counts
frames and bytes either way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import msgspec

from hidra_ng.errors import Gone, HidraError, InvalidInput
from hidra_ng.receiver.held import HeldReads
from hidra_ng.receiver.layout import Run, StreamReader
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

#: per turn, one replay sends at most this much before the next one's turn
TURN_BYTES = 8 << 20
TURN_FRAMES = 64
#: per turn, a batched replay sends at most this many frames (small ones, many per reply)
TURN_FRAMES_BATCHED = 2048
#: in a batched replay, frames this large go out as views of the map, one per reply
ZERO_COPY_BYTES = 64 << 10
IDLE_SECONDS = proto.REPLAY_IDLE_SECONDS
#: a replay whose consumer said nothing for this long is dropped
SESSION_SECONDS = 600.0

Key = tuple[bytes, int]  # (peer, request id)


@dataclass
class Session:
    ident: bytes
    id: int
    stream: str
    next: int
    stop: int | None
    follow: bool
    credit_frames: int
    credit_bytes: int
    heard: float  # last message from the consumer
    sent: float  # last message to the consumer
    batch: bool = False  # FrameBatch replies (ReplayRequest.batch)


class Replays:
    def __init__(self, store: Store, replies: Replies) -> None:
        self.store = store
        self.replies = replies
        self._sessions: dict[Key, Session] = {}
        self._ready: set[Key] = set()  # replays that may send now
        self.held = HeldReads()  # read transactions whose views zmq still sends

    @property
    def ready(self) -> bool:
        """Some replay may send now: the api loop must not sleep."""
        return bool(self._ready)

    # ------------------------------------------------------------ requests

    def start(self, ident: bytes, req: proto.ReplayRequest) -> None:
        proto.check_stream_name(req.stream)
        if req.index < 0 or req.credit_frames <= 0 or req.credit_bytes <= 0:
            raise InvalidInput(
                f"replay of {req.stream!r} from {req.index} with credit {req.credit_frames}"
                f" frames / {req.credit_bytes} bytes; expected start >= 0 and positive credits"
            )
        if req.stop >= 0 and req.stop < req.index:
            raise InvalidInput(f"replay stop {req.stop} is before its start {req.index}")
        key = (ident, req.id)
        now = time.monotonic()
        self._sessions[key] = Session(
            ident,
            req.id,
            req.stream,
            req.index,
            req.stop if req.stop >= 0 else None,
            req.follow,
            req.credit_frames,
            req.credit_bytes,
            now,
            now,
            req.batch,
        )
        self._ready.add(key)

    def credit(self, ident: bytes, req: proto.CreditRequest) -> None:
        replay = self._sessions.get((ident, req.id))
        if replay is None:
            return  # ended meanwhile
        replay.heard = time.monotonic()
        replay.credit_frames += max(0, req.credit_frames)
        replay.credit_bytes += max(0, req.credit_bytes)
        self._ready.add((ident, req.id))

    def cancel(self, ident: bytes, req: proto.CancelRequest) -> None:
        self.end((ident, req.id))

    # -------------------------------------------------------------- events

    def end(self, key: Key) -> None:
        self._sessions.pop(key, None)
        self._ready.discard(key)

    def peer_gone(self, ident: bytes) -> None:
        """A consumer disconnected: its replays end (ROUTER_MANDATORY tells us)."""
        for key in [k for k in self._sessions if k[0] == ident]:
            self.end(key)

    def on_commit(self, streams: set[str]) -> None:
        for key, replay in self._sessions.items():
            if replay.stream in streams:
                self._ready.add(key)

    # ------------------------------------------------------------- serving

    def serve(self) -> None:
        """One turn of every replay that may send."""
        self.held.release_done()
        for key in list(self._ready):
            replay = self._sessions.get(key)
            if replay is None:
                self._ready.discard(key)
                continue
            try:
                keep = self._serve(replay)
            except HidraError as err:  # Gone, or the stream's own errors
                self.replies.reply_error(replay.ident, replay.id, err)
                keep = None
            if keep is None:
                self.end(key)
            elif not keep:
                self._ready.discard(key)

    def _serve(self, r: Session) -> bool | None:
        """One turn of a replay: True to go on, False to wait, None when it ended."""
        if r.credit_frames <= 0 or r.credit_bytes <= 0:
            return False  # the consumer grants more as it reads
        available = self.store.next_index(r.stream)
        end = available if r.stop is None else min(r.stop, available)
        if r.next >= end:
            if (r.stop is not None and r.next >= r.stop) or (
                self.store.is_finished(r.stream) or not r.follow
            ):
                self.replies.reply(r.ident, r.id, proto.ReplayEvent.END)
                return None
            return False  # woken by the next commit of this stream
        if r.batch:
            return self._serve_batched(r, end)
        rows = self.store.read_range(
            r.stream,
            r.next,
            end,
            min(r.credit_frames, TURN_FRAMES),
            min(r.credit_bytes, TURN_BYTES),
        )
        for index, record, payload in rows:
            ref = proto.FrameRef(r.stream, index, msgspec.Raw(record))
            if not self.replies.reply(r.ident, r.id, ref, [payload]):
                return False  # full or gone: a later credit or the sweep decides
            r.next = index + 1
            r.credit_frames -= 1
            r.credit_bytes -= len(payload)
            r.sent = time.monotonic()
        return True

    def _serve_batched(self, r: Session, end: int) -> bool:
        """One turn of a batched replay; True to go on, False to wait."""
        txn = contextlib.ExitStack()
        trackers: list = []
        try:
            read = txn.enter_context(self.store.reader(r.stream))
            return self._fill_turn(r, end, read, trackers)
        finally:
            if trackers:
                self.held.keep(txn, trackers)
            else:
                txn.close()

    def _fill_turn(self, r: Session, end: int, read: StreamReader, trackers: list) -> bool:
        """Send what fits this turn: runs of packed messages at once, large ones as views."""
        max_frames = min(r.credit_frames, TURN_FRAMES_BATCHED)
        max_bytes = min(r.credit_bytes, TURN_BYTES)
        views = not self.store.env.resize_waiting and self.held.room
        batch = _Batch(r.stream)
        sent = 0  # frames of this turn already sent
        index = r.next
        while index < end and sent + batch.frames < max_frames:
            try:
                run = read.run(index, min(max_frames - sent - batch.frames, end - index))
            except Gone:
                if index == r.next:
                    raise
                break  # removed while we read: the next turn reports it
            heads, sizes, joined = run
            size = sizes[0]
            if not (views and size >= ZERO_COPY_BYTES):
                taken = batch.add_run(index, run, max_bytes)
                if not taken:
                    break
                index += taken
                continue
            # a large message (kept alone: blocks hold smaller ones) goes out as a view
            if batch.nbytes and batch.nbytes + size > max_bytes:
                break
            if batch.frames and not self._send_batch(r, batch):
                return False
            sent += batch.frames + 1
            batch = _Batch(r.stream, nbytes=batch.nbytes + size)
            ref = proto.FrameRef(r.stream, index, msgspec.Raw(heads[0]))
            tracker = self.replies.reply_tracked(
                r.ident, r.id, proto.FrameBatch([ref], [size]), joined[:size]
            )
            if tracker is None:
                return False
            trackers.append(tracker)
            self._sent(r, 1, size)
            index += 1
        return not batch.frames or self._send_batch(r, batch)

    def _send_batch(self, r: Session, batch: _Batch) -> bool:
        """Small frames in one reply, their payloads joined (a copy, inside the read)."""
        body = proto.FrameBatch(batch.refs, batch.sizes)
        if not self.replies.reply(r.ident, r.id, body, [b"".join(batch.pieces)]):
            return False  # full or gone: a later credit or the sweep decides
        self._sent(r, batch.frames, sum(batch.sizes))
        return True

    def _sent(self, r: Session, frames: int, nbytes: int) -> None:
        r.next += frames
        r.credit_frames -= frames
        r.credit_bytes -= nbytes
        r.sent = time.monotonic()

    def sweep(self, now: float) -> None:
        """Keep follow replays that wait for frames alive; drop those whose consumer is silent."""
        for key, r in list(self._sessions.items()):
            if now - r.heard > SESSION_SECONDS:
                log.info("replay of %s for a silent consumer dropped at index %d", r.stream, r.next)
                self.end(key)
            elif r.follow and r.credit_frames > 0 and now - r.sent > IDLE_SECONDS:
                # waiting for new frames, not for credit: say we are alive
                r.sent = now
                self.replies.reply(r.ident, r.id, proto.ReplayEvent.IDLE)


class _Batch:
    """Small frames gathered for one reply: their refs, sizes and payload pieces."""

    def __init__(self, stream: str, nbytes: int = 0) -> None:
        self.stream = stream
        self.refs: list[proto.FrameRef] = []
        self.sizes: list[int] = []
        self.pieces: list[memoryview] = []
        self.nbytes = nbytes  # bytes of this turn so far, earlier replies included

    @property
    def frames(self) -> int:
        return len(self.refs)

    def add_run(self, index: int, run: Run, max_bytes: int) -> int:
        """As many of a block's run as fit in ``max_bytes``; how many were taken."""
        heads, sizes, joined = run
        take, nbytes = 0, self.nbytes
        for size in sizes:
            if nbytes and nbytes + size > max_bytes:
                break
            nbytes += size
            take += 1
        stream = self.stream
        self.refs += [
            proto.FrameRef(stream, index + k, msgspec.Raw(head))
            for k, head in enumerate(heads[:take])
        ]
        self.sizes += sizes[:take]
        self.pieces.append(joined[: nbytes - self.nbytes])
        self.nbytes = nbytes
        return take
