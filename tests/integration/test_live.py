"""Live frames (SPEC G6): out before the fsync, provisional indices, the newest frame for late
joiners from the publish socket alone."""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from hidra_ng import Consumer, NotYetAvailable, Producer, Subscriber
from hidra_ng.receiver import committer as committer_module
from hidra_ng.receiver.daemon import Receiver
from tests.helpers import wait_for
from tests.live_helpers import HeldCommits, bound_pub, publish_message

#: an api endpoint nobody answers: a Subscriber that asked it would get no frame from it
NO_API = "tcp://127.0.0.1:9"


def subscribed(producer, sub: Subscriber, stream: str) -> None:
    """Send probes until the Subscriber sees one (PUB/SUB joins asynchronously), then flush."""
    wait_for(
        lambda: producer.send(stream, b"probe") is not None and sub.receive(0.05),
        what=f"the subscription to {stream} to take effect",
    )
    producer.flush(10)


def marked(sub: Subscriber, key: str):
    """The next live frame whose meta has ``key`` (probes have none)."""
    return wait_for(
        lambda: (f := sub.receive(0.1)) is not None and key in f.meta and f,
        what=f"a live frame with meta {key!r}",
    )


def test_a_live_frame_arrives_while_its_commit_waits_and_get_sees_it_only_after(
    make_producer, receiver: Receiver
) -> None:
    p = make_producer()
    ep = receiver.endpoints
    held = HeldCommits(receiver.store.env)
    image = np.arange(64 * 32, dtype=np.uint16).reshape(64, 32)
    events = []
    with Subscriber(ep["publish"], ["held"], api=ep["api"]) as sub, Consumer(ep["api"]) as c:
        subscribed(p, sub, "held")
        acked = p.stats["acked"]
        next_index = c.info("held").count
        held.armed.set()
        p.send("held", image, {"k": 1})
        frame = marked(sub, "k")
        events.append("live frame")
        wait_for(held.holding.is_set, what="the commit to be held")
        # the frame's transaction is filled and waits for its commit: nothing durable yet
        assert frame.index == next_index and np.array_equal(frame.data, image)
        with pytest.raises(NotYetAvailable):
            c.get("held", frame.index, timeout=0)
        assert c.info("held").count == next_index
        assert p.stats["acked"] == acked, "acknowledged before its commit"
        events.append("commit released")
        held.release.set()
        stored = c.get("held", frame.index, timeout=10)
        events.append("durable")
        p.flush(10)
    assert events == ["live frame", "commit released", "durable"]
    assert (stored.index, stored.sender, stored.seq) == (frame.index, frame.sender, frame.seq)
    assert np.array_equal(stored.data, image) and stored.stored == frame.stored


def test_the_next_frame_goes_out_live_while_the_commit_before_it_is_held(
    make_producer, receiver: Receiver
) -> None:
    """The committer thread (ADR 0010): frame k+1 is received, given its index and
    published while frame k's commit waits; both are acked and readable only after it."""
    p = make_producer()
    ep = receiver.endpoints
    held = HeldCommits(receiver.store.env)
    events = []
    with Subscriber(ep["publish"], ["pipelined"], api=ep["api"]) as sub, Consumer(ep["api"]) as c:
        subscribed(p, sub, "pipelined")
        acked = p.stats["acked"]
        held.armed.set()
        p.send("pipelined", b"frame k", {"k": 0})
        frame_k = marked(sub, "k")
        wait_for(held.holding.is_set, what="the commit of frame k to be held")
        events.append("commit of k held")
        p.send("pipelined", b"frame k+1", {"k": 1})
        frame_next = marked(sub, "k")  # before the release: it must not wait for that commit
        events.append("k+1 live")
        assert (frame_k.meta, frame_next.meta) == ({"k": 0}, {"k": 1})
        assert frame_next.index == frame_k.index + 1
        with pytest.raises(NotYetAvailable):
            c.get("pipelined", frame_k.index, timeout=0)
        assert p.stats["acked"] == acked, "acknowledged before its commit"
        events.append("commit released")
        held.release.set()
        stored = [c.get("pipelined", f.index, timeout=10) for f in (frame_k, frame_next)]
        events.append("both durable")
        p.flush(10)
        assert p.stats["acked"] == acked + 2
    assert events == ["commit of k held", "k+1 live", "commit released", "both durable"]
    assert [(f.data, f.seq, f.stored) for f in stored] == [
        (b"frame k", frame_k.seq, frame_k.stored),
        (b"frame k+1", frame_next.seq, frame_next.stored),
    ]


def test_a_late_joiner_gets_the_newest_frame_from_the_publish_socket_alone(
    make_producer, receiver: Receiver
) -> None:
    p = make_producer()
    for i in range(5):
        p.send("idle", np.full(8, i, np.uint8), {"i": i})
    p.flush(10)
    ep = receiver.endpoints
    with Subscriber(ep["publish"], ["idle"], api=NO_API) as first:
        newest = first.latest(timeout=30)
        assert (newest.index, newest.meta, newest.data.tolist()) == (4, {"i": 4}, [4] * 8)
        # a second joiner of the same topic gets it too (XPUB_VERBOSE); the first one,
        # sent the same frame again, drops it: its next frame is the next new one
        with Subscriber(ep["publish"], ["idle"], api=NO_API) as second:
            assert second.latest(timeout=30).index == 4
        p.send("idle", np.full(8, 5, np.uint8), {"i": 5})
        assert wait_for(lambda: first.receive(0.1), what="the next frame").index == 5


def test_subscribers_of_everything_and_of_a_prefix_get_each_streams_newest(
    make_producer, receiver: Receiver
) -> None:
    p = make_producer()
    for stream in ("pre/a", "pre/b", "other"):
        for i in range(3):
            p.send(stream, f"{stream} {i}".encode())
    p.flush(10)
    ep = receiver.endpoints
    with Subscriber(ep["publish"], api=NO_API) as everything:
        got = [wait_for(lambda: everything.receive(0.1), what="a newest frame") for _ in range(3)]
    assert sorted((f.stream, f.index, f.data) for f in got) == [
        ("other", 2, b"other 2"), ("pre/a", 2, b"pre/a 2"), ("pre/b", 2, b"pre/b 2"),
    ]  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"pre/")  # a raw prefix: the streams under pre/
        sub.connect(ep["publish"])
        topics = sorted(sub.recv_multipart()[0] for _ in range(2) if sub.poll(30_000))
        p.send("other", b"a marker after them")
        p.send("pre/a", b"newer")
        assert sub.poll(30_000)
        after = sub.recv_multipart()
    finally:
        sub.close()
        ctx.term()
    assert topics == [b"pre/a\0", b"pre/b\0"]
    assert (after[0], after[2]) == (b"pre/a\0", b"newer"), "a frame of 'other' came"


def test_after_a_restart_a_joiner_gets_the_newest_stored_frame(tmp_path, receiver_config):
    rx = Receiver(receiver_config)
    rx.start()
    try:
        ep = rx.endpoints
        with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "restart") as p:
            for i in range(3):
                p.send("kept", np.full(4, i, np.int32))
            p.flush(10)
    finally:
        rx.stop()
    rx = Receiver(receiver_config)  # nothing in memory: the newest frame comes from the store
    rx.start()
    try:
        with Subscriber(rx.endpoints["publish"], ["kept"], api=NO_API) as sub:
            frame = sub.latest(timeout=30)
        assert (frame.index, frame.data.tolist()) == (2, [2] * 4)
    finally:
        rx.stop()


def test_the_subscriber_drops_a_frame_again_and_follows_a_live_feed_that_went_back() -> None:
    """A receiver killed before an fsync gives the provisional indices again, maybe to other
    frames: the Subscriber takes those as the newest; the very same frame again it drops."""
    ctx = zmq.Context()
    pub, endpoint = bound_pub(ctx)
    try:
        with Subscriber(endpoint, ["s"], api=NO_API) as sub:
            wait_for(
                lambda: (
                    pub.send_multipart(publish_message("s", 0, "a", 0, b"0")) is None
                    and sub.receive(0.05)
                ),
                what="the subscription to take effect",
            )
            for message in [
                ("s", 1, "a", 1, b"1"), ("s", 2, "a", 2, b"2"),
                ("s", 2, "a", 2, b"2"),  # the newest again, for a joiner: dropped
                ("s", 1, "b", 0, b"1 after the crash"),  # went back: taken
                ("s", 2, "b", 1, b"2 after the crash"),
                ("s", 4, "b", 2, b"4"),  # 3 skipped
            ]:  # fmt: skip
                pub.send_multipart(publish_message(*message))
            got = [wait_for(lambda: sub.receive(0.1), what="a frame") for _ in range(5)]
            assert sub.latest().data == b"4"
            skipped = sub.skipped
    finally:
        pub.close()
        ctx.term()
    assert [(f.index, f.data) for f in got] == [
        (1, b"1"), (2, b"2"), (1, b"1 after the crash"), (2, b"2 after the crash"), (4, b"4"),
    ]  # fmt: skip
    assert skipped == 1


def test_a_large_live_frame_leaves_before_its_commit_is_written(
    make_producer, receiver: Receiver, monkeypatch
) -> None:
    """The commit's copies start once the batch's large live frames are on their way
    (committer.LIVE_HEAD_START_SECONDS, made long here so a slow machine cannot run
    out of it): at each write, every frame the batch published has left."""
    monkeypatch.setattr(committer_module, "LIVE_HEAD_START_SECONDS", 60.0)
    p = make_producer()
    ep = receiver.endpoints
    image = np.random.default_rng(3).integers(0, 9, (512, 1024), dtype=np.uint16)  # 1 MiB
    at_write: list[tuple[int, bool]] = []  # (frames leaving, all of them out)
    write = receiver.store.env.write

    def noting(fill, **options):
        leaving = receiver.committer._leaving
        at_write.append((len(leaving), all(t.done for t in leaving)))
        return write(fill, **options)

    with Subscriber(ep["publish"], ["leave"], api=ep["api"]) as sub:
        subscribed(p, sub, "leave")
        receiver.store.env.write = noting
        for k in range(5):
            p.send("leave", image, {"k": k})
            assert np.array_equal(marked(sub, "k").data, image)
        p.flush(10)
    receiver.store.env.write = write
    assert sum(n for n, _ in at_write) == 5, at_write
    assert all(out for _, out in at_write), at_write


def test_a_subscriber_that_stopped_reading_does_not_hold_back_acks(
    make_producer, receiver: Receiver
) -> None:
    """A SUB socket that never reads (its queue and the TCP buffers fill): every frame
    is still stored and acknowledged; the live frames for it are dropped."""
    p = make_producer()
    ep = receiver.endpoints
    frame = np.random.default_rng(4).integers(0, 9, (1024, 1024), dtype=np.uint32)  # 4 MiB
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.SUBSCRIBE, b"stuck\0")
    try:
        stuck.connect(ep["publish"])
        with Subscriber(ep["publish"], ["stuck"], api=ep["api"]) as sub:
            subscribed(p, sub, "stuck")  # the stuck socket joined before this one, too
        wait_for(lambda: stuck.poll(10), what="the stuck subscriber's first frame")
        for k in range(40):  # 160 MiB: far more than its queue and socket buffers hold
            p.send("stuck", frame, {"k": k})
        p.flush(60)
        with Consumer(ep["api"]) as c:
            stored = c.get("stuck", c.info("stuck").count - 1, timeout=10)
        assert stored.meta == {"k": 39} and np.array_equal(stored.data, frame)
    finally:
        stuck.close(linger=0)
        ctx.term()
