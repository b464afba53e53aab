"""Metadata queries scanned in bounded slices (hidra_ng/receiver/scans.py), no network.

A fake ROUTER records the replies in the order they leave; each call of
``serve`` is one turn of the api loop. So "a get is answered while a query is
still scanning" is a statement about that order, and the bounds (``limit``,
``scan_limit``, records per turn) are counted, never timed.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hidra_ng.errors import NotYetAvailable, QueryError
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver import scans as scans_module
from hidra_ng.receiver.groups import Groups
from hidra_ng.receiver.replay import Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.requests import Requests
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

STREAM = "scan/q"


class FakeRouter:
    """Records (peer, request id, body or error) of each reply, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int, object]] = []

    def send_multipart(self, frames, flags=0, copy=True) -> None:
        reply = proto.decode(proto.Kind.REPLY, proto.Reply, bytes(frames[1]))
        body = reply.error or msgspec.msgpack.decode(reply.body)
        self.sent.append((bytes(frames[0]), reply.id, body))


class Api:
    """Requests with Scans over a store of ``n`` messages of STREAM, meta {"k": index}."""

    def __init__(self, root: Path, n: int) -> None:
        self.store = Store(root / "store", map_bytes=64 << 20)
        self.seq = 0
        self.add(n)
        self.groups = Groups(root / "groups", self.store)
        self.router = FakeRouter()
        self.replies = Replies(self.router, self.groups)  # type: ignore[arg-type]
        self.scans = Scans(self.store, self.replies)
        replays = Replays(self.store, self.replies)
        self.requests = Requests(
            self.store, self.groups, ReceiverMetrics(), self.replies, replays, self.scans
        )
        self.ids = iter(range(1, 1 << 30))

    def add(self, n: int, stream: str = STREAM) -> None:
        batch = []
        for _ in range(n):
            meta = msgspec.json.encode({"k": self.seq})
            header = proto.Header(stream, self.seq, proto.Payload.BYTES, "", (), "none", meta, 0.0)
            batch.append(Incoming(proto.Envelope("det", 1, 0, 0), header, b"x"))
            self.seq += 1
        self.store.append(batch)

    def send(self, cls, peer: bytes = b"peer", **fields) -> int:
        req = cls(id=next(self.ids), **fields)
        self.requests.handle(peer, req)
        return req.id

    def query(self, expr: str, peer: bytes = b"peer", **fields) -> int:
        return self.send(proto.QueryRequest, peer, stream=STREAM, expr=expr, **fields)

    def result(self, req_id: int) -> tuple[list[int], int, bool]:
        """(indices, next, more) of the query reply ``req_id``."""
        (body,) = [b for _, i, b in self.router.sent if i == req_id]
        frames, next_index, more = body  # QueryResult is array-like
        return [f[1] for f in frames], next_index, more

    def run(self, req_id: int, turns: int = 10_000) -> int:
        """Serve turns until ``req_id`` is answered; the number of turns it took."""
        for turn in range(1, turns):
            self.scans.serve()
            if any(i == req_id for _, i, _ in self.router.sent):
                return turn
        raise AssertionError(f"query {req_id} not answered in {turns} turns")

    def close(self) -> None:
        self.groups.close()
        self.store.close()


@pytest.fixture
def api(tmp_path: Path):
    a = Api(tmp_path, 10_000)
    yield a
    a.close()


def test_a_get_is_answered_between_the_slices_of_a_long_query(api):
    query = api.query("meta.k < 0")  # matches nothing: must examine every record
    assert api.router.sent == []  # nothing scanned in the request's own handler
    api.scans.serve()  # one turn: one slice
    get = api.send(proto.GetRequest, stream=STREAM, index=9_999)
    ping = api.send(proto.PingRequest)
    turns = api.run(query)
    assert [i for _, i, _ in api.router.sent] == [get, ping, query]
    assert turns + 1 == -(-10_000 // scans_module.TURN_RECORDS)  # a slice per turn
    assert api.result(query) == ([], 10_000, False)


def test_each_turn_examines_at_most_the_turn_budget(api, monkeypatch):
    examined: list[int] = []
    real = api.store.select

    def select(stream, predicate, start, stop, limit):
        rows, nxt = real(stream, predicate, start, stop, limit)
        examined.append(nxt - start)
        return rows, nxt

    monkeypatch.setattr(api.store, "select", select)
    api.query("meta.k < 0")
    both = api.query("index >= 0", peer=b"other", limit=1_000_000)
    turns = 0
    while api.scans.ready:
        before = len(examined)
        api.scans.serve()
        turns += 1
        assert sum(examined[before:]) <= scans_module.TURN_RECORDS
    assert sum(examined) == 2 * 10_000
    assert turns == -(-2 * 10_000 // scans_module.TURN_RECORDS)
    assert api.result(both) == (list(range(10_000)), 10_000, False)


def test_limit_bounds_the_matches_and_next_says_where_to_go_on(api):
    q = api.query("meta.k >= 100 and meta.k < 200", limit=30)
    api.run(q)
    assert api.result(q) == (list(range(100, 130)), 130, True)
    q = api.query("meta.k >= 100 and meta.k < 200", limit=30, start=130)
    api.run(q)
    assert api.result(q) == (list(range(130, 160)), 160, True)


def test_scan_limit_bounds_the_records_examined(api):
    q = api.query("meta.k >= 5000", scan_limit=3000)  # examines 0..2999: no match
    assert api.run(q) == 1
    assert api.result(q) == ([], 3000, True)
    q = api.query("meta.k >= 5000", scan_limit=3000, start=4000)
    api.run(q)
    assert api.result(q) == (list(range(5000, 7000)), 7000, True)
    q = api.query("meta.k >= 5000", scan_limit=3000, start=9000)
    api.run(q)
    assert api.result(q) == (list(range(9000, 10_000)), 10_000, False)  # the end


@pytest.mark.parametrize("scan_limit", [1, 7, 999, 4096, 5000])
@pytest.mark.parametrize("limit", [1, 3, 0])
def test_pages_joined_are_the_whole_result(api, scan_limit, limit):
    expr = "index in [0, 1, 4095, 4096, 4097, 8191, 9999]"
    whole = api.query(expr, scan_limit=proto.MAX_SCAN_LIMIT)
    api.run(whole)
    expected = api.result(whole)[0]
    got: list[int] = []
    start, more, pages = 0, True, 0
    while more and pages < 20_000:
        q = api.query(expr, start=start, limit=limit, scan_limit=scan_limit)
        api.run(q)
        indices, start, more = api.result(q)
        got += indices
        pages += 1
    assert got == expected == [0, 1, 4095, 4096, 4097, 8191, 9999]


def test_records_stored_after_the_query_began_are_left_to_the_next_page(api):
    q = api.query("true", limit=1_000_000)
    api.add(5)  # committed while the query scans
    api.run(q)
    indices, next_index, more = api.result(q)
    assert (len(indices), next_index, more) == (10_000, 10_000, False)
    q = api.query("true", start=next_index)
    api.run(q)
    assert api.result(q) == (list(range(10_000, 10_005)), 10_005, False)


def test_records_removed_between_slices_are_skipped(api):
    q = api.query("true", limit=1_000_000)
    api.scans.serve()  # the first slice
    while api.store.enforce_retention(max_bytes=1):  # all but the newest record
        pass
    api.run(q)
    assert api.result(q) == ([*range(scans_module.TURN_RECORDS), 9_999], 10_000, False)


def test_errors_come_at_once_and_the_scans_go_on(api):
    running = api.query("true", limit=1_000_000)
    with pytest.raises(QueryError):
        api.scans.start(b"p", proto.QueryRequest(id=99, stream=STREAM, expr="meta.k =="))
    with pytest.raises(NotYetAvailable):
        api.scans.start(b"p", proto.QueryRequest(id=98, stream="scan/none", expr="true"))
    bad = api.query("(")  # through the handler: an error reply, at once
    assert [(i, b) for _, i, b in api.router.sent] == [(bad, "InvalidInput")]
    api.run(running)
    assert len(api.result(running)[0]) == 10_000


def test_at_most_max_scans_at_once_and_a_gone_peer_ends_its_scans(api):
    for n in range(scans_module.MAX_SCANS):
        api.query("true", peer=b"gone" if n % 2 else b"here")
    refused = api.query("true")
    assert api.router.sent[-1][1:] == (refused, "NotYetAvailable")
    api.scans.peer_gone(b"gone")
    assert len(api.scans) == scans_module.MAX_SCANS // 2
    while api.scans.ready:
        api.scans.serve()
    assert {p for p, _, _ in api.router.sent[1:]} == {b"here"}


def test_bad_bounds_are_refused_by_the_request_check():
    for fields in ({"start": -1}, {"scan_limit": -5}, {"limit": 2**63}):
        req = proto.QueryRequest(id=1, stream=STREAM, expr="true", **fields)
        with pytest.raises(Exception, match="is not valid"):
            proto.check_request(req)
