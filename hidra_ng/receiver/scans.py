"""Metadata queries, scanned a bounded slice a turn between the api's other requests.

A query over millions of records must never hold the api thread (issue 17 item
5): gets, nexts and acks that arrive while it runs are answered between its
slices. So a query request only starts a scan; each turn of the api loop
examines at most :data:`TURN_RECORDS` records, shared round-robin by the scans
in progress, each slice in its own read transaction (the store's rule: no read
transaction held across a turn).

A scan ends, and its one reply (:class:`~hidra_ng.wire.protocol.QueryResult`)
goes out, when it has ``limit`` matches, has examined ``scan_limit`` records,
or has reached the last record stored when the query began. The reply's
``next`` is the first index not examined and ``more`` says whether a bound
stopped it before that last record: a client goes on with ``start=next``
(``Consumer.query`` does). Records that retention removes between two slices
are not examined; records stored after the query began are left to a query
from ``next``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import msgspec

from hidra_ng.errors import HidraError, NotYetAvailable
from hidra_ng.receiver.query import Predicate, compile_query
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

#: records examined per api turn, all scans together: a few ms of the api thread
TURN_RECORDS = 4096
#: scans in progress at once; each holds up to ``limit`` matches until its reply
MAX_SCANS = 16


@dataclass
class Scan:
    ident: bytes
    id: int
    stream: str
    predicate: Predicate
    next: int  # the first index not examined yet
    end: int  # the scan stops here: start + scan_limit, or the stream's end when it began
    limit: int  # matches at most
    bounded: bool  # ``end`` is the scan_limit's, before the stream's end
    frames: list[proto.FrameRef] = field(default_factory=list)


class Scans:
    """The queries in progress; :meth:`serve` runs one slice of them per api turn."""

    def __init__(self, store: Store, replies: Replies) -> None:
        self.store = store
        self.replies = replies
        self._scans: deque[Scan] = deque()

    @property
    def ready(self) -> bool:
        """Some scan has records left to examine: the api loop must not sleep."""
        return bool(self._scans)

    def __len__(self) -> int:
        return len(self._scans)

    def start(self, ident: bytes, req: proto.QueryRequest) -> None:
        """Check the query and begin its scan; errors are raised here, before any reply."""
        proto.check_stream_name(req.stream)
        predicate = compile_query(req.expr)
        info = self.store.info(req.stream)  # NotYetAvailable for a stream with no messages
        if len(self._scans) >= MAX_SCANS:
            raise NotYetAvailable(
                f"the receiver is running {MAX_SCANS} queries, its most at once; ask again"
                " when one has answered"
            )
        limit = min(req.limit or proto.DEFAULT_QUERY_LIMIT, proto.MAX_QUERY_LIMIT)
        scan_limit = min(req.scan_limit or proto.DEFAULT_SCAN_LIMIT, proto.MAX_SCAN_LIMIT)
        stored_end = self.store.next_index(req.stream)
        start = max(req.start, info.first)
        end = min(stored_end, start + scan_limit)
        scan = Scan(ident, req.id, req.stream, predicate, start, end, limit, end < stored_end)
        self._scans.append(scan)

    def peer_gone(self, ident: bytes) -> None:
        """A consumer disconnected: its scans end unanswered."""
        self._scans = deque(s for s in self._scans if s.ident != ident)

    def serve(self) -> None:
        """One turn: a slice of every scan, TURN_RECORDS records in all; answer those done."""
        if not self._scans:
            return
        share = max(1, TURN_RECORDS // len(self._scans))
        for _ in range(len(self._scans)):
            scan = self._scans.popleft()
            try:
                done = self._slice(scan, share)
            except HidraError as err:  # the store failed, or the stream is gone
                self.replies.reply_error(scan.ident, scan.id, err)
                continue
            if done:
                self._answer(scan)
            else:
                self._scans.append(scan)

    def _slice(self, scan: Scan, records: int) -> bool:
        """Examine up to ``records`` records of ``scan``; True once it is done."""
        stop = min(scan.end, scan.next + records)
        if scan.next < stop:
            rows, scan.next = self.store.select(
                scan.stream, scan.predicate, scan.next, stop, scan.limit - len(scan.frames)
            )
            scan.frames.extend(proto.FrameRef(scan.stream, i, msgspec.Raw(r)) for i, r in rows)
        return len(scan.frames) >= scan.limit or scan.next >= scan.end

    def _answer(self, scan: Scan) -> None:
        more = scan.bounded or scan.next < scan.end
        result = proto.QueryResult(scan.frames, scan.next, more)
        self.replies.reply(scan.ident, scan.id, result)
