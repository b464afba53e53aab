"""The receiver's ROUTER api: sender acks, consumer requests, waits and replays.

Runs in one thread that owns the ROUTER socket and the receiving end of the
committer thread's commit notices (docs/adr/0003-threads.md). Nothing here blocks.
The jobs live in their own modules; this one runs the loop and routes:

* :mod:`~hidra_ng.receiver.acks`: HELLOs and commit notices -> ACK / GAP to senders
* :mod:`~hidra_ng.receiver.requests`: the handler of each request type (one table)
* :mod:`~hidra_ng.receiver.waiters`: requests parked until a commit or a deadline
* :mod:`~hidra_ng.receiver.replay`: replay sessions served a bounded slice a turn
* :mod:`~hidra_ng.receiver.scans`: metadata queries scanned a bounded slice a turn
* :mod:`~hidra_ng.receiver.replies`: replies, and the group commit some wait for
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import msgspec
import zmq

from hidra_ng.errors import HidraError, InvalidInput, ProtocolError, StorageError, reason
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.acks import SenderAcks
from hidra_ng.receiver.groups import Groups
from hidra_ng.receiver.replay import IDLE_SECONDS, SESSION_SECONDS, Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.requests import Requests
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

__all__ = ["IDLE_SECONDS", "SESSION_SECONDS", "ApiServer", "Notice"]

log = logging.getLogger(__name__)


class Notice(msgspec.Struct, array_like=True):
    """Committer -> api: what a commit made durable."""

    acks: list[tuple[str, int, int]]  # sender, incarnation, last seq
    gaps: list[tuple[str, int, int, int]]  # sender, incarnation, expected, epoch
    streams: list[str]  # streams with new messages or newly finished


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
        self.replies = Replies(router, groups)
        self.acks = SenderAcks(store, self.replies)
        self.replays = Replays(store, self.replies)
        self.scans = Scans(store, self.replies)
        self.replies.peer_gone = self._peer_gone
        self.requests = Requests(store, groups, metrics, self.replies, self.replays, self.scans)
        self.waiters = self.requests.waiters
        self._notice_decoder = msgspec.msgpack.Decoder(Notice)
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ loop

    def run(self, stopping: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.notices, zmq.POLLIN)
        written = self.groups.writer.fileno()  # the group writer made turns durable
        poller.register(written, zmq.POLLIN)
        while True:
            self.beat()
            stop = stopping.is_set()
            busy = self.replays.ready or self.scans.ready or stop
            timeout = 0 if busy else self._poll_timeout()
            events = dict(poller.poll(timeout))
            if self.notices in events:
                self._take_notices()
            if written in events:
                self.replies.on_written()
            if self.router in events:
                self._take_requests()
            if stop and not events:
                self.replies.settle(5.0)  # the replies of group changes still being written
                self.replays.held.release_all()  # ingest has stopped; zmq ends before the store
                return  # every notice is handled: the last acks are out
            for stream, _ in self.groups.due_groups():
                self.waiters.wake(stream)  # a redelivery is due
            self.waiters.expire()
            self.replies.release_held()  # the turn's group changes to the writer, as one
            self.replays.serve()
            self.scans.serve()  # a slice of the queries: requests go on between slices
            self._sweep()

    def _peer_gone(self, ident: bytes) -> None:
        self.replays.peer_gone(ident)
        self.scans.peer_gone(ident)

    def _poll_timeout(self) -> int:
        # read transactions held for zmq's sends end soon after zmq is done with them
        timeout = 5 if self.replays.held else 100
        first = self.waiters.next_deadline()
        deadlines = [] if first is None else [first]
        due = self.groups.next_due()
        if due is not None:
            deadlines.append(time.monotonic() + due - time.time())
        if deadlines:
            wait = min(deadlines) - time.monotonic()
            if math.isfinite(wait):  # requests are checked; this keeps the loop safe anyway
                timeout = max(0, min(timeout, int(wait * 1000) + 1))
        return timeout

    def _sweep(self) -> None:
        """Once a second: the consumer-group metrics, and the replays' keep-alives."""
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
        self.replays.sweep(now)

    # --------------------------------------------------------------- notices

    def _take_notices(self) -> None:
        while True:
            try:
                data = self.notices.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            notice = self._notice_decoder.decode(data)
            self.acks.on_commit(notice.acks, notice.gaps)
            streams = set(notice.streams)
            for stream in streams:
                self.waiters.wake(stream)
            self.replays.on_commit(streams)

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
                    self.acks.on_hello(ident, proto.decode(kind, proto.Hello, frame))
                elif kind == proto.Kind.REQUEST:
                    self._on_request(ident, frame)
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

    def _on_request(self, ident: bytes, frame: bytes) -> None:
        try:
            request = proto.decode(proto.Kind.REQUEST, proto.Request, frame)  # type: ignore[arg-type]
        except ProtocolError:
            head = _head(frame)
            if head is None or head.op in proto.REQUEST_TYPES:
                raise
            self.metrics.requests.labels("unknown").inc()
            ops = ", ".join(proto.REQUEST_TYPES)
            err = InvalidInput(f"operation {head.op!r} is unknown; expected one of {ops}")
            self.replies.reply_error(ident, head.id, err)
            return
        try:
            proto.check_request(request)
        except InvalidInput as err:
            self._reject(err)
            self.replies.reply_error(ident, request.id, err)
            return
        self.requests.handle(ident, request)

    def _reject(self, err: HidraError) -> None:
        self.metrics.rejected.labels(reason(err)).inc()
        log.warning("refused api message: %s", err)


def _head(frame: bytes) -> proto.RequestHead | None:
    """The id and op of a request that did not decode, if it has them."""
    try:
        head: proto.RequestHead = proto.decode(proto.Kind.REQUEST, proto.RequestHead, frame)
    except ProtocolError:
        return None
    return head
