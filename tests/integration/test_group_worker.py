"""GroupWorker: a consumer-group member with several batches in flight (client/worker.py)."""

from __future__ import annotations

import threading

import pytest

from hidra_ng import Consumer, InvalidArgument, NotYetAvailable, Producer, StreamFinished
from hidra_ng.wire import protocol as proto
from tests.helpers import wait_for

STREAM = "grp/work"


@pytest.fixture
def producer(tmp_path, receiver):
    with Producer(
        receiver.endpoints["ingest"], receiver.endpoints["api"], tmp_path / "spool", "det-w"
    ) as p:
        yield p


@pytest.fixture
def api(receiver) -> str:
    return receiver.endpoints["api"]


def send(producer: Producer, n: int, start: int = 0, finish: bool = False) -> None:
    producer.send_many(STREAM, [(f"m {k}".encode(), {"k": k}) for k in range(start, start + n)])
    if finish:
        producer.finish(STREAM)
    producer.flush(10)


def handed_out(receiver, group: str) -> int:
    """The group's position: how many new messages it has handed out (api thread's state)."""
    return receiver.api_server.groups.group(STREAM, group).meta.position


def test_two_workers_share_a_finished_stream_once_each(producer, api):
    send(producer, 101, finish=True)
    seen: list[list[int]] = [[], []]

    def member(i: int) -> None:
        with Consumer(api) as c, c.worker(STREAM, "w", batch=4, prefetch=3) as work:
            for frames in work:
                for f in frames:
                    assert f.data == f"m {f.index}".encode() and f.meta == {"k": f.index}
                seen[i] += [f.index for f in frames]

    threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen[0] + seen[1]) == list(range(101))
    with Consumer(api) as c:  # every message acked: the group is settled
        assert c.parked(STREAM, "w") == []
        with pytest.raises(StreamFinished):
            c.next_many(STREAM, "w", timeout=1.0)


def test_prefetch_keeps_batches_in_flight_while_one_is_worked_on(producer, api, receiver):
    send(producer, 20)
    with Consumer(api) as c, c.worker(STREAM, "pf", batch=2, prefetch=3) as work:
        first = next(work)
        assert [f.index for f in first] == [0, 1]
        # beside the batch it gave out, the worker keeps three more coming
        wait_for(lambda: handed_out(receiver, "pf") == 8, timeout=20, what="4 batches out")
        with Consumer(api) as other:
            got = other.next_many(STREAM, "pf", max_count=100, timeout=2.0)
            assert got[0].index == 8
            other.ack_many(got)
        assert [f.index for f in next(work)] == [2, 3]
        assert [f.index for f in next(work)] == [4, 5]


def test_leaving_gives_back_the_prefetched_batches_at_once(producer, api, receiver):
    send(producer, 10)
    with Consumer(api) as c:
        with c.worker(STREAM, "back", batch=2, prefetch=3) as work:
            assert [f.index for f in next(work)] == [0, 1]
            wait_for(lambda: handed_out(receiver, "back") == 8, timeout=20, what="prefetch")
        # 0 and 1 acked on leaving the block; 2..7 given back (nack) without the ack timeout
        again = c.next_many(STREAM, "back", max_count=100, timeout=2.0)
        assert [(f.index, f.deliveries) for f in again] == [
            (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 1), (9, 1)
        ]  # fmt: skip


def test_an_exception_gives_back_the_batch_being_worked_on(producer, api):
    send(producer, 4)
    with Consumer(api) as c:
        with (
            pytest.raises(RuntimeError, match="analysis failed"),
            c.worker(STREAM, "fail", batch=2, prefetch=1) as work,
        ):
            for _frames in work:
                raise RuntimeError("analysis failed")
        again = c.next_many(STREAM, "fail", max_count=100, timeout=2.0)
        # 0, 1 being worked on and 2, 3 prefetched: all given back
        assert [(f.index, f.deliveries) for f in again] == [(0, 2), (1, 2), (2, 2), (3, 2)]


def test_acks_ride_on_the_next_request(producer, api, receiver):
    send(producer, 6)
    with Consumer(api) as c, c.worker(STREAM, "ride", batch=3, prefetch=1) as work:
        assert [f.index for f in next(work)] == [0, 1, 2]
        assert [f.index for f in next(work)] == [3, 4, 5]  # this request acked 0..2
        group = receiver.api_server.groups.group(STREAM, "ride")
        wait_for(lambda: sorted(group.entries) == [3, 4, 5], timeout=20, what="acks of 0..2")
        work.ack()
        wait_for(lambda: not group.entries, timeout=20, what="acks of 3..5")


def test_nothing_within_the_timeout_then_new_messages(producer, api):
    send(producer, 2)
    with Consumer(api) as c, c.worker(STREAM, "idle", batch=4, prefetch=2, timeout=0.3) as work:
        assert [f.index for f in next(work)] == [0, 1]
        with pytest.raises(NotYetAvailable):
            next(work)
        send(producer, 3, start=2, finish=True)
        rest = [f.index for frames in work for f in frames]
    assert rest == [2, 3, 4]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch": 0}, "batch 0 is not valid"),
        ({"batch": 10_001}, "batch 10001 is not valid"),
        ({"prefetch": 0}, "prefetch 0 is not valid"),
        ({"prefetch": 17}, "prefetch 17 is not valid"),
        ({"prefetch": 1.5}, "prefetch 1.5 is not valid"),
    ],
)
def test_bad_batch_and_prefetch_are_refused(api, options, message):
    with Consumer(api) as c, pytest.raises(InvalidArgument, match=message):
        c.worker(STREAM, "bad", **options)


def test_a_closed_worker_refuses_to_go_on(producer, api):
    send(producer, 2)
    with Consumer(api) as c:
        work = c.worker(STREAM, "closed", batch=2)
        assert len(next(work)) == 2
        work.close(ack_current=True)
        with pytest.raises(InvalidArgument, match="closed"):
            next(work)


def test_cancel_answers_a_waiting_next_at_once(producer, api, receiver):
    """What a worker's close relies on: a parked next is answered when cancelled."""
    send(producer, 1)
    with Consumer(api) as c:
        c.next_many(STREAM, "cancel", timeout=2.0)  # nothing left for this group
        sock = c._sock
        req = proto.make_request(100, "next", stream=STREAM, group="cancel", timeout=600.0)
        sock.send(proto.encode(proto.Kind.REQUEST, req))
        waiters = receiver.api_server.waiters
        wait_for(lambda: waiters.waiting(STREAM) > 0, timeout=20, what="the next parked")
        sock.send(proto.encode(proto.Kind.REQUEST, proto.make_request(100, "cancel")))
        assert sock.poll(20_000), "the cancelled next was not answered"
        reply = proto.decode(proto.Kind.REPLY, proto.Reply, sock.recv_multipart()[0])
        assert (reply.id, reply.error) == (100, "NotYetAvailable")
        assert waiters.waiting(STREAM) == 0
