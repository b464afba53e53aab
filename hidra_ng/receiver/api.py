"""The receiver's ROUTER api: sender acks, consumer requests, waits and replays.

Runs in one thread that owns the ROUTER socket and the receiving end of the
ingest thread's commit notices. Nothing here blocks: a ``get`` of a future
index is parked until a commit or its deadline; a replay is a session with a
credit window (frames and bytes the consumer said it can take) that is served
round-robin, a bounded slice per turn, so one replay never stalls other
consumers and the receiver never holds more than the window for one consumer.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import zmq

from hidra_ng.errors import (
    REMOTE_ERRORS,
    HidraError,
    InvalidInput,
    NotYetAvailable,
    ProtocolError,
    StorageError,
    reason,
)
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.groups import Group, Groups
from hidra_ng.receiver.query import DEFAULT_LIMIT, MAX_LIMIT, compile_query
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

#: per turn, one replay sends at most this much before the next one's turn
TURN_BYTES = 8 << 20
TURN_FRAMES = 64
IDLE_SECONDS = proto.REPLAY_IDLE_SECONDS
#: a replay whose consumer said nothing for this long is dropped
SESSION_SECONDS = 600.0


class Notice(msgspec.Struct, array_like=True):
    """Ingest -> api: what a commit made durable."""

    acks: list[tuple[str, int, int]]  # sender, incarnation, last seq
    gaps: list[tuple[str, int, int, int]]  # sender, incarnation, expected, epoch
    streams: list[str]  # streams with new messages or newly finished


@dataclass(order=True)
class _Waiter:
    deadline: float
    order: int
    ident: bytes = field(compare=False)
    request: proto.Request = field(compare=False)
    done: bool = field(default=False, compare=False)


@dataclass
class _Replay:
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


class ApiServer:
    def __init__(
        self,
        store: Store,
        router: zmq.Socket,
        notices: zmq.Socket,
        metrics: ReceiverMetrics,
        groups: Groups,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.beat = beat  # liveness for the watchdog, once per loop
        self.store = store
        self.groups = groups
        self.router = router
        self.notices = notices
        self.metrics = metrics
        self._senders: dict[tuple[str, int], bytes] = {}  # (sender, incarnation) -> ident
        self._waiters: dict[str, list[_Waiter]] = {}
        self._deadlines: list[_Waiter] = []
        self._order = itertools.count()
        self._replays: dict[tuple[bytes, int], _Replay] = {}
        self._ready: set[tuple[bytes, int]] = set()  # replays that may send now
        self._notice_decoder = msgspec.msgpack.Decoder(Notice)
        self._next_sweep = 0.0
        self._held: list[list] = []  # replies confirming group changes, sent once committed
        self._next_group_error_log = 0.0

    # ------------------------------------------------------------------ loop

    def run(self, stopping: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.notices, zmq.POLLIN)
        while True:
            self.beat()
            stop = stopping.is_set()
            timeout = 0 if (self._ready or stop) else self._poll_timeout()
            events = dict(poller.poll(timeout))
            if self.notices in events:
                self._take_notices()
            if self.router in events:
                self._take_requests()
            self._release_held()
            if stop and not events:
                return  # every notice is handled: the last acks are out
            self._serve_replays()
            for stream, _ in self.groups.due_groups():
                self._wake_waiters(stream)  # a redelivery is due
            self._expire_waiters()
            self._release_held()
            self._sweep_replays()
            try:
                self.groups.commit()
            except StorageError as err:  # a full disk, say: kept in memory, tried next turn
                self._group_storage_error(err, "")

    def _poll_timeout(self) -> int:
        timeout = 100
        deadlines = [w.deadline for w in self._deadlines[:1]]
        due = self.groups.next_due()
        if due is not None:
            deadlines.append(time.monotonic() + due - time.time())
        if deadlines:
            wait = min(deadlines) - time.monotonic()
            if math.isfinite(wait):  # requests are checked; this keeps the loop safe anyway
                timeout = max(0, min(timeout, int(wait * 1000) + 1))
        return timeout

    def _send(self, frames: list, copy: bool = True) -> bool:
        """Send to one peer without blocking; False if it cannot take it now or is gone."""
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as err:
            if err.errno != errno.EHOSTUNREACH:
                raise
            self._peer_gone(frames[0])
            return False

    def _group_storage_error(self, err: StorageError, what: str) -> None:
        """Log a failed commit of group state, at most once a minute (it is retried each turn)."""
        now = time.monotonic()
        if now >= self._next_group_error_log:
            self._next_group_error_log = now + 60.0
            log.error("consumer-group state not committed%s (retried each turn): %s", what, err)

    def _peer_gone(self, ident: bytes) -> None:
        """A consumer disconnected: its replays end (ROUTER_MANDATORY tells us)."""
        for key in [k for k in self._replays if k[0] == ident]:
            self._end_replay(key)

    # --------------------------------------------------------------- notices

    def _take_notices(self) -> None:
        while True:
            try:
                data = self.notices.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            notice = self._notice_decoder.decode(data)
            for sender, incarnation, last in notice.acks:
                self._to_sender(sender, incarnation, proto.Kind.ACK, proto.Ack(incarnation, last))
            for sender, incarnation, expected, epoch in notice.gaps:
                gap = proto.Gap(incarnation, expected, epoch)
                self._to_sender(sender, incarnation, proto.Kind.GAP, gap)
            streams = set(notice.streams)
            for stream in streams:
                self._wake_waiters(stream)
            for key, replay in self._replays.items():
                if replay.stream in streams:
                    self._ready.add(key)

    def _to_sender(self, sender: str, incarnation: int, kind: proto.Kind, body) -> None:
        ident = self._senders.get((sender, incarnation))
        if ident is not None:
            # if it cannot take it now, the sender's heartbeat HELLO fetches the ack again
            self._send([ident, proto.encode(kind, body)])

    # -------------------------------------------------------------- requests

    def _take_requests(self) -> None:
        for _ in range(1000):  # then let notices, replays and deadlines have a turn
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._reject(ProtocolError(f"api message has {len(frames) - 1} frames; expected 1"))
                continue
            ident, frame = frames
            try:
                kind = proto.peek_kind(frame)
                if kind == proto.Kind.HELLO:
                    self._on_hello(ident, proto.decode(kind, proto.Hello, frame))
                elif kind == proto.Kind.REQUEST:
                    request = proto.decode(kind, proto.Request, frame)
                    try:
                        proto.check_request(request)
                    except InvalidInput as err:
                        self._reject(err)
                        self._reply_error(ident, request.id, err)
                        continue
                    self._on_request(ident, request)
                else:
                    raise ProtocolError(f"{kind.name} is not a request")
            except (ProtocolError, InvalidInput) as err:
                self._reject(err)
            except StorageError as err:
                log.error("api request failed on the store: %s", err)
            except Exception:
                # a bug must cost one request, never the api thread (SPEC §9)
                self.metrics.rejected.labels("internal").inc()
                log.exception("api message from %r failed; serving the others", ident[:16])

    def _reject(self, err: HidraError) -> None:
        self.metrics.rejected.labels(reason(err)).inc()
        log.warning("refused api message: %s", err)

    def _on_hello(self, ident: bytes, hello: proto.Hello) -> None:
        proto.check_sender_id(hello.sender)
        key = (hello.sender, hello.incarnation)
        if self._senders.get(key) != ident:
            log.info("sender %s (incarnation %x) connected", hello.sender, hello.incarnation)
            self._senders[key] = ident
        last = self.store.last_seq(hello.sender, hello.incarnation)
        self._to_sender(*key, proto.Kind.ACK, proto.Ack(hello.incarnation, last))

    def _on_request(self, ident: bytes, req: proto.Request) -> None:
        handler: Callable[[bytes, proto.Request], None] | None = getattr(
            self, f"_op_{req.op}", None
        )
        self.metrics.requests.labels(req.op if handler else "unknown").inc()
        try:
            if handler is None:
                raise InvalidInput(
                    f"operation {req.op!r} is unknown; expected one of {', '.join(OPS)}"
                )
            handler(ident, req)
        except HidraError as err:
            self._reply_error(ident, req.id, err, after_commit=req.op in GROUP_CHANGES)

    def _reply(
        self,
        ident: bytes,
        req_id: int,
        body=None,
        payloads: Sequence = (),
        *,
        after_commit: bool = False,
    ) -> bool:
        """Send a reply (body, then one frame per payload) now, or held until committed.

        ``after_commit``: the reply confirms a change of consumer-group state; it is
        sent by :meth:`_release_held` once that change is committed, together with
        every other change of this turn (one commit for all of them).
        """
        reply = proto.Reply(req_id, body=msgspec.Raw(proto.encode_body(body)))
        return self._answer([ident, proto.encode(proto.Kind.REPLY, reply), *payloads], after_commit)

    def _answer(self, frames: list, after_commit: bool) -> bool:
        """Send now (False if the peer cannot take it), or hold until the group commit."""
        if after_commit:
            self._held.append(frames)
            return True
        return self._send(frames, copy=False)

    def _release_held(self) -> None:
        """Commit the group changes of this turn, then send the replies that confirm them."""
        if not self._held:
            return
        try:
            self.groups.write()
        except StorageError as err:
            # confirm nothing: the members ask again (ReceiverUnavailable after their
            # timeout); what was handed out unconfirmed comes back after the ack timeout
            self._group_storage_error(err, f"; {len(self._held)} replies withheld")
            self._held.clear()
            return
        held, self._held = self._held, []
        for frames in held:
            self._send(frames, copy=False)

    def _reply_error(
        self, ident: bytes, req_id: int, err: HidraError, *, after_commit: bool = False
    ) -> None:
        """An error reply; ``after_commit`` as for :meth:`_reply` (the request may have
        changed group state before it failed, e.g. acks before a StreamFinished)."""
        # the nearest class a client knows by name (QueryError travels as InvalidInput)
        name = next(c.__name__ for c in type(err).__mro__ if c.__name__ in REMOTE_ERRORS)
        reply = proto.Reply(req_id, error=name, message=str(err))
        self._answer([ident, proto.encode(proto.Kind.REPLY, reply)], after_commit)

    # -- simple operations

    def _op_ping(self, ident: bytes, req: proto.Request) -> None:
        self._reply(ident, req.id, "pong")

    def _op_streams(self, ident: bytes, req: proto.Request) -> None:
        self._reply(ident, req.id, self.store.streams())

    def _op_info(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        self._reply(ident, req.id, self.store.info(req.stream))

    def _op_last(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        index = self.store.next_index(req.stream) - 1
        if index < 0:
            self._wait_or_fail(ident, req, 0)
            return
        self._send_frame(ident, req, index)

    def _op_get(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        if req.index >= self.store.next_index(req.stream):
            self._wait_or_fail(ident, req, req.index)
            return
        self._send_frame(ident, req, req.index)

    def _op_skipped(self, ident: bytes, req: proto.Request) -> None:
        if 0 < req.count < 1 << 40:
            self.metrics.subscriber_skipped.inc(req.count)

    def _send_frame(self, ident: bytes, req: proto.Request, index: int) -> None:
        record, payload = self.store.read(req.stream, index)
        ref = proto.FrameRef(req.stream, index, msgspec.Raw(record))
        self._reply(ident, req.id, ref, [payload])

    # -- waiting: get/last of a future index, next of a group with nothing due

    def _wait_or_fail(self, ident: bytes, req: proto.Request, index: int | None = None) -> None:
        """Fail now if the answer can never come or the request does not wait; else wait."""
        if index is not None and (req.timeout <= 0 or self.store.is_finished(req.stream)):
            self.store.check_index(req.stream, index)  # NotYetAvailable or StreamFinished
        if req.timeout <= 0:
            raise NotYetAvailable(f"nothing for {req.op} on stream {req.stream!r} yet")
        deadline = time.monotonic() + min(req.timeout, proto.MAX_WAIT_SECONDS)
        waiter = _Waiter(deadline, next(self._order), ident, req)
        self._waiters.setdefault(req.stream, []).append(waiter)
        heapq.heappush(self._deadlines, waiter)

    def _retry(self, w: _Waiter) -> bool:
        """Try a waiting request again; True once it is answered (with data or an error)."""
        handler = getattr(self, f"_op_{w.request.op}")
        try:
            handler(w.ident, msgspec.structs.replace(w.request, timeout=0.0))
        except NotYetAvailable:
            return False
        except HidraError as err:
            after_commit = w.request.op in GROUP_CHANGES
            self._reply_error(w.ident, w.request.id, err, after_commit=after_commit)
        return True

    def _wake_waiters(self, stream: str) -> None:
        """Try the waiting requests of ``stream`` again after something changed there."""
        for w in self._waiters.pop(stream, []):
            if w.done:
                continue
            if self._retry(w):
                w.done = True
            else:
                self._waiters.setdefault(stream, []).append(w)

    def _expire_waiters(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0].deadline <= now:
            w = heapq.heappop(self._deadlines)
            if w.done:
                continue
            w.done = True
            stream = w.request.stream
            pending = [x for x in self._waiters.get(stream, []) if not x.done]
            if pending:
                self._waiters[stream] = pending
            else:
                self._waiters.pop(stream, None)
            self._on_request(w.ident, msgspec.structs.replace(w.request, timeout=0.0))

    # -- consumer groups

    def _op_next(self, ident: bytes, req: proto.Request) -> None:
        group = self.groups.group(
            req.stream,
            req.group,
            ack_timeout=req.ack_timeout or None,
            max_deliveries=req.max_deliveries or None,
        )
        if req.indices:  # acks that came with it: made first, once (a wait retries without)
            for index in req.indices:
                self.groups.ack(req.stream, req.group, index)
            req = msgspec.structs.replace(req, indices=())
            try:
                self._hand_out(ident, req, group)
            finally:
                self._wake_waiters(req.stream)  # the group may be settled now
            return
        self._hand_out(ident, req, group)

    def _hand_out(self, ident: bytes, req: proto.Request, group: Group) -> None:
        refs: list[proto.FrameRef] = []
        payloads: list[memoryview] = []
        size = 0
        with self.store.reader(req.stream) as read:
            while len(refs) < max(1, req.max_count) and size < proto.MAX_BATCH_BYTES:
                try:
                    index = self.groups.hand_out(group)
                except NotYetAvailable:
                    if refs:
                        break  # what there is now; more in a later request
                    self._wait_or_fail(ident, req)
                    return
                record, payload = read(index)
                deliveries = group.entries[index].deliveries
                refs.append(
                    proto.FrameRef(req.stream, index, msgspec.Raw(record), req.group, deliveries)
                )
                payloads.append(payload)
                size += len(payload)
            if req.max_count:  # one payload frame for the batch: one copy out of the map
                body = proto.FrameBatch(refs, [len(p) for p in payloads])
                self._reply(ident, req.id, body, [b"".join(payloads)], after_commit=True)
            else:
                self._reply(ident, req.id, refs[0], [bytes(payloads[0])], after_commit=True)

    def _op_ack(self, ident: bytes, req: proto.Request) -> None:
        for index in req.indices or (req.index,):
            self.groups.ack(req.stream, req.group, index)
        self._reply(ident, req.id, None, after_commit=True)
        self._wake_waiters(req.stream)  # the group may be settled now: StreamFinished

    def _op_nack(self, ident: bytes, req: proto.Request) -> None:
        self.groups.nack(req.stream, req.group, req.index, req.delay)
        self._reply(ident, req.id, None, after_commit=True)
        self._wake_waiters(req.stream)

    def _op_parked(self, ident: bytes, req: proto.Request) -> None:
        self._reply(ident, req.id, self.groups.parked(req.stream, req.group))

    def _op_query(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        matches = compile_query(req.expr)
        limit = min(req.limit or DEFAULT_LIMIT, MAX_LIMIT)
        rows = self.store.select(req.stream, matches, limit)
        self._reply(ident, req.id, [proto.FrameRef(req.stream, i, msgspec.Raw(r)) for i, r in rows])

    # -- replays

    def _op_replay(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        if req.index < 0 or req.credit_frames <= 0 or req.credit_bytes <= 0:
            raise InvalidInput(
                f"replay of {req.stream!r} from {req.index} with credit {req.credit_frames}"
                f" frames / {req.credit_bytes} bytes; expected start >= 0 and positive credits"
            )
        if req.stop >= 0 and req.stop < req.index:
            raise InvalidInput(f"replay stop {req.stop} is before its start {req.index}")
        key = (ident, req.id)
        self._replays[key] = _Replay(
            ident,
            req.id,
            req.stream,
            req.index,
            req.stop if req.stop >= 0 else None,
            req.follow,
            req.credit_frames,
            req.credit_bytes,
            time.monotonic(),
            time.monotonic(),
        )
        self._ready.add(key)

    def _op_credit(self, ident: bytes, req: proto.Request) -> None:
        replay = self._replays.get((ident, req.id))
        if replay is None:
            return  # ended meanwhile
        replay.heard = time.monotonic()
        replay.credit_frames += max(0, req.credit_frames)
        replay.credit_bytes += max(0, req.credit_bytes)
        self._ready.add((ident, req.id))

    def _op_cancel(self, ident: bytes, req: proto.Request) -> None:
        self._end_replay((ident, req.id))

    def _end_replay(self, key: tuple[bytes, int]) -> None:
        self._replays.pop(key, None)
        self._ready.discard(key)

    def _serve_replays(self) -> None:
        for key in list(self._ready):
            replay = self._replays.get(key)
            if replay is None:
                self._ready.discard(key)
                continue
            try:
                keep = self._serve_replay(replay)
            except HidraError as err:  # Gone, or the stream's own errors
                self._reply_error(replay.ident, replay.id, err)
                keep = None
            if keep is None:
                self._end_replay(key)
            elif not keep:
                self._ready.discard(key)

    def _serve_replay(self, r: _Replay) -> bool | None:
        """One turn of a replay: True to go on, False to wait, None when it ended."""
        if r.credit_frames <= 0 or r.credit_bytes <= 0:
            return False  # the consumer grants more as it reads
        available = self.store.next_index(r.stream)
        end = available if r.stop is None else min(r.stop, available)
        if r.next >= end:
            if (r.stop is not None and r.next >= r.stop) or (
                self.store.is_finished(r.stream) or not r.follow
            ):
                self._finish_replay(r)
                return None
            return False  # woken by the next commit of this stream
        rows = self.store.read_range(
            r.stream,
            r.next,
            end,
            min(r.credit_frames, TURN_FRAMES),
            min(r.credit_bytes, TURN_BYTES),
        )
        for index, record, payload in rows:
            ref = proto.FrameRef(r.stream, index, msgspec.Raw(record))
            if not self._reply(r.ident, r.id, ref, [payload]):
                return False  # full or gone: a later credit or the sweep decides
            r.next = index + 1
            r.credit_frames -= 1
            r.credit_bytes -= len(payload)
            r.sent = time.monotonic()
        return True

    def _finish_replay(self, r: _Replay) -> None:
        self._reply(r.ident, r.id, proto.REPLAY_END)
        return None

    def _sweep_replays(self) -> None:
        """Keep follow replays that wait for frames alive; drop those whose consumer is silent."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for (stream, group), pending in self.groups.pending().items():
            self.metrics.group_pending.labels(stream, group).set(pending)
        for stream, group in self.groups.redelivered:
            self.metrics.group_redelivered.labels(stream, group).inc()
        for stream, group in self.groups.parked_now:
            self.metrics.group_parked.labels(stream, group).inc()
        self.groups.redelivered.clear()
        self.groups.parked_now.clear()
        for key, r in list(self._replays.items()):
            if now - r.heard > SESSION_SECONDS:
                log.info("replay of %s for a silent consumer dropped at index %d", r.stream, r.next)
                self._end_replay(key)
            elif r.follow and r.credit_frames > 0 and now - r.sent > IDLE_SECONDS:
                # waiting for new frames, not for credit: say we are alive
                r.sent = now
                self._reply(r.ident, r.id, proto.REPLAY_IDLE)


#: operations that change consumer-group state: their replies wait for its commit
GROUP_CHANGES = frozenset({"next", "ack", "nack"})

OPS = (
    "ping", "streams", "info", "last", "get", "replay", "credit", "cancel", "skipped",
    "next", "ack", "nack", "parked", "query",
)  # fmt: skip
