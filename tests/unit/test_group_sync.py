"""Group state is durable before a reply confirms a change of it (SPEC G8, issue 17 item 4).

The api's request handlers and its outgoing side run here over a real Store and
Groups with a fake ROUTER that records what is sent; the groups environment's
write and sync are wrapped to record when a commit (its pages flushed) and a
sync (the meta page flushed) return, and a commit can be held back. The order of
those events shows that no reply confirming a hand-out, an ack or a nack leaves
before its commit is durable, that one turn's changes cost one commit and one
sync whatever their number, and that turns queued while a commit runs share the
next commit, whose page flush makes the one before durable without a sync of its
own. No network, no timing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hidra_ng.errors import StorageError
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.groups import _KEY, Groups
from hidra_ng.receiver.replay import Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.requests import Requests
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

STREAM = "sync/1"
WAIT = 30.0  # a bound for the writer thread, never reached when things work


class FakeRouter:
    """Records ("send", request id) for each reply; never blocks."""

    def __init__(self, events: list) -> None:
        self.events = events

    def send_multipart(self, frames, flags=0, copy=True) -> None:
        reply = proto.decode(proto.Kind.REPLY, proto.Reply, bytes(frames[1]))
        self.events.append(("send", reply.id))


class Api:
    """Requests -> Replies -> FakeRouter, over a store holding ``n`` messages of STREAM."""

    def __init__(self, root: Path, n: int) -> None:
        self.events: list = []
        self.store = Store(root / "store", map_bytes=64 << 20)
        batch = []
        for seq in range(n):
            header = proto.Header(STREAM, seq, proto.Payload.BYTES, "", (), "none", b"{}", 0.0)
            batch.append(Incoming(proto.Envelope("det", 1, 0, 0), header, b"m%d" % seq))
        self.store.append(batch)
        self.groups = Groups(root / "groups", self.store, ack_timeout=30.0)
        self.gate = threading.Event()  # cleared: the next commit waits for it
        self.gate.set()
        self.entered = threading.Event()  # a commit began
        self.fail_next = False
        real_write = self.groups.env.write

        def write(fill):
            self.entered.set()
            assert self.gate.wait(WAIT)
            if self.fail_next:
                self.fail_next = False
                raise StorageError("LMDB write at groups failed: [Errno 28] No space left")
            result = real_write(fill)
            self.events.append("commit")
            return result

        real_sync = self.groups.env.sync

        def sync() -> None:
            real_sync()
            self.events.append("sync")

        self.groups.env.write = write  # type: ignore[method-assign]
        self.groups.env.sync = sync  # type: ignore[method-assign]
        self.replies = Replies(FakeRouter(self.events), self.groups)  # type: ignore[arg-type]
        replays = Replays(self.store, self.replies)
        scans = Scans(self.store, self.replies)
        self.requests = Requests(
            self.store, self.groups, ReceiverMetrics(), self.replies, replays, scans
        )
        self.ids = iter(range(1, 1 << 30))

    def turn(self) -> None:
        """The end of an api turn, and the writer's report if it is in."""
        self.replies.release_held()
        self.replies.on_written()

    def settle(self) -> None:
        self.replies.settle(WAIT)

    def handle(self, cls, **fields) -> int:
        req = cls(id=next(self.ids), **fields)
        self.requests.handle(b"peer", req)
        return req.id

    def next(self, **fields) -> int:
        return self.handle(proto.NextRequest, stream=STREAM, group="g", **fields)

    def close(self) -> None:
        self.gate.set()
        self.groups.close()
        self.store.close()


@pytest.fixture
def api(tmp_path: Path):
    a = Api(tmp_path, 64)
    yield a
    a.close()


def test_replies_confirming_group_changes_leave_only_after_the_commit(api):
    api.gate.clear()  # the commit is still flushing
    first = [api.next(max_count=4) for _ in range(3)]  # 12 hand-outs, a new group
    api.turn()
    api.turn()
    assert api.events == []  # nothing confirmed before the commit returned
    assert api.replies.waiting == 3
    api.gate.set()
    api.settle()
    assert api.events == ["commit", "sync", *(("send", i) for i in first)]

    api.events.clear()
    later = [
        api.handle(proto.AckRequest, stream=STREAM, group="g", indices=(0, 1, 2)),
        api.handle(proto.NackRequest, stream=STREAM, group="g", index=3, delay=5.0),
        api.next(max_count=2, indices=(4, 5)),  # acks 4 and 5, hands out 12 and 13
        api.next(),
    ]
    assert api.events == []  # held until the end of the turn and its commit
    api.turn()
    api.settle()
    assert api.events == ["commit", "sync", *(("send", i) for i in later)]


def test_n_changes_in_one_turn_cost_one_commit_and_a_turn_without_changes_none(api):
    ids = [api.next() for _ in range(40)]
    ids.append(api.handle(proto.AckRequest, stream=STREAM, group="g", indices=tuple(range(40))))
    api.turn()
    api.settle()
    assert api.events == ["commit", "sync", *(("send", i) for i in ids)]
    assert (api.groups.writer.commits, api.groups.writer.syncs) == (1, 1)

    api.events.clear()
    ping = api.handle(proto.PingRequest)
    get = api.handle(proto.GetRequest, stream=STREAM, index=7)
    api.turn()
    assert api.events == [("send", ping), ("send", get)]  # at once, and no commit
    assert api.groups.writer.idle


def test_turns_queued_while_a_commit_flushes_share_the_next_commit(api):
    api.gate.clear()
    turns = []
    for _ in range(4):
        turns.append([api.next(max_count=2), api.next(max_count=3)])
        api.turn()
        assert api.entered.wait(WAIT)  # the first turn's commit began before the others
    assert api.events == []
    api.gate.set()
    api.settle()
    # the first turn's commit, then one for the three turns that queued behind it, whose
    # page flush also flushed the first one's meta page; then a sync for the second
    assert (api.groups.writer.commits, api.groups.writer.syncs) == (2, 1)
    sends = [("send", i) for t in turns for i in t]
    assert api.events == ["commit", "commit", "sync", *sends]


def test_a_reply_that_changes_nothing_still_waits_for_the_commit_before_it(api):
    api.gate.clear()
    handed = api.next(max_count=4)
    api.turn()
    again = api.handle(proto.AckRequest, stream=STREAM, group="g", indices=(9,))  # not out
    api.turn()
    assert api.events == []
    api.gate.set()
    api.settle()
    assert api.events == ["commit", "sync", ("send", handed), ("send", again)]


def test_an_error_reply_after_a_group_change_waits_for_the_commit_too(api):
    handed = api.next(max_count=64)  # everything handed out
    failing = api.next(timeout=0.0, indices=(0,))  # acks 0, then NotYetAvailable
    assert api.events == []
    api.turn()
    api.settle()
    assert api.events == ["commit", "sync", ("send", handed), ("send", failing)]


def test_a_failed_commit_confirms_nothing_and_the_next_one_retries_its_changes(api):
    api.fail_next = True
    first = api.next(max_count=4)
    api.turn()
    api.settle()
    assert api.events == []  # withheld: the member asks again
    again = api.next(max_count=4)
    api.turn()
    api.settle()
    assert api.events == ["commit", "sync", ("send", again)]
    assert ("send", first) not in api.events
    assert stored_entries(api) == list(range(8))  # the failed turn's hand-outs too


def test_confirmed_changes_are_in_a_durable_environment(api):
    api.next(max_count=8)
    api.handle(proto.AckRequest, stream=STREAM, group="g", indices=(0, 1))
    api.turn()
    api.settle()
    assert stored_entries(api) == [2, 3, 4, 5, 6, 7]  # in flight, as the replies said
    # a commit flushes its pages before its meta page points at them (LMDB's integrity
    # on a crash); the meta page is flushed by the sync the events show
    assert api.groups.env._env.flags()["sync"]


def stored_entries(api: Api) -> list[int]:
    with api.groups.env.read() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=api.groups.env.dbs["entries"])]
    return sorted(_KEY.unpack(k)[1] for k in keys)
