"""Large payloads leave the spool as views of its map (no copy) and arrive intact."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import zmq

from hidra_ng import Consumer, Producer
from hidra_ng.receiver.daemon import Receiver
from tests.helpers import wait_for


def test_frames_sent_from_the_spools_map_arrive_intact(tmp_path: Path, receiver: Receiver) -> None:
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 60000, (256, 512), dtype=np.uint16) for _ in range(24)]
    small = [b"tiny %d" % i for i in range(5)]
    ep = receiver.endpoints
    with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "lent") as p:
        for i, frame in enumerate(frames):
            p.send("lent", frame, {"i": i})
            frame[:] = 0  # the caller reuses its buffer: what was spooled must not change
        p.send_many("lent", [(b, None) for b in small])
        p.flush(30)
        lender = p._link._push.lender
        assert lender.loans > 0  # payloads really went out as lent views
        wait_for(lambda: lender.open_loans == 0, 10, "zmq giving back every lent view")
    rng = np.random.default_rng(5)
    expected = [rng.integers(0, 60000, (256, 512), dtype=np.uint16) for _ in range(24)]
    with Consumer(ep["api"]) as c:
        got = [c.get("lent", i) for i in range(len(frames) + len(small))]
    for i, want in enumerate(expected):
        assert np.array_equal(got[i].data, want) and got[i].meta == {"i": i}
    assert [f.data for f in got[len(frames) :]] == small


def test_the_spool_map_grows_while_a_stalled_receiver_holds_lent_frames(
    tmp_path: Path, receiver: Receiver
) -> None:
    """zmq keeps lent views while the receiver does not read; the map must still grow."""
    frames = [bytes([i]) * (1 << 20) for i in range(24)]
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.PULL)  # takes one message, then reads nothing more
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    silent_api = ctx.socket(zmq.ROUTER)
    try:
        ingest = f"tcp://127.0.0.1:{stalled.bind_to_random_port('tcp://127.0.0.1')}"
        api = f"tcp://127.0.0.1:{silent_api.bind_to_random_port('tcp://127.0.0.1')}"
        with Producer(ingest, api, tmp_path / "spool", "stalled") as p:
            for frame in frames:
                p.send("grow", frame)
            lender = p._link._push.lender
            wait_for(
                lambda: lender.open_loans > 0, 30, "frames lent to zmq, which cannot send them"
            )
            env = p._spool.env
            before = env.map_bytes
            grower = threading.Thread(target=env._grow)  # what an append does when the map is full
            grower.start()
            wait_for(lambda: not grower.is_alive(), 30, "the map growing despite the lent frames")
            assert env.map_bytes == 2 * before
    finally:
        stalled.close(0)
        silent_api.close(0)
        ctx.term()
    ep = receiver.endpoints  # a receiver that reads: everything spooled arrives, intact
    with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "stalled") as p:
        p.flush(60)
    with Consumer(ep["api"]) as c:
        assert [c.get("grow", i).data for i in range(len(frames))] == frames
