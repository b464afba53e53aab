"""Consumer groups and metadata queries over the network, with an in-process receiver (G8)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng import (
    Consumer,
    InvalidInput,
    NotYetAvailable,
    Producer,
    ReceiverUnavailable,
    StreamFinished,
)
from hidra_ng.lmdbenv import DiskFull
from tests.helpers import digest, wait_for
from tests.unit.test_query import TREES, python_predicate, render

STREAM = "grp/scan"


@pytest.fixture
def producer(tmp_path, receiver):
    with Producer(
        receiver.endpoints["ingest"], receiver.endpoints["api"], tmp_path / "spool", "det-g"
    ) as p:
        yield p


@pytest.fixture
def api(receiver) -> str:
    return receiver.endpoints["api"]


@pytest.fixture
def consumer(api):
    with Consumer(api) as c:
        yield c


def send(producer: Producer, n: int, stream: str = STREAM, finish: bool = False) -> None:
    producer.send_many(stream, [(f"payload {k}".encode(), {"k": k}) for k in range(n)])
    if finish:
        producer.finish(stream)
    producer.flush(10)


def test_members_share_the_messages_once_each(producer, api):
    send(producer, 40, finish=True)
    seen: list[tuple[int, int]] = []
    with Consumer(api) as a, Consumer(api) as b:
        for member in itertools.cycle((a, b)):
            try:
                frame = member.next(STREAM, "share", timeout=1.0)
            except StreamFinished:
                break
            assert frame.data == f"payload {frame.index}".encode()
            assert frame.meta == {"k": frame.index}
            assert (frame.group, frame.deliveries) == ("share", 1)
            seen.append((id(member), frame.index))
            member.ack(frame)
    assert [i for _, i in seen] == list(range(40))
    assert {m for m, _ in seen[::2]} != {m for m, _ in seen[1::2]}  # alternated


def test_nack_redelivers_first_and_after_its_delay(producer, consumer):
    send(producer, 3)
    first = consumer.next(STREAM, "nack", timeout=2.0)
    assert (first.index, first.deliveries) == (0, 1)
    consumer.nack(first)
    again = consumer.next(STREAM, "nack", timeout=2.0)
    assert (again.index, again.deliveries, again.data) == (0, 2, b"payload 0")
    started = time.monotonic()
    consumer.nack(again, delay=0.5)
    assert consumer.next(STREAM, "nack", timeout=2.0).index == 1  # new, while 0 waits
    assert consumer.next(STREAM, "nack", timeout=2.0).index == 2
    third = consumer.next(STREAM, "nack", timeout=5.0)  # waits for the delay
    assert (third.index, third.deliveries) == (0, 3)
    assert time.monotonic() - started >= 0.45


def test_unacked_message_comes_back_after_the_ack_timeout(producer, api):
    send(producer, 1)
    with Consumer(api) as a, Consumer(api) as b:
        held = a.next(STREAM, "timeout", timeout=2.0, ack_timeout=0.5)
        started = time.monotonic()
        again = b.next(STREAM, "timeout", timeout=5.0)  # waits for the redelivery
        assert time.monotonic() - started >= 0.4
        assert (again.index, again.deliveries) == (held.index, 2)
        b.ack(again)
        a.ack(held)  # late: harmless
        with pytest.raises(NotYetAvailable):
            b.next(STREAM, "timeout", timeout=0.7)  # nothing comes back


def test_groups_are_independent(producer, api):
    send(producer, 5, finish=True)
    with Consumer(api) as a, Consumer(api) as b:
        got_a = [a.next(STREAM, "A", timeout=2.0) for _ in range(5)]
        got_b = []
        for _ in range(5):
            frame = b.next(STREAM, "B", timeout=2.0)
            got_b.append(frame)
            b.ack(frame)
        assert [f.index for f in got_a] == [f.index for f in got_b] == list(range(5))
        with pytest.raises(StreamFinished):
            b.next(STREAM, "B", timeout=2.0)
        with pytest.raises(NotYetAvailable):
            a.next(STREAM, "A", timeout=0.3)  # A acked nothing: not finished for A
        for frame in got_a:
            a.ack(frame)
        with pytest.raises(StreamFinished):
            a.next(STREAM, "A", timeout=2.0)
        with pytest.raises(StreamFinished):
            next_all_and_ack(b, "C", 5)


def next_all_and_ack(consumer: Consumer, group: str, n: int) -> None:
    """A new group reads a finished stream from the start, then gets StreamFinished."""
    for k in range(n):
        frame = consumer.next(STREAM, group, timeout=2.0)
        assert frame.index == k
        consumer.ack(frame)
    consumer.next(STREAM, group, timeout=2.0)


def test_parked_after_max_deliveries(producer, consumer):
    send(producer, 2, finish=True)
    for k in (1, 2, 3):
        frame = consumer.next(STREAM, "park", timeout=2.0, max_deliveries=3)
        assert (frame.index, frame.deliveries) == (0, k)
        consumer.nack(frame)
    assert consumer.parked(STREAM, "park") == []
    frame = consumer.next(STREAM, "park", timeout=2.0)  # 0 is parked on the way
    assert (frame.index, frame.deliveries) == (1, 1)
    assert consumer.parked(STREAM, "park") == [0]
    consumer.ack(frame)
    with pytest.raises(StreamFinished):  # parked messages do not hold up the end
        consumer.next(STREAM, "park", timeout=2.0)
    assert consumer.parked(STREAM, "park") == [0]
    with pytest.raises(NotYetAvailable, match="no group 'nobody'"):
        consumer.parked(STREAM, "nobody")


def parked(receiver, stream: str) -> None:
    """Wait until a request of ``stream`` is parked on the in-process receiver."""
    waiters = receiver.api_server.waiters
    wait_for(lambda: waiters.waiting(stream) > 0, timeout=20, what=f"a waiter on {stream}")


def test_next_waits_for_new_data(producer, api, receiver):
    got: list = []

    def member() -> None:
        with Consumer(api) as c:
            try:
                got.append(c.next("grp/later", "wait", timeout=20.0))
            except Exception as err:  # reported by the test
                got.append(err)

    thread = threading.Thread(target=member)
    started = time.monotonic()
    thread.start()
    parked(receiver, "grp/later")  # the message comes after the member waits
    send(producer, 1, stream="grp/later")
    thread.join(20)
    assert len(got) == 1 and not isinstance(got[0], Exception), got
    assert (got[0].index, got[0].data) == (0, b"payload 0")
    assert time.monotonic() - started < 10


def test_stream_finished_only_after_every_message_is_acked(producer, api, receiver):
    send(producer, 2, finish=True)
    with Consumer(api) as a, Consumer(api) as b:
        f0 = a.next(STREAM, "fin", timeout=2.0)
        f1 = b.next(STREAM, "fin", timeout=2.0)
        a.ack(f0)
        with pytest.raises(NotYetAvailable):
            a.next(STREAM, "fin", timeout=0.3)  # 1 is in flight at b
        outcome: list = []

        def waiting() -> None:
            with Consumer(api) as c:
                started = time.monotonic()
                try:
                    c.next(STREAM, "fin", timeout=20.0)
                    outcome.append("a frame")
                except StreamFinished:
                    outcome.append(time.monotonic() - started)

        thread = threading.Thread(target=waiting)
        thread.start()
        parked(receiver, STREAM)
        assert outcome == []
        b.ack(f1)  # the last ack settles the group: the waiter hears StreamFinished
        thread.join(20)
        assert len(outcome) == 1 and isinstance(outcome[0], float), outcome
        assert outcome[0] < 10


def test_stream_finished_waits_for_redelivery_of_an_unacked_message(producer, api):
    send(producer, 1, finish=True)
    with Consumer(api) as a, Consumer(api) as b:
        a.next(STREAM, "redo", timeout=2.0, ack_timeout=0.5)  # never acked
        again = b.next(STREAM, "redo", timeout=5.0)  # the redelivery, not StreamFinished
        assert (again.index, again.deliveries) == (0, 2)
        b.ack(again)
        with pytest.raises(StreamFinished):
            b.next(STREAM, "redo", timeout=2.0)


def test_ack_needs_a_frame_from_next(producer, consumer):
    send(producer, 1)
    frame = consumer.get(STREAM, 0)
    with pytest.raises(ValueError, match=r"did not come from Consumer\.next"):
        consumer.ack(frame)
    with pytest.raises(ValueError, match=r"did not come from Consumer\.next"):
        consumer.nack(frame)


def test_group_state_that_cannot_be_committed_is_never_confirmed(producer, api, receiver):
    """A full disk under the groups environment: no reply confirms an uncommitted change,
    the api thread keeps serving, and once the disk has room again nothing is lost."""
    send(producer, 3, finish=True)
    env = receiver.groups.env
    real_write = env.write
    full = threading.Event()
    full.set()

    def write(fill, **kwargs):
        if full.is_set():
            raise DiskFull(f"no space left for LMDB at {env.path} (test)")
        return real_write(fill, **kwargs)

    env.write = write
    try:
        with Consumer(api, request_timeout=0.5) as c:
            with pytest.raises(ReceiverUnavailable):
                c.next(STREAM, "full", timeout=0.0, ack_timeout=1.0)  # handed out, not confirmed
            c.ping(timeout=2.0)  # the api thread is alive
            assert c.info(STREAM).count == 3
            full.clear()
        seen = []
        # commits work again: a consumer with the default request timeout, so a loaded
        # machine does not turn a slow answer into a failure
        with Consumer(api) as patient:
            while True:
                try:
                    frames = patient.next_many(STREAM, "full", max_count=8, timeout=3.0)
                except StreamFinished:
                    break
                seen += [f.index for f in frames]
                patient.ack_many(frames)
        assert sorted(seen) == [0, 1, 2]  # 0 again, after its ack timeout
    finally:
        env.write = real_write
    assert receiver.alive()


def test_bad_times_are_refused_and_the_receiver_keeps_serving(producer, consumer, receiver):
    """Regression: a nack delay of 1e308 or an infinite ack timeout ended the api thread."""
    send(producer, 2)
    frame = consumer.next(STREAM, "times", timeout=2.0)
    with pytest.raises(InvalidInput, match=r"nack delay 1e\+308 is not valid"):
        consumer.nack(frame, delay=1e308)
    with pytest.raises(InvalidInput, match="ack_timeout inf is not valid"):
        consumer.next(STREAM, "times", timeout=1.0, ack_timeout=float("inf"))
    with pytest.raises(InvalidInput, match="max_deliveries -2 is not valid"):
        consumer.next(STREAM, "times", timeout=1.0, max_deliveries=-2)
    assert consumer.next(STREAM, "times", timeout=2.0).index == 1  # the group still works
    consumer.nack(frame)
    assert consumer.next(STREAM, "times", timeout=2.0).index == 0
    assert receiver.alive()


def test_invalid_group_name_is_refused(producer, consumer):
    send(producer, 1)
    with pytest.raises(InvalidInput, match="group name 'a b'"):
        consumer.next(STREAM, "a b", timeout=1.0)


# ------------------------------------------------------------- batches


def test_next_many_shares_batches_once_each(producer, api):
    send(producer, 50, finish=True)
    seen: list[int] = []
    sizes: list[int] = []
    with Consumer(api) as a, Consumer(api) as b:
        for member in itertools.cycle((a, b)):
            try:
                frames = member.next_many(STREAM, "batch", max_count=8, timeout=1.0)
            except StreamFinished:
                break
            sizes.append(len(frames))
            for f in frames:
                assert f.data == f"payload {f.index}".encode()
                assert (f.group, f.deliveries, f.meta) == ("batch", 1, {"k": f.index})
            seen += [f.index for f in frames]
            member.ack_many(frames)
    assert seen == list(range(50))
    assert sizes == [8] * 6 + [2]  # as many as asked while there are, then the rest


def test_next_many_gives_redeliveries_first_and_waits_for_new_data(producer, api, receiver):
    send(producer, 5)
    with Consumer(api) as a, Consumer(api) as b:
        first = a.next_many(STREAM, "re", max_count=3, timeout=2.0)
        assert [f.index for f in first] == [0, 1, 2]
        a.nack(first[1])
        again = b.next_many(STREAM, "re", max_count=10, timeout=2.0)
        assert [(f.index, f.deliveries) for f in again] == [(1, 2), (3, 1), (4, 1)]
        b.ack_many([*again, first[0], first[2]])
        with pytest.raises(NotYetAvailable):
            b.next_many(STREAM, "re", max_count=10, timeout=0.3)
        got: list = []

        def member() -> None:
            with Consumer(api) as c:
                got.append(c.next_many(STREAM, "re", max_count=10, timeout=20.0))

        thread = threading.Thread(target=member)
        thread.start()
        parked(receiver, STREAM)
        send(producer, 2)  # indices 5 and 6, in one commit
        thread.join(20)
        woken = [f.index for f in got[0]]
        assert woken in ([5], [5, 6])  # one commit or two
        rest = [] if woken == [5, 6] else a.next_many(STREAM, "re", max_count=10, timeout=5.0)
        assert woken + [f.index for f in rest] == [5, 6]


def test_ack_many_acks_frames_of_several_groups(producer, consumer):
    send(producer, 4, finish=True)
    frames = consumer.next_many(STREAM, "x", max_count=4, timeout=2.0)
    frames += consumer.next_many(STREAM, "y", max_count=4, timeout=2.0)
    consumer.ack_many(frames)
    for group in ("x", "y"):
        with pytest.raises(StreamFinished):
            consumer.next_many(STREAM, group, max_count=4, timeout=1.0)


def test_next_many_acks_what_it_is_given_in_the_same_round_trip(producer, api):
    send(producer, 50, finish=True)
    seen: list[int] = []
    with Consumer(api) as a, Consumer(api) as b:
        held = {id(a): [], id(b): []}
        for member in itertools.cycle((a, b)):
            try:
                frames = member.next_many(
                    STREAM, "loop", max_count=8, timeout=0.2, ack=held[id(member)]
                )
            except NotYetAvailable:  # the rest is in flight at the other member
                held[id(member)] = []  # acked all the same
                continue
            except StreamFinished:  # the request carrying the last acks settles the group
                held[id(member)] = []
                if not any(held.values()):
                    break
                continue
            held[id(member)] = frames
            seen += [f.index for f in frames]
        assert sorted(seen) == list(range(50))
        assert a.parked(STREAM, "loop") == []
    with Consumer(api) as c, pytest.raises(StreamFinished):
        c.next_many(STREAM, "loop", timeout=1.0)


def test_acks_given_to_next_many_hold_when_nothing_is_handed_out(producer, consumer):
    send(producer, 3)
    frames = consumer.next_many(STREAM, "hold", max_count=8, timeout=2.0, ack_timeout=0.5)
    assert [f.index for f in frames] == [0, 1, 2]
    with pytest.raises(NotYetAvailable):
        consumer.next_many(STREAM, "hold", timeout=0.2, ack=frames)
    time.sleep(0.6)  # simulated time, not a wait: past the ack timeout (due again if unacked)
    with pytest.raises(NotYetAvailable):
        consumer.next_many(STREAM, "hold", timeout=0.3)
    other = consumer.next_many(STREAM, "other", max_count=1, timeout=2.0)
    with pytest.raises(ValueError, match="cannot be acked with a next of group 'hold'"):
        consumer.next_many(STREAM, "hold", timeout=0.1, ack=other)


def test_next_many_is_bounded_and_checked(producer, consumer, receiver):
    send(producer, 3)
    for bad in (0, -1, 10_001, 2.5):
        with pytest.raises(ValueError, match=f"max_count {bad!r} is not valid"):
            consumer.next_many(STREAM, "b", max_count=bad)
    with pytest.raises(InvalidInput, match="max_count 10001 is not valid"):
        consumer._call_all("next", stream=STREAM, group="b", max_count=10_001)  # bypassing
    with pytest.raises(InvalidInput, match="ack indices"):
        consumer._call("ack", stream=STREAM, group="b", indices=(1, -5))
    assert [f.index for f in consumer.next_many(STREAM, "b", max_count=9)] == [0, 1, 2]
    assert receiver.alive()


# ------------------------------------------------------------------ query


def test_query_reads_metadata_in_index_order(producer, consumer):
    rng = np.random.default_rng(3)
    items = []
    for k in range(30):
        data = rng.integers(0, 1000, size=(64, 64), dtype=np.uint16) if k % 2 else None
        items.append((data, {"k": k, "even": k % 2 == 0, "tag": "abc"[k % 3]}))
    producer.send_many(STREAM, items)
    producer.flush(10)
    frames = consumer.query(STREAM, "meta.k >= 10 and meta.tag in ['a', 'c'] and not meta.even")
    expected = [k for k in range(10, 30) if k % 3 in (0, 2) and k % 2]
    assert [f.index for f in frames] == expected
    for f in frames:
        assert f.meta == items[f.index][1]
        assert (f.stream, f.sender) == (STREAM, "det-g")
        assert f.stored >= f.created > 0
        assert f.data is None  # no payload travels
        assert (f.dtype, f.shape) == ("<u2", (64, 64))
    assert [f.index for f in consumer.query(STREAM, "index < 3")] == [0, 1, 2]
    assert [f.index for f in consumer.query(STREAM, "true", limit=4)] == [0, 1, 2, 3]
    assert consumer.query(STREAM, "meta.missing == 1") == []
    got = consumer.get(STREAM, 1)
    assert digest(got.data) == digest(items[1][0])  # the payload is still there


def test_query_frames_have_data_none(producer, consumer):
    producer.send(STREAM, np.zeros((4, 4), np.uint8), {"k": 0})
    producer.send(STREAM, b"bytes", {"k": 1})
    producer.flush(10)
    frames = consumer.query(STREAM, "true")
    assert [f.index for f in frames] == [0, 1]
    assert [f.data for f in frames] == [None, None]


def test_query_errors_name_the_position_and_leave_the_receiver_serving(producer, consumer):
    send(producer, 3)
    with pytest.raises(InvalidInput, match="at position 10"):
        consumer.query(STREAM, "meta.k == ")
    with pytest.raises(InvalidInput, match="at position 0"):
        consumer.query(STREAM, "__import__('os').system('true')")
    with pytest.raises(InvalidInput, match="nested deeper"):
        consumer.query(STREAM, "(" * 2000 + "true" + ")" * 2000)
    with pytest.raises(NotYetAvailable):
        consumer.query("grp/none", "true")
    assert [f.index for f in consumer.query(STREAM, "meta.k == 2")] == [2]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.integers(-(2**53), 2**53)
    | st.sampled_from([0.0, 0.5, -2.5, 3.0, 1e20])
    | st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "x", "y", "it's", 'say "hi"', "back\\slash", "a\nb"])
)
KEYS = ["a", "b", "c", "in", "x_1"]
METAS = st.dictionaries(
    st.sampled_from(KEYS),
    st.recursive(
        JSON_SCALARS,
        lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
        max_leaves=4,
    ),
    max_size=5,
)
_streams = itertools.count()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    metas=st.lists(METAS, min_size=1, max_size=25),
    trees=st.lists(TREES, max_size=4),
    data=st.data(),
)
def test_query_matches_a_python_filter(producer, consumer, metas, trees, data):
    stream = f"grp/q{next(_streams)}"
    producer.send_many(stream, [(None, m) for m in metas])
    producer.flush(10)
    stored = list(consumer.replay(stream))
    assert [f.meta for f in stored] == metas
    rows = [(f.meta, f.index, f.stored, f.created) for f in stored]
    for tree in trees:
        text = render(tree, lambda: data.draw(st.booleans()))
        got = [f.index for f in consumer.query(stream, text)]
        assert got == [r[1] for r in rows if python_predicate(tree, r)], text
