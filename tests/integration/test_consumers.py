"""Consumers on loopback: replay with flow control, follow, Gone, live subscribers, tail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import msgspec
import numpy as np
import psutil
import pytest
import zmq

from hidra_ng import Consumer, Frame, Gone, Producer, StreamFinished, Subscriber
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.wire import protocol as proto
from tests.helpers import digest, wait_for


@pytest.fixture
def consumer(receiver):
    with Consumer(receiver.endpoints["api"]) as c:
        yield c


def mixed_items(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            data = rng.integers(0, 1000, size=(int(rng.integers(1, 40)), 17), dtype=np.uint16)
        elif kind == 1:
            data = rng.random((3, 5, 7), dtype=np.float32)
        elif kind == 2:
            data = rng.bytes(int(rng.integers(0, 5000)))
        else:
            data = None
        items.append((data, {"i": i, "kind": kind}))
    return items


def test_replay_equals_get_for_every_index(make_producer, consumer):
    p = make_producer()
    items = mixed_items(80)
    for data, meta in items:
        p.send("scan/1", data, meta)
    p.flush(10)
    replayed = list(consumer.replay("scan/1"))
    assert [f.index for f in replayed] == list(range(80))
    for frame in replayed:
        got = consumer.get("scan/1", frame.index)
        data, meta = items[frame.index]
        assert frame.meta == got.meta == meta
        assert (frame.sender, frame.seq, frame.stored) == (got.sender, got.seq, got.stored)
        assert digest(frame.data) == digest(got.data) == digest(data)
        if isinstance(data, np.ndarray):
            assert frame.data.dtype == data.dtype and frame.data.shape == data.shape


def test_replay_ranges(make_producer, consumer):
    p = make_producer()
    p.send_many("r", [(bytes([i]), {"i": i}) for i in range(20)])
    p.flush(10)
    assert [f.index for f in consumer.replay("r", 5, 9)] == [5, 6, 7, 8]
    assert list(consumer.replay("r", 7, 7)) == []
    assert [f.index for f in consumer.replay("r", 18)] == [18, 19]
    # stop beyond the end without follow: ends at the last index stored
    assert [f.index for f in consumer.replay("r", 15, 1000)] == [15, 16, 17, 18, 19]
    assert [f.index for f in consumer.replay("r", window_frames=1, window_bytes=1)] == list(
        range(20)
    )
    with pytest.raises(ValueError, match="not valid"):
        consumer.replay("r", 5, 2)


def test_the_receiver_sends_no_more_than_the_credit(make_producer, receiver):
    """Speak the wire protocol directly: grant 3 frames, get exactly 3, grant 2, get 2."""
    p = make_producer()
    p.send_many("w", [(np.zeros(1000, np.uint8), None) for _ in range(10)])
    p.flush(10)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(receiver.endpoints["api"])

    def request(op: str, **fields) -> None:
        sock.send(proto.encode(proto.Kind.REQUEST, proto.make_request(7, op, **fields)))

    def frames_arriving(seconds: float) -> list[int]:
        indices = []
        while sock.poll(seconds * 1000):
            parts = sock.recv_multipart()
            reply = proto.decode(proto.Kind.REPLY, proto.Reply, parts[0])
            body = msgspec.msgpack.decode(reply.body, type=proto.FrameRef | proto.ReplayEvent)
            assert not isinstance(body, proto.ReplayEvent), body
            indices.append(body.index)
        return indices

    try:
        request("replay", stream="w", index=0, credit_frames=3, credit_bytes=1 << 30)
        assert frames_arriving(0.5) == [0, 1, 2]
        request("credit", credit_frames=2, credit_bytes=0)  # no byte credit: still nothing
        request("credit", credit_frames=0, credit_bytes=1 << 30)
        assert frames_arriving(0.5) == [3, 4]
        request("credit", credit_frames=1, credit_bytes=1500)  # one frame of 1000 bytes fits
        assert frames_arriving(0.5) == [5]
        request("cancel")
    finally:
        sock.close()
        ctx.term()


def test_follow_sees_later_frames_and_ends_when_the_stream_is_finished(make_producer, consumer):
    p = make_producer()
    p.send_many("f", [(b"a%d" % i, None) for i in range(5)])
    p.flush(10)
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def follow():
        try:
            seen.extend(f.data for f in consumer.replay("f", follow=True))
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=follow)
    thread.start()
    wait_for(lambda: len(seen) == 5, what="the stored frames")
    p.send_many("f", [(b"b%d" % i, None) for i in range(7)])
    wait_for(lambda: len(seen) == 12, what="frames committed after the replay started")
    p.finish("f")
    thread.join(10)
    assert not thread.is_alive() and not errors
    assert seen == [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(7)]


def test_finished_stream_read_past_its_end(make_producer, consumer):
    p = make_producer()
    p.send("done", b"x")
    p.finish("done")
    p.flush(10)
    assert [f.data for f in consumer.replay("done", follow=True)] == [b"x"]
    with pytest.raises(StreamFinished, match="stream 'done' is finished; its last index is 0"):
        consumer.get("done", 1, timeout=5)
    assert consumer.info("done").finished


def test_removed_indices_are_gone_and_never_reused(receiver_config, tmp_path):
    config = msgspec.structs.replace(receiver_config, max_store_bytes=100_000)
    with Receiver(config) as rx, Consumer(rx.endpoints["api"]) as c:
        ep = rx.endpoints
        with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "ret") as p:
            for i in range(30):
                p.send("old", bytes(10_000), {"i": i})
            p.flush(10)
            # retention runs right after each commit: the limit may be exceeded by one
            # commit batch for a moment, then holds
            info = wait_for(lambda: (i := c.info("old")).bytes <= 100_000 and i, what="retention")
            assert info.first > 0 and info.last == 29
            assert info.count == 30 - info.first
            with pytest.raises(Gone, match="removed by retention"):
                c.get("old", 0)
            with pytest.raises(Gone):
                list(c.replay("old", 0))
            assert [f.meta["i"] for f in c.replay("old", info.first)] == list(range(info.first, 30))
            p.send("old", b"new")
            p.flush(10)
        assert c.last("old").index == 30


def test_late_joiner_gets_the_newest_frame_at_once(make_producer, receiver):
    p = make_producer()
    for i in range(5):
        p.send("live", np.full(4, i, np.uint8))
    p.flush(10)
    ep = receiver.endpoints
    with Subscriber(ep["publish"], ["live"], api=ep["api"]) as sub:
        first = sub.latest(timeout=0.2)  # no frame comes later: it must be the snapshot
        assert first.index == 4 and first.data.tolist() == [4] * 4

        def newer_frame():  # then the newest thereafter, from the live feed
            p.send("live", np.full(4, 9, np.uint8))
            frame = sub.latest(0.2)
            return frame if frame.index > 4 else None

        newest = wait_for(newer_frame, what="a frame newer than the snapshot")
        assert newest.data.tolist() == [9] * 4


def test_a_slow_subscriber_skips_the_oldest_and_gets_the_newest(make_producer, receiver):
    p = make_producer()
    ep = receiver.endpoints
    with Subscriber(ep["publish"], ["p/a"], api=ep["api"], buffer_frames=4) as sub:
        probe = wait_for(
            lambda: p.send("p/a", b"probe") is not None and sub.receive(0.05),
            what="the subscription to take effect",
        )
        while (frame := sub.receive(0.2)) is not None:
            probe = frame  # drain the probes
        skipped_before = sub.skipped
        payload = bytes(256 << 10)
        for _ in range(200):  # 50 MiB while the reader does not read
            p.send("p/ab", b"another stream with a name that shares a prefix")
            p.send("p/a", payload)
        p.flush(30)
        last = Consumer(ep["api"]).info("p/a").last
        received = [wait_for(lambda: sub.receive(0.1), what="a frame after the flood")]
        while received[-1].index < last and (frame := sub.receive(2.0)) is not None:
            received.append(frame)
    assert {f.stream for f in received} == {"p/a"}
    indices = [f.index for f in received]
    assert indices[-1] == last, "the reader did not get the newest frame"
    assert indices == sorted(set(indices))
    skipped = sub.skipped - skipped_before
    assert skipped == last - probe.index - len(received)  # every index accounted for
    assert skipped > 0, "a reader that read nothing while 200 frames passed skipped none"
    wait_for(
        lambda: receiver.metrics.subscriber_skipped._value.get() >= 1,
        what="the skipped count reported to the receiver",
    )


def test_two_replays_and_an_ingest_progress_together(make_producer, receiver):
    p = make_producer("loader")
    payload = bytes(256 << 10)
    p.send_many("big", [(payload, {"i": i}) for i in range(120)])
    p.flush(30)
    ep = receiver.endpoints
    spans: dict[str, list[float]] = {}

    def replay(name: str) -> None:
        with Consumer(ep["api"]) as c:
            times = [time.monotonic() for _ in c.replay("big", window_frames=4)]
        spans[name] = [times[0], times[-1], len(times)]

    threads = [threading.Thread(target=replay, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    writer = make_producer("writer")
    writer.send_many("new", [(payload, {"i": i}) for i in range(40)])
    writer.flush(30)
    for t in threads:
        t.join(60)
    assert spans["a"][2] == spans["b"][2] == 120
    # each replay was still running when the other one started
    assert spans["a"][0] < spans["b"][1] and spans["b"][0] < spans["a"][1]
    assert Consumer(ep["api"]).info("new").count == 40


@pytest.mark.slow
def test_a_subscriber_that_never_reads_costs_bounded_memory(receiver_process, tmp_path):
    rx = receiver_process
    proc = psutil.Process(rx.proc.pid)
    frame = np.random.default_rng(0).integers(0, 50, (1024, 1024), dtype=np.uint32)  # 4 MiB
    total = 1536 << 20  # 1.5 GiB
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak.append(proc.memory_info().rss)

    sampler = threading.Thread(target=sample)
    probes: list[int] = []

    def probe_arrived(sub: Subscriber, p: Producer) -> Frame | None:
        probes.append(p.send("flood", b"probe"))
        return sub.receive(0.05)

    with (
        Subscriber(rx.publish, ["flood"], api=rx.api) as sub,  # reads the probe, then never
        Producer(rx.ingest, rx.api, tmp_path / "spool", "flood", spool_sync="batch") as p,
    ):
        # the receiver publishes a stream once it knows a subscriber of it
        wait_for(lambda: probe_arrived(sub, p), what="the subscription to take effect")
        start_rss = proc.memory_info().rss
        sampler.start()
        for _ in range(total // frame.nbytes):
            p.send("flood", frame)
        p.flush(120)
        stop.set()
        sampler.join()
    with Consumer(rx.api) as c:
        assert c.info("flood").count == len(probes) + total // frame.nbytes
    growth = max(peak) - start_rss
    assert growth < 600 << 20, f"receiver RSS grew by {growth >> 20} MiB"


def test_tail_prints_live_lines_and_exits_0_on_ctrl_c(make_producer, receiver):
    p = make_producer()
    ep = receiver.endpoints
    tail = subprocess.Popen(
        [sys.executable, "-m", "hidra_ng", "tail", "t/1", "--publish", ep["publish"],
         "--api", ep["api"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # as from a terminal: a test run started in the background (`cmd &` in a
        # script, nohup) inherits SIGINT ignored, and Python keeps it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    lines: list[str] = []
    errors: list[str] = []  # drained too: a full stderr pipe would block the tail
    readers = [
        threading.Thread(target=lambda: lines.extend(iter(tail.stdout.readline, ""))),
        threading.Thread(target=lambda: errors.extend(iter(tail.stderr.readline, ""))),
    ]
    for reader in readers:
        reader.start()

    def printed_a_line() -> bool:
        p.send("t/1", np.zeros((3, 4), np.int16), {"scan": 7})
        return bool(lines)

    try:
        wait_for(printed_a_line, timeout=30, what="tail to print a line")
    finally:
        tail.send_signal(signal.SIGINT)
        try:
            code = tail.wait(30)  # a loaded 2-core CI machine: a generous bound
        except subprocess.TimeoutExpired:
            tail.kill()
            tail.wait()
            code = "no exit within 30 s of SIGINT"
        for reader in readers:
            reader.join(5)
    assert code == 0, f"tail: {code}; {len(lines)} lines; stderr: {''.join(errors)[-3000:]}"
    assert "3x4 int16" in lines[0] and "scan=7" in lines[0]
