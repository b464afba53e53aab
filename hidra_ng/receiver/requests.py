"""Consumer requests: one handler per request type, dispatched from one table.

``OPS`` maps each request type of :data:`hidra_ng.wire.protocol.Request` (a
tagged union: the ``op`` names it) to its handler and to whether it changes
consumer-group state; the replies of those wait for the group commit
(:mod:`hidra_ng.receiver.replies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from hidra_ng.errors import HidraError, NotYetAvailable
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.groups import Group, Groups
from hidra_ng.receiver.replay import Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Store
from hidra_ng.receiver.waiters import Waiters, Waiting
from hidra_ng.wire import protocol as proto


@dataclass(frozen=True)
class Op:
    handler: Callable[[Requests, bytes, Any], None]
    #: its reply confirms a change of consumer-group state: sent after the group commit
    changes_groups: bool = False


class Requests:
    """The handlers of every request type; parked requests live in ``waiters``."""

    def __init__(
        self,
        store: Store,
        groups: Groups,
        metrics: ReceiverMetrics,
        replies: Replies,
        replays: Replays,
        scans: Scans,
    ) -> None:
        self.store = store
        self.groups = groups
        self.metrics = metrics
        self.replies = replies
        self.replays = replays
        self.scans = scans
        self.waiters = Waiters(store, self.retry, self.handle)

    def handle(self, ident: bytes, req: proto.Request) -> None:
        """Serve one (checked) request; its errors become error replies."""
        op = OPS[type(req)]
        self.metrics.requests.labels(req.op).inc()
        try:
            op.handler(self, ident, req)
        except HidraError as err:
            self.replies.reply_error(ident, req.id, err, after_commit=op.changes_groups)

    def retry(self, ident: bytes, req: Waiting) -> bool:
        """Try a waiting request again; True once it is answered (with data or an error)."""
        op = OPS[type(req)]
        try:
            op.handler(self, ident, req)
        except NotYetAvailable:
            return False
        except HidraError as err:
            self.replies.reply_error(ident, req.id, err, after_commit=op.changes_groups)
        return True

    # -- simple operations

    def ping(self, ident: bytes, req: proto.PingRequest) -> None:
        self.replies.reply(ident, req.id, "pong")

    def streams(self, ident: bytes, req: proto.StreamsRequest) -> None:
        self.replies.reply(ident, req.id, self.store.streams())

    def info(self, ident: bytes, req: proto.InfoRequest) -> None:
        proto.check_stream_name(req.stream)
        self.replies.reply(ident, req.id, self.store.info(req.stream))

    def last(self, ident: bytes, req: proto.LastRequest) -> None:
        proto.check_stream_name(req.stream)
        index = self.store.next_index(req.stream) - 1
        if index < 0:
            self.waiters.wait_or_fail(ident, req, 0)
            return
        self._send_frame(ident, req, index)

    def get(self, ident: bytes, req: proto.GetRequest) -> None:
        proto.check_stream_name(req.stream)
        if req.index >= self.store.next_index(req.stream):
            self.waiters.wait_or_fail(ident, req, req.index)
            return
        self._send_frame(ident, req, req.index)

    def skipped(self, ident: bytes, req: proto.SkippedRequest) -> None:
        if 0 < req.count < 1 << 40:
            self.metrics.subscriber_skipped.inc(req.count)

    def _send_frame(
        self, ident: bytes, req: proto.LastRequest | proto.GetRequest, index: int
    ) -> None:
        record, payload = self.store.read(req.stream, index)
        ref = proto.FrameRef(req.stream, index, msgspec.Raw(record))
        self.replies.reply(ident, req.id, ref, [payload])

    def query(self, ident: bytes, req: proto.QueryRequest) -> None:
        self.scans.start(ident, req)  # answered once scanned, a slice per turn

    # -- replays

    def replay(self, ident: bytes, req: proto.ReplayRequest) -> None:
        self.replays.start(ident, req)

    def credit(self, ident: bytes, req: proto.CreditRequest) -> None:
        self.replays.credit(ident, req)

    def cancel(self, ident: bytes, req: proto.CancelRequest) -> None:
        """End the replay of this id, or answer the waiting get/last/next of this id now."""
        if not self.waiters.cancel(ident, req.id):
            self.replays.cancel(ident, req)

    # -- consumer groups

    def next(self, ident: bytes, req: proto.NextRequest) -> None:
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
                self.waiters.wake(req.stream)  # the group may be settled now
            return
        self._hand_out(ident, req, group)

    def _hand_out(self, ident: bytes, req: proto.NextRequest, group: Group) -> None:
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
                    self.waiters.wait_or_fail(ident, req)
                    return
                record, payload = read(index)
                deliveries = group.entries[index].deliveries
                refs.append(
                    proto.FrameRef(req.stream, index, msgspec.Raw(record), req.group, deliveries)
                )
                payloads.append(payload)
                size += len(payload)
            reply = self.replies.reply
            if req.max_count:  # one payload frame for the batch: one copy out of the map
                body = proto.FrameBatch(refs, [len(p) for p in payloads])
                reply(ident, req.id, body, [b"".join(payloads)], after_commit=True)
            else:
                reply(ident, req.id, refs[0], [bytes(payloads[0])], after_commit=True)

    def ack(self, ident: bytes, req: proto.AckRequest) -> None:
        for index in req.indices or (req.index,):
            self.groups.ack(req.stream, req.group, index)
        self.replies.reply(ident, req.id, None, after_commit=True)
        self.waiters.wake(req.stream)  # the group may be settled now: StreamFinished

    def nack(self, ident: bytes, req: proto.NackRequest) -> None:
        self.groups.nack(req.stream, req.group, req.index, req.delay)
        self.replies.reply(ident, req.id, None, after_commit=True)
        self.waiters.wake(req.stream)

    def parked(self, ident: bytes, req: proto.ParkedRequest) -> None:
        self.replies.reply(ident, req.id, self.groups.parked(req.stream, req.group))


#: request type -> how it is handled
OPS: dict[type, Op] = {
    proto.PingRequest: Op(Requests.ping),
    proto.StreamsRequest: Op(Requests.streams),
    proto.InfoRequest: Op(Requests.info),
    proto.LastRequest: Op(Requests.last),
    proto.GetRequest: Op(Requests.get),
    proto.ReplayRequest: Op(Requests.replay),
    proto.CreditRequest: Op(Requests.credit),
    proto.CancelRequest: Op(Requests.cancel),
    proto.SkippedRequest: Op(Requests.skipped),
    proto.NextRequest: Op(Requests.next, changes_groups=True),
    proto.AckRequest: Op(Requests.ack, changes_groups=True),
    proto.NackRequest: Op(Requests.nack, changes_groups=True),
    proto.ParkedRequest: Op(Requests.parked),
    proto.QueryRequest: Op(Requests.query),
}
