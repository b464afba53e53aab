"""Hostile input on a sender daemon's local ``zmq:`` source (SPEC §9).

Detector software pushes ``[JSON header, payload]``; this test pushes thousands
of broken messages between valid ones into a real ``hidra-ng sender`` process.
Every broken one must be refused exactly once (counted on the sender's
``/metrics``), every valid one must reach the receiver once and in order, and
the daemon must stay up with bounded memory.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request

import numpy as np
import psutil
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from hidra_ng import Consumer
from tests.helpers import digest, wait_for

pytestmark = pytest.mark.slow


def hostile(rng: random.Random) -> list[list[bytes]]:
    def h(**fields) -> bytes:
        return json.dumps(fields).encode()

    arr = np.zeros((4, 4), np.uint16).tobytes()
    deep = b'{"meta": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3001
    cases: list[list[bytes]] = []
    for _ in range(150):
        cases += [
            [rng.randbytes(rng.randint(0, 40))],  # one frame
            [h(stream="z"), b"x", b"extra"],  # three frames
            [rng.randbytes(rng.randint(1, 40)), b"x"],  # header not JSON
            [b"[1, 2, 3]", b"x"],  # header not an object
            [h(stream="z", colour="red"), b"x"],  # unknown key
            [h(stream="z", dtype="object", shape=[1]), b"x" * 8],
            [h(stream="z", dtype="uint16", shape=[-4, 4]), arr],
            [h(stream="z", dtype="uint16", shape=[4, 4]), arr[:-1]],  # size mismatch
            [h(stream="z", dtype="uint16", shape=[2**31, 2**31]), arr],
            [h(stream="bad name", dtype="uint16", shape=[4, 4]), arr],
            [h(stream="z", compression="gzip"), b"x"],
            [h(stream="z", meta=[1, 2]), b"x"],
            [h(stream="z", meta={"k": "x" * 70_000}), b"x"],
            [h(stream="z", finish=True), b"payload"],  # finish with a payload
            [h(stream="z", version=99), b"x"],
            [deep, b"x"],
        ]
    return cases


def valid(i: int) -> tuple[list[bytes], bytes]:
    frame = np.full((16, 16), i, np.uint16)
    header = {"stream": "z", "dtype": "uint16", "shape": [16, 16], "meta": {"i": i}}
    return [json.dumps(header).encode(), frame.tobytes()], digest(frame)


def refused_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "hidra_ng_sender_source_refused_total"
    )


def test_garbage_on_the_zmq_source_is_refused_and_valid_frames_arrive(receiver_process, tmp_path):
    rx = receiver_process
    ready = tmp_path / "sender-ready.json"
    source = "zmq:tcp://127.0.0.1:*?stream=z"
    sender = subprocess.Popen(
        [
            sys.executable, "-m", "hidra_ng", "sender",
            "--ingest", rx.ingest, "--api", rx.api,
            "--spool-dir", str(tmp_path / "spool"), "--sender-id", "fuzzed",
            "--source", source, "--metrics-port", "-1",
            "--ready-file", str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "sender.log").open("wb"),
    )  # fmt: skip
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    try:
        wait_for(ready.exists, timeout=30, what="the sender daemon's ready file")
        bound = json.loads(ready.read_text())
        metrics_port = bound["metrics_port"]  # -1: any free port, this one
        assert metrics_port > 0
        push.connect(bound["sources"][source])
        proc = psutil.Process(sender.pid)
        rss_before = proc.memory_info().rss
        rng = random.Random(7)
        bad = hostile(rng)
        good = [valid(i) for i in range(60)]
        plan = [("bad", m) for m in bad] + [("good", m) for m in good]
        rng.shuffle(plan)
        # keep the valid ones in order among themselves
        goods = iter(good)
        for kind, message in plan:
            push.send_multipart(message if kind == "bad" else next(goods)[0])
        wait_for(
            lambda: refused_total(metrics_port) >= len(bad),
            timeout=60,
            what=f"{len(bad)} refusals",
        )
        assert refused_total(metrics_port) == len(bad)
        with Consumer(rx.api) as c:
            wait_for(lambda: _count(c, "z") == len(good), timeout=60, what="the valid frames")
            frames = list(c.replay("z"))
        assert [f.meta["i"] for f in frames] == list(range(len(good)))
        assert [digest(f.data) for f in frames] == [d for _, d in good]
        assert sender.poll() is None, (tmp_path / "sender.log").read_text()[-3000:]
        growth = proc.memory_info().rss - rss_before
        assert growth < 100 << 20, f"sender RSS grew by {growth >> 20} MiB"
        print(f"zmq source: {len(bad)} hostile messages refused, {len(good)} valid stored")
    finally:
        push.close()
        ctx.term()
        sender.terminate()
        sender.wait(30)


def _count(c: Consumer, stream: str) -> int:
    try:
        return c.info(stream).count
    except Exception:
        return 0
