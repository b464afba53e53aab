"""A consumer-group member with several ``next`` requests in flight (prefetch).

A loop of ``frames = c.next_many(s, g, ack=frames)`` asks for the next batch only
once it has the last one, so each member waits a full round trip, and since the
receiver confirms a hand-out only after the group state is fsynced (G8), a full
flush, per batch. A :class:`GroupWorker` keeps ``prefetch`` requests in flight on
a DEALER of its own: while the caller works on one batch, the next is already
handed out, fsynced and on its way. Acknowledgements ride on the next request,
as with ``next_many(ack=...)``.

Every message handed to the worker ends in one of two ways: acknowledged (the
caller asked for the batch after it, or called :meth:`GroupWorker.ack`, or left
the ``with`` block without an exception) or given back at once with a ``nack``
(batches prefetched but never taken, and the current one when the block raised).
Nothing waits for the group's ack timeout unless the worker's process dies, or
the caller works on a batch longer than that timeout: the batches prefetched
meanwhile were handed out when they arrived, and their ack timeout runs from then
(as with an AMQP consumer's prefetch), so keep ``prefetch`` x the time per batch
well under the group's ack timeout.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

import zmq

from hidra_ng.client.consumer import Consumer, _dealer, _next_fields, answer_of, decode_batch
from hidra_ng.errors import (
    InvalidArgument,
    NotYetAvailable,
    ReceiverUnavailable,
    StreamFinished,
)
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame

#: most requests a worker keeps in flight
MAX_PREFETCH = 16


class GroupWorker:
    """Batches of ``stream`` for ``group``, each acknowledged when the next is taken.

    ::

        with consumer.worker("p11/scan_0001", "spots", batch=16, prefetch=2) as work:
            for frames in work:
                analyse(frames)

    Iteration stops when the stream is finished and every message is acknowledged
    in the group (``StreamFinished`` of ``next``); ``NotYetAvailable`` is raised
    when no message came within ``timeout`` (iterate again to go on waiting).
    """

    def __init__(
        self,
        consumer: Consumer,
        stream: str,
        group: str,
        *,
        batch: int = 16,
        prefetch: int = 2,
        timeout: float = 5.0,
        ack_timeout: float | None = None,
        max_deliveries: int | None = None,
        decode: bool = True,
    ) -> None:
        if not isinstance(batch, int) or not 1 <= batch <= proto.MAX_BATCH:
            raise InvalidArgument(f"batch {batch!r} is not valid; expected 1 to {proto.MAX_BATCH}")
        if not isinstance(prefetch, int) or not 1 <= prefetch <= MAX_PREFETCH:
            raise InvalidArgument(
                f"prefetch {prefetch!r} is not valid; expected 1 to {MAX_PREFETCH}"
            )
        self.stream = stream
        self.group = group
        self.batch = batch
        self.prefetch = prefetch
        self.decode = decode
        self.timeout = timeout
        self.request_timeout = consumer.request_timeout
        self._fields = _next_fields(stream, group, timeout, ack_timeout, max_deliveries)
        self._sock = _dealer(consumer._ctx, consumer.api, consumer._keys)
        self._ids = itertools.count(1)
        self._in_flight: dict[int, tuple[str, float]] = {}  # id -> (op, answer deadline)
        self._ready: deque[list[Frame]] = deque()  # batches handed out, not yet taken
        self._current: list[Frame] = []  # the batch last taken, not yet acknowledged
        self._finished = False
        self._closed = False

    # ---------------------------------------------------------------- taking

    def __iter__(self) -> GroupWorker:
        return self

    def __next__(self) -> list[Frame]:
        if self._closed:
            raise InvalidArgument("this group worker is closed")
        self._refill(self._take_current())
        asked = time.monotonic()
        while not self._ready:
            if self._finished:
                raise StopIteration
            if not self._receive_one() and time.monotonic() - asked >= self.timeout:
                raise NotYetAvailable(
                    f"no message of {self.stream!r} for group {self.group!r}"
                    f" within {self.timeout:g} s"
                )
            self._refill([])  # a request that ran out of time: another in its place
        self._current = self._ready.popleft()
        self._refill([])
        return self._current

    def ack(self) -> None:
        """Acknowledge the batch last taken now, not with the next request."""
        self._send("ack", self._take_current())

    def _take_current(self) -> list[int]:
        indices = [f.index for f in self._current]
        self._current = []
        return indices

    def _refill(self, acks: list[int]) -> None:
        """Keep ``prefetch`` batches coming; the first request sent carries ``acks``."""
        while not self._finished and self._requests("next") + len(self._ready) < self.prefetch:
            self._send("next", acks)
            acks = []
        if acks:  # no request to carry them: one of their own
            self._send("ack", acks)

    def _requests(self, op: str) -> int:
        return sum(1 for kind, _ in self._in_flight.values() if kind == op)

    # -------------------------------------------------------------- the wire

    def _send(self, op: str, indices: list[int]) -> None:
        """A ``next`` (carrying ``indices`` as acks) or an ``ack`` of ``indices``."""
        if op == "next":
            self._request("next", self._fields["timeout"], max_count=self.batch,
                          indices=tuple(indices), **self._fields)  # fmt: skip
        elif indices:
            self._request("ack", stream=self.stream, group=self.group, indices=tuple(indices))

    def _request(self, op: str, waits: float = 0.0, *, request_id: int = 0, **fields) -> None:
        """Send request ``op``; it is in flight until answered (a cancel is not answered)."""
        request_id = request_id or next(self._ids)
        req = proto.make_request(request_id, op, **fields)
        try:
            self._sock.send(proto.encode(proto.Kind.REQUEST, req))
        except zmq.ZMQError as err:
            raise ReceiverUnavailable(f"cannot send {op!r} to the receiver: {err}") from err
        if op != "cancel":
            self._in_flight[request_id] = (op, time.monotonic() + waits + self.request_timeout)

    def _receive_one(self) -> bool:
        """Wait for the next reply; False if it was a ``next`` that ran out of time.

        A batch goes to ``_ready``; ``StreamFinished`` ends the worker; other
        errors are raised.
        """
        deadline = min(d for _, d in self._in_flight.values())
        left = max(0.0, deadline - time.monotonic())  # a reply may wait in the socket
        if not self._sock.poll(int(left * 1000) + 1):
            raise ReceiverUnavailable(
                f"the receiver did not answer {self.group!r}'s requests for {self.stream!r} in time"
            )
        frames = self._sock.recv_multipart(copy=False)
        reply = proto.decode(proto.Kind.REPLY, proto.Reply, frames[0].buffer)
        entry = self._in_flight.pop(reply.id, None)
        if entry is None:
            return True  # the late answer to a request given up on
        try:
            answer = answer_of(reply, frames)
        except StreamFinished:
            self._finished = True
            return True
        except NotYetAvailable:
            return False
        if entry[0] == "next":
            self._ready.append(decode_batch(*answer, decode=self.decode))
        return True

    # ------------------------------------------------------------ the end

    def close(self, *, ack_current: bool = False) -> None:
        """Acknowledge (``ack_current``) or give back the batch last taken; give back the rest.

        The requests still in flight are cancelled and their answers awaited, so
        that what they hand out is given back at once instead of after the
        group's ack timeout.
        """
        if self._closed:
            return
        try:
            current = self._take_current()
            if ack_current:
                self._send("ack", current)
                current = []
            for request_id, (op, _) in list(self._in_flight.items()):
                if op == "next":  # answered now instead of after its timeout
                    self._request("cancel", request_id=request_id)
            while self._in_flight:
                self._receive_one()
            give_back = current + [f.index for b in self._ready for f in b]
            self._ready.clear()
            for index in give_back:
                self._request("nack", stream=self.stream, group=self.group, index=index, delay=0.0)
            while self._in_flight:
                self._receive_one()
        finally:
            self._closed = True
            self._sock.close(linger=0)

    def __enter__(self) -> GroupWorker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(ack_current=exc_type is None)
