"""Large payloads leave the spool as views of its map (no copy) and arrive intact."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
        lender = p._link._lender
        assert lender.loans > 0  # payloads really went out as lent views
        wait_for(lambda: lender.open_loans == 0, 10, "zmq giving back every lent view")
    rng = np.random.default_rng(5)
    expected = [rng.integers(0, 60000, (256, 512), dtype=np.uint16) for _ in range(24)]
    with Consumer(ep["api"]) as c:
        got = [c.get("lent", i) for i in range(len(frames) + len(small))]
    for i, want in enumerate(expected):
        assert np.array_equal(got[i].data, want) and got[i].meta == {"i": i}
    assert [f.data for f in got[len(frames) :]] == small
