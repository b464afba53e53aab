"""Requests that wait: a ``get``/``last`` of a future index, a ``next`` with nothing due.

Nothing in the api thread blocks: such a request is parked here until a commit
of its stream (or a due redelivery) answers it, or its deadline passes and it
is answered as if it had not waited (``NotYetAvailable``).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from hidra_ng.errors import NotYetAvailable
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

#: the requests that may wait
Waiting = proto.LastRequest | proto.GetRequest | proto.NextRequest


@dataclass(order=True)
class Waiter:
    deadline: float
    order: int
    ident: bytes = field(compare=False)
    request: Waiting = field(compare=False)
    done: bool = field(default=False, compare=False)


class Waiters:
    """Parked requests by stream, and their deadlines."""

    def __init__(
        self,
        store: Store,
        retry: Callable[[bytes, Waiting], bool],
        expired: Callable[[bytes, Waiting], None],
    ) -> None:
        self.store = store
        #: try a request again without waiting: True once it is answered
        self.retry = retry
        #: handle a request whose deadline passed, without waiting
        self.expired = expired
        self._by_stream: dict[str, list[Waiter]] = {}
        self._deadlines: list[Waiter] = []
        self._order = itertools.count()

    def wait_or_fail(self, ident: bytes, req: Waiting, index: int | None = None) -> None:
        """Fail now if the answer can never come or the request does not wait; else wait."""
        if index is not None and (req.timeout <= 0 or self.store.is_finished(req.stream)):
            self.store.check_index(req.stream, index)  # NotYetAvailable or StreamFinished
        if req.timeout <= 0:
            raise NotYetAvailable(f"nothing for {req.op} on stream {req.stream!r} yet")
        deadline = time.monotonic() + min(req.timeout, proto.MAX_WAIT_SECONDS)
        waiter = Waiter(deadline, next(self._order), ident, req)
        self._by_stream.setdefault(req.stream, []).append(waiter)
        heapq.heappush(self._deadlines, waiter)

    def waiting(self, stream: str) -> int:
        """How many requests of ``stream`` are parked (for tests and status; any thread)."""
        return sum(not w.done for w in list(self._by_stream.get(stream, ())))

    def next_deadline(self) -> float | None:
        return self._deadlines[0].deadline if self._deadlines else None

    def wake(self, stream: str) -> None:
        """Try the waiting requests of ``stream`` again after something changed there."""
        for w in self._by_stream.pop(stream, []):
            if w.done:
                continue
            if self.retry(w.ident, msgspec.structs.replace(w.request, timeout=0.0)):
                w.done = True
            else:
                self._by_stream.setdefault(stream, []).append(w)

    def cancel(self, ident: bytes, request_id: int) -> bool:
        """Answer ``ident``'s waiting request ``request_id`` now, as if its time were up."""
        for waiters in self._by_stream.values():
            for w in waiters:
                if not w.done and w.ident == ident and w.request.id == request_id:
                    w.done = True
                    self.expired(ident, msgspec.structs.replace(w.request, timeout=0.0))
                    return True
        return False

    def expire(self) -> None:
        """Answer the requests whose deadline passed."""
        now = time.monotonic()
        while self._deadlines and self._deadlines[0].deadline <= now:
            w = heapq.heappop(self._deadlines)
            if w.done:
                continue
            w.done = True
            stream = w.request.stream
            pending = [x for x in self._by_stream.get(stream, []) if not x.done]
            if pending:
                self._by_stream[stream] = pending
            else:
                self._by_stream.pop(stream, None)
            self.expired(w.ident, msgspec.structs.replace(w.request, timeout=0.0))
