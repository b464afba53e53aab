"""Consumer-group state and logic (hidra_ng/receiver/groups.py) over a real Store, no network.

Time is passed explicitly (``now``), so ack timeouts and nack delays are tested
without sleeping.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.errors import InvalidInput, NotYetAvailable, StreamFinished
from hidra_ng.receiver.groups import _KEY, Entry, GroupMeta, Groups
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

T0 = 1_700_000_000.0  # a wall-clock time; every call passes its own ``now``
TIMEOUT = 10.0
STREAM = "scan/1"


class Setup:
    """A store with one sender appending to STREAM, and the Groups of that store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store(root / "store", map_bytes=64 << 20)
        self.seq = 0
        self.groups = self.open_groups()

    def open_groups(self) -> Groups:
        return Groups(self.root / "groups", self.store, ack_timeout=TIMEOUT, max_deliveries=3)

    def add(self, n: int, stream: str = STREAM, finish: bool = False) -> None:
        batch = []
        for _ in range(n + finish):
            last = finish and len(batch) == n
            kind = proto.Payload.FINISH if last else proto.Payload.BYTES
            header = proto.Header(stream, self.seq, kind, "", (), "none", b"{}", 0.0)
            payload = b"" if last else f"m{self.seq}".encode()
            batch.append(Incoming(proto.Envelope("det", 1, 0, 0), header, payload))
            self.seq += 1
        self.store.append(batch)

    def reopen(self) -> Groups:
        self.groups.close()
        self.groups = self.open_groups()
        return self.groups

    def close(self) -> None:
        self.groups.close()
        self.store.close()


@pytest.fixture
def env(tmp_path: Path):
    setup = Setup(tmp_path)
    yield setup
    setup.close()


def hand(groups: Groups, name: str = "g", now: float = T0, stream: str = STREAM) -> int:
    return groups.hand_out(groups.group(stream, name), now=now)


def hand_all(groups: Groups, name: str = "g", now: float = T0) -> list[int]:
    """Everything the group hands out at ``now`` until NotYetAvailable."""
    out = []
    while True:
        try:
            out.append(hand(groups, name, now))
        except NotYetAvailable:
            return out


# ------------------------------------------------------------- hand-out


def test_new_messages_go_out_in_index_order_once(env):
    env.add(5)
    assert hand_all(env.groups) == [0, 1, 2, 3, 4]
    assert hand_all(env.groups, now=T0 + TIMEOUT - 0.001) == []  # all in flight, none due
    env.add(2)
    assert hand_all(env.groups) == [5, 6]


def test_a_new_group_on_an_empty_or_unknown_stream_waits(env):
    with pytest.raises(NotYetAvailable):
        hand(env.groups, stream="nothing/yet")
    env.add(1, stream="nothing/yet")
    assert hand(env.groups, stream="nothing/yet") == 0


def test_ack_timeout_redelivers_the_lowest_due_first(env):
    env.add(4)
    g = env.groups
    assert [hand(g, now=T0), hand(g, now=T0 + 1), hand(g, now=T0 + 2)] == [0, 1, 2]
    g.ack(STREAM, "g", 1)
    # before the timeout: new messages only
    assert hand(g, now=T0 + TIMEOUT - 0.001) == 3
    assert hand_all(g, now=T0 + TIMEOUT - 0.001) == []
    # at the timeout of 0, it comes back; 2 is due a second later
    assert hand_all(g, now=T0 + TIMEOUT) == [0]
    assert hand_all(g, now=T0 + TIMEOUT + 2) == [2]
    group = g.group(STREAM, "g")
    assert {i: e.deliveries for i, e in group.entries.items()} == {0: 2, 2: 2, 3: 1}
    assert group.entries[0].due == T0 + 2 * TIMEOUT  # a redelivery gets a fresh timeout
    assert g.redelivered == [(STREAM, "g"), (STREAM, "g")]


def test_redeliveries_go_out_before_new_messages(env):
    env.add(6)
    g = env.groups
    assert hand_all(g) == [0, 1, 2, 3, 4, 5]
    env.add(3)  # 6, 7, 8 are new
    assert g.nack(STREAM, "g", 4, delay=0.0, now=T0 + 1)
    assert g.nack(STREAM, "g", 2, delay=0.0, now=T0 + 1)
    assert [hand(g, now=T0 + 1) for _ in range(4)] == [2, 4, 6, 7]


def test_nack_with_delay(env):
    env.add(2)
    g = env.groups
    assert hand_all(g) == [0, 1]
    assert g.nack(STREAM, "g", 0, delay=5.0, now=T0 + 1)
    assert hand_all(g, now=T0 + 5.999) == []
    assert hand_all(g, now=T0 + 6.0) == [0]
    assert g.group(STREAM, "g").entries[0].deliveries == 2
    # a negative delay counts as none
    assert g.nack(STREAM, "g", 1, delay=-3.0, now=T0 + 7)
    assert hand_all(g, now=T0 + 7) == [1]


def test_nack_or_ack_of_what_is_not_outstanding_is_refused(env):
    env.add(2)
    g = env.groups
    assert hand_all(g) == [0, 1]
    assert g.ack(STREAM, "g", 0) is True
    assert g.ack(STREAM, "g", 0) is False  # acked before
    assert g.nack(STREAM, "g", 0, delay=0.0, now=T0) is False
    assert g.ack(STREAM, "g", 7) is False  # never handed out
    assert hand_all(g, now=T0 + 100 * TIMEOUT) == [1]  # 0 stays acked
    with pytest.raises(NotYetAvailable, match="no group 'other'"):
        g.ack(STREAM, "other", 0)


def test_parked_after_max_deliveries(env):
    env.add(2)
    g = env.groups  # max_deliveries=3
    assert hand_all(g, now=T0) == [0, 1]
    g.ack(STREAM, "g", 1)
    for k in (1, 2):
        assert hand_all(g, now=T0 + k * TIMEOUT) == [0]
    assert g.group(STREAM, "g").entries[0].deliveries == 3
    assert g.parked(STREAM, "g") == []
    # the 4th time it is due it is parked, not handed out
    assert hand_all(g, now=T0 + 3 * TIMEOUT) == []
    assert g.parked(STREAM, "g") == [0]
    assert g.parked_now == [(STREAM, "g")]
    assert g.pending() == {(STREAM, "g"): 0}
    assert g.nack(STREAM, "g", 0, delay=0.0, now=T0 + 4 * TIMEOUT) is False
    assert hand_all(g, now=T0 + 10 * TIMEOUT) == []
    assert g.next_due() is None


def test_nacks_count_as_deliveries_toward_parking(env):
    env.add(1)
    g = env.groups
    for k in range(3):
        assert hand(g, now=T0 + k) == 0
        assert g.nack(STREAM, "g", 0, delay=0.0, now=T0 + k)
    assert hand_all(g, now=T0 + 3) == []
    assert g.parked(STREAM, "g") == [0]


def test_group_settings_per_group(env):
    env.add(1)
    g = env.groups
    group = g.group(STREAM, "fast", ack_timeout=1.0, max_deliveries=1)
    assert g.hand_out(group, now=T0) == 0
    assert hand_all(g, "fast", now=T0 + 1.0) == []  # due, but 1 delivery is the maximum
    assert g.parked(STREAM, "fast") == [0]
    assert g.group(STREAM, "g").meta.ack_timeout == TIMEOUT  # the receiver's default
    assert g.group(STREAM, "g").meta.max_deliveries == 3
    # given again, the settings change; omitted, they stay
    assert g.group(STREAM, "fast", ack_timeout=2.5).meta.ack_timeout == 2.5
    assert g.group(STREAM, "fast").meta.max_deliveries == 1


@pytest.mark.parametrize("name", ["", "a b", "x/y", "é", "a" * 101, 5])
def test_invalid_group_names(env, name):
    with pytest.raises(InvalidInput, match="group name"):
        env.groups.group(STREAM, name)


def test_invalid_group_settings(env):
    with pytest.raises(InvalidInput, match="ack_timeout -1"):
        env.groups.group(STREAM, "bad", ack_timeout=-1.0)
    with pytest.raises(InvalidInput, match="max_deliveries 0"):
        env.groups.group(STREAM, "worse", max_deliveries=0)
    with pytest.raises(InvalidInput, match="stream name"):
        env.groups.group("bad stream", "g")
    assert env.groups.pending() == {}  # no group was made


@pytest.mark.parametrize(
    "settings",
    [
        {"ack_timeout": -1.0},
        {"ack_timeout": 0.0},
        {"ack_timeout": float("inf")},
        {"ack_timeout": float("nan")},
        {"ack_timeout": 1e308},
        {"max_deliveries": -1},
        {"max_deliveries": 0},
        {"max_deliveries": 10**9},
    ],
)
def test_a_request_with_bad_settings_leaves_the_group_as_it_was(env, settings):
    """Regression: bad settings were stored before the check, and broke the group for good
    (every later request failed); infinite or NaN times broke the api thread's poll."""
    env.add(2)
    g = env.groups
    assert hand(g) == 0
    with pytest.raises(InvalidInput, match="is not valid; expected"):
        g.group(STREAM, "g", **settings)
    with pytest.raises(InvalidInput, match="is not valid; expected"):
        g.group(STREAM, "fresh", **settings)
    assert hand(g) == 1  # still works, with its settings
    assert (g.group(STREAM, "g").meta.ack_timeout, g.group(STREAM, "g").meta.max_deliveries) == (
        TIMEOUT,
        3,
    )
    assert (STREAM, "fresh") not in g.pending()
    g = env.reopen()
    assert g.group(STREAM, "g").meta.ack_timeout == TIMEOUT


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e308, 8 * 24 * 3600.0])
def test_nack_delay_must_be_a_finite_time(env, delay):
    env.add(1)
    g = env.groups
    assert hand(g) == 0
    with pytest.raises(InvalidInput, match=r"nack delay .* is not valid"):
        g.nack(STREAM, "g", 0, delay=delay, now=T0)
    assert g.group(STREAM, "g").entries[0].due == T0 + TIMEOUT  # unchanged
    assert g.nack(STREAM, "g", 0, delay=7 * 24 * 3600.0, now=T0)  # a week is the longest
    assert g.next_due() == T0 + 7 * 24 * 3600.0


# ------------------------------------------------------------ finished


def test_stream_finished_only_when_finished_and_everything_acked(env):
    env.add(3)
    g = env.groups
    assert hand_all(g) == [0, 1, 2]
    for i in (0, 1, 2):
        g.ack(STREAM, "g", i)
    with pytest.raises(NotYetAvailable):  # all acked, but not finished: more may come
        hand(g)
    env.add(2, finish=True)
    assert hand_all(g) == [3, 4]
    g.ack(STREAM, "g", 3)
    # 4 is in flight elsewhere: wait for its ack or redelivery, no StreamFinished
    with pytest.raises(NotYetAvailable):
        hand(g, now=T0 + 1)
    assert hand(g, now=T0 + TIMEOUT) == 4  # its redelivery
    with pytest.raises(NotYetAvailable):
        hand(g, now=T0 + TIMEOUT)
    g.ack(STREAM, "g", 4)
    with pytest.raises(StreamFinished, match="every message is acknowledged"):
        hand(g, now=T0 + TIMEOUT)
    assert g.pending() == {(STREAM, "g"): 0}


def test_nacked_message_of_a_finished_stream_is_not_finished(env):
    env.add(1, finish=True)
    g = env.groups
    assert hand(g) == 0
    g.nack(STREAM, "g", 0, delay=3.0, now=T0)
    with pytest.raises(NotYetAvailable):
        hand(g, now=T0 + 1)
    assert hand(g, now=T0 + 3) == 0


def test_parked_messages_do_not_block_finishing(env):
    env.add(2, finish=True)
    g = env.groups
    group = g.group(STREAM, "g", max_deliveries=1)
    assert g.hand_out(group, now=T0) == 0
    assert g.hand_out(group, now=T0) == 1
    g.ack(STREAM, "g", 1)
    with pytest.raises(NotYetAvailable):
        g.hand_out(group, now=T0 + 1)
    with pytest.raises(StreamFinished):
        g.hand_out(group, now=T0 + TIMEOUT)  # 0 is parked on the way
    assert g.parked(STREAM, "g") == [0]


def test_a_new_group_on_a_finished_stream_reads_it_all(env):
    env.add(2, finish=True)
    assert hand_all(env.groups, "late") == [0, 1]


def test_finished_empty_stream_is_finished_at_once(env):
    env.add(0, finish=True)
    with pytest.raises(StreamFinished):
        hand(env.groups)


# --------------------------------------------------------- independence


def test_groups_are_independent(env):
    env.add(3)
    g = env.groups
    assert hand_all(g, "a") == [0, 1, 2]
    assert hand_all(g, "b") == [0, 1, 2]
    g.ack(STREAM, "a", 0)
    g.nack(STREAM, "b", 1, delay=0.0, now=T0)
    assert hand_all(g, "a") == []
    assert hand_all(g, "b") == [1]
    assert hand_all(g, "a", now=T0 + TIMEOUT) == [1, 2]
    assert hand_all(g, "b", now=T0 + TIMEOUT) == [0, 1, 2]
    assert g.pending() == {(STREAM, "a"): 2, (STREAM, "b"): 3}


def test_same_group_name_on_two_streams_is_two_groups(env):
    env.add(2)
    env.add(2, stream="scan/2")
    g = env.groups
    assert hand(g) == 0
    assert hand(g, stream="scan/2") == 0
    g.ack(STREAM, "g", 0)
    assert g.group("scan/2", "g").entries.keys() == {0}
    assert g.pending() == {(STREAM, "g"): 1, ("scan/2", "g"): 2}


# ---------------------------------------------------------- durability


def test_state_survives_close_and_reopen(env):
    env.add(8)
    g = env.groups
    assert hand_all(g, "a", now=T0) == list(range(8))
    g.ack(STREAM, "a", 1)
    g.nack(STREAM, "a", 2, delay=100.0, now=T0)
    group = g.group(STREAM, "a", max_deliveries=1)
    # 3 goes out again and is parked: 3 deliveries would be needed with the default
    assert hand_all(g, "a", now=T0 + TIMEOUT) == []
    assert g.parked(STREAM, "a") == [0, 3, 4, 5, 6, 7]
    # a second group in mid-flight, with its own settings
    group = g.group(STREAM, "b", ack_timeout=50.0, max_deliveries=4)
    assert [g.hand_out(group, now=T0) for _ in range(3)] == [0, 1, 2]
    g.ack(STREAM, "b", 0)
    before = {k: (v.meta, dict(v.entries)) for k, v in g._groups.items()}

    g = env.reopen()
    after = {k: (v.meta, dict(v.entries)) for k, v in g._groups.items()}
    assert after == before
    assert g.parked(STREAM, "a") == [0, 3, 4, 5, 6, 7]
    # group a: 2 is due at T0 + 100 (nack delay), nothing new before
    assert hand_all(g, "a", now=T0 + 99) == []
    env.add(1)  # index 8: a's position is 8
    assert hand_all(g, "a", now=T0 + 99) == [8]
    g.group(STREAM, "a", max_deliveries=3)  # 2 was delivered once: it may go again
    assert hand_all(g, "a", now=T0 + 100) == [2]
    assert g.parked(STREAM, "a") == [0, 3, 4, 5, 6, 7]  # parked stays parked
    # group b: position 3, 1 and 2 in flight until T0 + 50, 4 deliveries allowed
    assert hand_all(g, "b", now=T0 + 49) == [3, 4, 5, 6, 7, 8]
    assert hand_all(g, "b", now=T0 + 50) == [1, 2]
    assert g.group(STREAM, "b").meta.max_deliveries == 4
    # a group created after the reopen gets a fresh id: its state is its own
    assert hand_all(g, "c", now=T0) == list(range(9))
    assert g.group(STREAM, "c").meta.id not in (
        g.group(STREAM, "a").meta.id,
        g.group(STREAM, "b").meta.id,
    )


def test_commit_writes_what_a_reopen_reads(env):
    env.add(3)
    g = env.groups
    assert hand_all(g) == [0, 1, 2]
    g.ack(STREAM, "g", 0)
    g.write()
    g.ack(STREAM, "g", 1)  # not committed before close: close commits it
    g = env.reopen()
    assert sorted(g.group(STREAM, "g").entries) == [2]
    assert hand_all(g, now=T0 + TIMEOUT) == [2]


def stored_entries(g: Groups, name: str) -> dict[int, tuple[int, float, bool]]:
    """The group's entries as committed in LMDB (what a kill -9 would leave)."""
    gid = g.group(STREAM, name).meta.id
    out = {}
    with g.env.read() as txn:
        for key, value in txn.cursor(db=g.env.dbs["entries"]):
            kgid, index = _KEY.unpack(key)
            if kgid == gid:
                e = msgspec.msgpack.decode(bytes(value), type=Entry)
                out[index] = (e.deliveries, e.due, e.parked)
    return out


def test_write_commits_every_change_since_the_last_one(env):
    """One write commits every change since the last (take_changes, which the api's
    group writer commits the same way before the replies that confirm them go out:
    tests/unit/test_group_sync.py). Until then nothing is in LMDB."""
    env.add(3)
    g = env.groups
    assert hand(g) == 0
    assert stored_entries(g, "g") == {}
    g.write()
    assert stored_entries(g, "g") == {0: (1, T0 + TIMEOUT, False)}
    # several calls, one write: all of them are in it
    assert hand(g) == 1
    assert g.ack(STREAM, "g", 0)
    assert g.nack(STREAM, "g", 1, delay=4.0, now=T0 + 1)
    assert stored_entries(g, "g") == {0: (1, T0 + TIMEOUT, False)}
    g.write()
    assert stored_entries(g, "g") == {1: (1, T0 + 5.0, False)}
    assert hand(g, now=T0 + 5) == 1
    g.write()
    assert stored_entries(g, "g") == {1: (2, T0 + 5 + TIMEOUT, False)}
    with g.env.read() as txn:
        key = f"{STREAM}\0g".encode()
        meta = msgspec.msgpack.decode(bytes(txn.get(key, db=g.env.dbs["groups"])), type=GroupMeta)
    assert meta.position == 2


def test_timers_after_reopen(env):
    env.add(2)
    g = env.groups
    assert hand(g, now=T0) == 0
    assert hand(g, now=T0 + 3) == 1
    g = env.reopen()
    assert g.next_due() == T0 + TIMEOUT
    assert g.due_groups(now=T0 + TIMEOUT - 1) == set()
    assert g.due_groups(now=T0 + TIMEOUT) == {(STREAM, "g")}
    assert g.next_due() == T0 + 3 + TIMEOUT
    g.ack(STREAM, "g", 1)
    assert g.next_due() is None  # the acked message's timer is stale


# -------------------------------------------------------------- property


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.sampled_from("ab")),
        st.tuples(st.just("ack"), st.sampled_from("ab"), st.integers(0, 30)),
        st.tuples(st.just("nack"), st.sampled_from("ab"), st.integers(0, 30), st.integers(0, 15)),
        st.tuples(st.just("time"), st.integers(1, 15)),
        st.tuples(st.just("add"), st.integers(1, 4)),
        st.tuples(
            st.just("reopen"),
        ),
    ),
    max_size=60,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_random_operations_against_a_model(tmp_path_factory, ops):
    """A model of G8: each message to one member at a time, redeliveries first, parking
    after max_deliveries (3), none lost, none skipped; closing and reopening changes nothing."""
    env = Setup(tmp_path_factory.mktemp("groups"))
    try:
        now = T0
        added = 0
        # per group: index -> [due, deliveries] of what is out; parked; acked
        out: dict[str, dict[int, list]] = {"a": {}, "b": {}}
        parked: dict[str, set[int]] = {"a": set(), "b": set()}
        acked: dict[str, set[int]] = {"a": set(), "b": set()}
        handed = {"a": 0, "b": 0}
        env.groups.group(STREAM, "a")
        env.groups.group(STREAM, "b")
        for op in ops:
            g = env.groups
            if op[0] == "add":
                env.add(op[1])
                added += op[1]
            elif op[0] == "time":
                now += op[1]
            elif op[0] == "reopen":
                env.reopen()
            elif op[0] == "next":
                name = op[1]
                expected = None
                for i in sorted(i for i, (due, _) in out[name].items() if due <= now):
                    if out[name][i][1] >= 3:
                        parked[name].add(i)
                        del out[name][i]
                    else:
                        expected = i
                        break
                if expected is None and handed[name] < added:
                    expected = handed[name]
                    handed[name] += 1
                try:
                    index = hand(g, name, now)
                except NotYetAvailable:
                    index = None
                assert index == expected
                if index is not None:
                    deliveries = out[name].get(index, [0, 0])[1] + 1
                    out[name][index] = [now + TIMEOUT, deliveries]
            elif op[0] == "ack":
                name, index = op[1], op[2]
                was_out = index in out[name] or index in parked[name]
                assert g.ack(STREAM, name, index) is was_out
                if was_out:
                    out[name].pop(index, None)
                    parked[name].discard(index)
                    acked[name].add(index)
            elif op[0] == "nack":
                name, index, delay = op[1:]
                ok = g.nack(STREAM, name, index, delay=float(delay), now=now)
                assert ok is (index in out[name])
                if ok:
                    out[name][index][0] = now + delay
            for name in "ab":
                assert g.parked(STREAM, name) == sorted(parked[name])
                entries = g.group(STREAM, name).entries
                assert {i: [e.due, e.deliveries] for i, e in entries.items() if not e.parked} == (
                    out[name]
                )
        # the end: every message acked or parked in each group, then StreamFinished
        env.add(0, finish=True)
        for name in "ab":
            g = env.groups
            later = now
            while True:
                later += TIMEOUT
                try:
                    for index in hand_all(g, name, later):
                        assert g.ack(STREAM, name, index)
                        acked[name].add(index)
                except StreamFinished:
                    break
                assert later < now + 10 * TIMEOUT, "never finished"
            final_parked = set(g.parked(STREAM, name))
            assert acked[name] | final_parked == set(range(added))
            assert not acked[name] & final_parked
    finally:
        env.close()
