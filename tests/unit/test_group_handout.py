"""A batched next takes new messages a run at a time (receiver/requests.py, groups.py).

``next_many`` hands out the first message as before (a redelivery first if one is
due), then the new messages after it in the same store block at once
(``Groups.hand_out_more``), with one timer per run; ``ack_many`` acks a request's
indices with one group lookup. Over a real Store of packed 1 KiB-ish messages and
real Groups; replies are decoded from a fake ROUTER. No network, no timing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgspec
import pytest

from hidra_ng.errors import NotYetAvailable
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.groups import _KEY, Entry, Groups
from hidra_ng.receiver.replay import Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.requests import Requests, _fitting
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

STREAM = "handout/1"
T0 = 1_700_000_000.0
TIMEOUT = 30.0
WAIT = 30.0  # a bound for the group writer, never reached when things work


class Router:
    """Keeps every reply sent, decoded: (request id, body bytes, payload frames)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, proto.Reply, list[bytes]]] = []

    def send_multipart(self, frames, flags=0, copy=True) -> None:
        reply = proto.decode(proto.Kind.REPLY, proto.Reply, bytes(frames[1]))
        self.sent.append((reply.id, reply, [bytes(f) for f in frames[2:]]))


class Api:
    def __init__(self, root: Path) -> None:
        self.store = Store(root / "store", map_bytes=64 << 20)
        self.seq = 0
        self.groups = Groups(root / "groups", self.store, ack_timeout=TIMEOUT, max_deliveries=5)
        self.router = Router()
        self.replies = Replies(self.router, self.groups)  # type: ignore[arg-type]
        self.requests = Requests(
            self.store,
            self.groups,
            ReceiverMetrics(),
            self.replies,
            Replays(self.store, self.replies),
            Scans(self.store, self.replies),
        )
        self.ids = iter(range(1, 1 << 30))

    def add(self, n: int) -> None:
        """``n`` messages in one commit: the store packs them into blocks."""
        batch = []
        for _ in range(n):
            header = proto.Header(STREAM, self.seq, proto.Payload.BYTES, "", (), "none", b"{}", 0.0)
            payload = b"m%d-" % self.seq + bytes(self.seq % 7) * 100
            batch.append(Incoming(proto.Envelope("det", 1, 0, 0), header, payload))
            self.seq += 1
        self.store.append(batch)

    def next(self, **fields) -> list[tuple[int, int, bytes]]:
        """(index, deliveries, payload) of what one next request got, once durable."""
        req = proto.NextRequest(id=next(self.ids), stream=STREAM, group="g", **fields)
        self.requests.handle(b"peer", req)
        self.replies.release_held()
        self.replies.settle(WAIT)
        rid, reply, payloads = self.router.sent.pop()
        assert rid == req.id and not self.router.sent
        assert not reply.error, reply.message
        if not req.max_count:
            ref = msgspec.msgpack.decode(reply.body, type=proto.FrameRef)
            return [(ref.index, ref.deliveries, payloads[0])]
        batch = msgspec.msgpack.decode(reply.body, type=proto.FrameBatch)
        views = proto.cut_payloads(memoryview(payloads[0]), batch.sizes, len(batch.frames), "t")
        assert {ref.group for ref in batch.frames} == {"g"}
        pairs = zip(batch.frames, views, strict=True)
        return [(ref.index, ref.deliveries, bytes(v)) for ref, v in pairs]

    def payload(self, index: int) -> bytes:
        return b"m%d-" % index + bytes(index % 7) * 100

    def close(self) -> None:
        self.groups.close()
        self.store.close()


@pytest.fixture
def api(tmp_path: Path):
    a = Api(tmp_path)
    yield a
    a.close()


def test_a_batch_of_new_messages_comes_in_order_with_their_payloads(api):
    api.add(40)
    got = api.next(max_count=16)
    assert [(i, d) for i, d, _ in got] == [(i, 1) for i in range(16)]
    assert [p for _, _, p in got] == [api.payload(i) for i in range(16)]
    group = api.groups.group(STREAM, "g")
    assert group.meta.position == 16 and sorted(group.entries) == list(range(16))
    got = api.next(max_count=100, indices=tuple(range(16)))  # acks 0..15, takes the rest
    assert [i for i, _, _ in got] == list(range(16, 40))
    assert sorted(group.entries) == list(range(16, 40))


def test_a_batch_spans_several_commits_blocks(api):
    for n in (3, 5, 2):  # three commits: three blocks
        api.add(n)
    got = api.next(max_count=9)
    assert [i for i, _, _ in got] == list(range(9))
    assert [p for _, _, p in got] == [api.payload(i) for i in range(9)]
    assert [i for i, _, _ in api.next(max_count=9)] == [9]


def test_a_due_redelivery_comes_first_then_new_messages(api):
    api.add(10)
    assert [i for i, _, _ in api.next(max_count=4)] == [0, 1, 2, 3]
    api.requests.handle(
        b"peer", proto.NackRequest(id=999, stream=STREAM, group="g", index=2, delay=0.0)
    )
    api.replies.release_held()
    api.replies.settle(WAIT)
    api.router.sent.clear()
    got = api.next(max_count=4)
    assert [(i, d) for i, d, _ in got] == [(2, 2), (4, 1), (5, 1), (6, 1)]
    assert [p for _, _, p in got] == [api.payload(i) for i in (2, 4, 5, 6)]


def test_messages_committed_after_the_hand_outs_read_began_wait_for_the_next_request(api):
    """The store's meta moves once a commit is done, so a read begun just before cannot hold
    that commit's messages: they are handed out by the next request, not reported as removed
    (a fault run saw "index 384 ... was removed by retention" with no retention at all)."""
    api.add(10)
    plain_reader = api.store.reader

    @contextlib.contextmanager
    def reader_then_a_commit(stream: str):
        with plain_reader(stream) as read:
            api.add(10)  # the committer's commit, landing while the hand-out reads
            yield read

    api.store.reader = reader_then_a_commit
    got = api.next(max_count=100)
    assert [(i, d, p) for i, d, p in got] == [(i, 1, api.payload(i)) for i in range(10)]
    api.store.reader = plain_reader
    got = api.next(max_count=100)
    assert [(i, d, p) for i, d, p in got] == [(i, 1, api.payload(i)) for i in range(10, 20)]


def test_a_read_begun_before_a_commit_says_its_messages_are_not_written_yet(api):
    api.add(5)
    with api.store.reader(STREAM) as read:
        api.add(5)  # committed (the store's meta shows it) after the read began
        assert bytes(read(4)[1]) == api.payload(4)
        with pytest.raises(NotYetAvailable, match=r"index 7 .* not written yet"):
            read(7)
        with pytest.raises(NotYetAvailable):
            read.run(5, 3)
    with api.store.reader(STREAM) as read:
        assert bytes(read(7)[1]) == api.payload(7)


def test_a_plain_next_takes_one(api):
    api.add(3)
    assert api.next() == [(0, 1, api.payload(0))]
    assert api.next() == [(1, 1, api.payload(1))]


def test_hand_out_more_stops_at_the_last_stored_message(api):
    api.add(5)
    g = api.groups
    group = g.group(STREAM, "g")
    assert g.hand_out(group, now=T0) == 0
    assert g.hand_out_more(group, 10, now=T0) == 4
    assert group.meta.position == 5
    assert {i: (e.deliveries, e.due) for i, e in group.entries.items()} == {
        i: (1, T0 + TIMEOUT) for i in range(5)
    }
    assert g.hand_out_more(group, 10, now=T0) == 0


def test_a_runs_timer_lasts_while_any_of_it_is_out(api):
    api.add(6)
    g = api.groups
    group = g.group(STREAM, "g")
    assert g.hand_out(group, now=T0) == 0
    assert g.hand_out_more(group, 5, now=T0) == 5  # one timer for 1..5
    g.ack_many(STREAM, "g", [0, 1, 2, 4, 5])
    assert g.next_due() == T0 + TIMEOUT  # 3 is still out
    assert g.due_groups(now=T0 + TIMEOUT) == {(STREAM, "g")}
    assert g.hand_out(group, now=T0 + TIMEOUT) == 3  # redelivered, with a timer of its own
    g.ack_many(STREAM, "g", [3])
    assert g.next_due() is None  # every timer is stale now


def test_ack_many_acks_what_is_out_and_ignores_the_rest(api):
    api.add(4)
    g = api.groups
    group = g.group(STREAM, "g")
    g.hand_out(group, now=T0)
    g.hand_out_more(group, 3, now=T0)
    g.ack_many(STREAM, "g", [1, 3, 3, 9])  # 3 twice, 9 never handed out
    assert sorted(group.entries) == [0, 2]


def test_a_runs_entries_are_committed_each_with_its_own_key(api):
    api.add(7)
    api.next(max_count=6)
    assert [i for i, _, _ in api.next(max_count=1, indices=(1, 4))] == [6]
    gid = api.groups.group(STREAM, "g").meta.id
    stored = {}
    with api.groups.env.read() as txn:
        for key, value in txn.cursor(db=api.groups.env.dbs["entries"]):
            kgid, index = _KEY.unpack(key)
            assert kgid == gid
            stored[index] = msgspec.msgpack.decode(bytes(value), type=Entry).deliveries
    assert stored == {0: 1, 2: 1, 3: 1, 5: 1, 6: 1}


@pytest.mark.parametrize(
    ("sizes", "size", "expected"),
    [
        ([10, 10, 10], 0, (3, 30)),
        ([10, 10, 10], 95, (1, 10)),  # below the limit: one more, whatever its size
        ([60, 60], 0, (2, 120)),
        ([], 0, (0, 0)),
    ],
)
def test_fitting_takes_messages_while_the_reply_is_below_the_limit(sizes, size, expected):
    assert _fitting(sizes, size, 100) == expected
