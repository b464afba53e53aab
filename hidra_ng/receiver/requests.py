"""Consumer requests: one handler per request type, dispatched from one table.

``OPS`` maps each request type of :data:`hidra_ng.wire.protocol.Request` (a
tagged union: the ``op`` names it) to its handler and to whether it changes
consumer-group state; the replies of those wait for the group commit
(:mod:`hidra_ng.receiver.replies`).
"""

from __future__ import annotations

import time
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
        self._counters: dict[str, Any] = {}

    def handle(self, ident: bytes, req: proto.Request) -> None:
        """Serve one (checked) request; its errors become error replies."""
        op = OPS[type(req)]
        counter = self._counters.get(req.op)
        if counter is None:  # one per request type: labels() costs more than inc()
            counter = self._counters[req.op] = self.metrics.requests.labels(req.op)
        counter.inc()
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
            self.groups.ack_many(req.stream, req.group, req.indices)
            req = msgspec.structs.replace(req, indices=())
            try:
                self._hand_out(ident, req, group)
            finally:
                self.waiters.wake(req.stream)  # the group may be settled now
            return
        self._hand_out(ident, req, group)

    def _hand_out(self, ident: bytes, req: proto.NextRequest, group: Group) -> None:
        """Up to ``max_count`` messages (one for a plain next) in one reply, confirmed
        after the group commit: redeliveries one by one, new messages a run at a time."""
        limit = max(1, req.max_count)
        refs: list[proto.FrameRef] = []
        sizes: list[int] = []
        pieces: list[memoryview] = []
        size = 0
        now = time.time()
        groups, stream, name = self.groups, req.stream, req.group
        with self.store.reader(stream) as read:
            visible = read.visible  # hand out only what this read holds (StreamReader)
            while len(refs) < limit and size < proto.MAX_BATCH_BYTES:
                try:
                    index = groups.hand_out(group, now, visible)
                except NotYetAvailable:
                    if refs:
                        break  # what there is now; more in a later request
                    self.waiters.wait_or_fail(ident, req)
                    return
                deliveries = group.entries[index].deliveries
                heads: list[bytes] | list[memoryview]
                if deliveries > 1:  # a redelivery goes alone
                    record, payload = read(index)
                    heads, run, joined = [record], [len(payload)], payload
                else:  # new: the messages after it in the same block go with it
                    heads, run, joined = read.run(index, limit - len(refs))
                take, nbytes = _fitting(run, size, proto.MAX_BATCH_BYTES)
                if take > 1:
                    take = 1 + groups.hand_out_more(group, take - 1, now, visible)
                    nbytes = sum(run[:take])
                refs += [
                    proto.FrameRef(stream, index + k, msgspec.Raw(heads[k]), name, deliveries)
                    for k in range(take)
                ]
                sizes += run[:take]
                pieces.append(joined[:nbytes])
                size += nbytes
            reply = self.replies.reply
            if req.max_count:  # one payload frame for the batch: one copy out of the map
                body = proto.FrameBatch(refs, sizes)
                reply(ident, req.id, body, [b"".join(pieces)], after_commit=True)
            else:
                reply(ident, req.id, refs[0], [bytes(pieces[0])], after_commit=True)

    def ack(self, ident: bytes, req: proto.AckRequest) -> None:
        self.groups.ack_many(req.stream, req.group, req.indices or (req.index,))
        self.replies.reply(ident, req.id, None, after_commit=True)
        self.waiters.wake(req.stream)  # the group may be settled now: StreamFinished

    def nack(self, ident: bytes, req: proto.NackRequest) -> None:
        self.groups.nack(req.stream, req.group, req.index, req.delay)
        self.replies.reply(ident, req.id, None, after_commit=True)
        self.waiters.wake(req.stream)

    def parked(self, ident: bytes, req: proto.ParkedRequest) -> None:
        self.replies.reply(ident, req.id, self.groups.parked(req.stream, req.group))


def _fitting(sizes: list[int], size: int, max_bytes: int) -> tuple[int, int]:
    """(how many of ``sizes`` join a reply of ``size`` bytes so far, their bytes): each
    while the reply is below ``max_bytes``, so at least one."""
    take, nbytes = 0, 0
    for n in sizes:
        if take and size + nbytes >= max_bytes:
            break
        take += 1
        nbytes += n
    return take, nbytes


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
