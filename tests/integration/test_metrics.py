"""Prometheus metrics of both daemons (SPEC §8), scraped over HTTP and parsed with
prometheus_client.parser, checked against a known transfer."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hidra_ng.testing import ReceiverProcess
from tests.debian import require_debian
from tests.helpers import wait_for
from tests.ops_helpers import DaemonProcess, scrape, sender_args, try_scrape

pytestmark = pytest.mark.slow

# Two sources into two streams, so per-stream labels are told apart.
STREAMS = {"metrics/a": (30, (32, 32)), "metrics/b": (12, (16, 8))}  # frames, shape of uint16
SOURCES = [
    f"simulate:?count={n}&rate=0&shape={shape[0]}x{shape[1]}&dtype=uint16&stream={name}"
    for name, (n, shape) in STREAMS.items()
]
TOTAL = sum(n for n, _ in STREAMS.values())

#: SPEC §8: the names every daemon must expose, exactly.
RECEIVER_NAMES = [
    "hidra_ng_receiver_messages_total",
    "hidra_ng_receiver_bytes_total",
    "hidra_ng_receiver_rejected_total",
    "hidra_ng_receiver_commit_seconds",
    "hidra_ng_receiver_last_index",
    "hidra_ng_receiver_store_bytes",
    "hidra_ng_group_pending",
    "hidra_ng_group_redelivered_total",
    "hidra_ng_group_parked_total",
    "hidra_ng_subscriber_skipped_total",
    "hidra_ng_build_info",
]
SENDER_NAMES = [
    "hidra_ng_sender_sent_total",
    "hidra_ng_sender_acked_total",
    "hidra_ng_sender_spool_messages",
    "hidra_ng_sender_spool_bytes",
    "hidra_ng_sender_receiver_up",
    "hidra_ng_build_info",
]


def exposed_names(port: int) -> set[str]:
    """Every metric name in the exposition, from its samples and its TYPE lines."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            counter = kind == "counter" and not name.endswith("_total")
            names.add(name + "_total" if counter else name)
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split()[0])
    return names


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def transfer(tmp_path: Path):
    """A receiver and a sender daemon with metrics, after the whole transfer is acked."""
    receiver = ReceiverProcess(tmp_path / "store", "--metrics-port", "-1")  # any free port
    receiver.start()
    rx_port = receiver.metrics_port
    ready = tmp_path / "sender-ready.json"
    args = sender_args(
        receiver.ingest,
        receiver.api,
        tmp_path / "spool",
        SOURCES,
        metrics_port=-1,
        extra=("--ready-file", str(ready)),
    )
    sender = DaemonProcess(args, tmp_path / "sender.log").start()
    try:
        tx_port = sender.ready(ready)["metrics_port"]

        def done() -> dict | None:
            s = try_scrape(tx_port)
            ok = (
                s
                and value(s, "hidra_ng_sender_acked_total") == TOTAL
                and value(s, "hidra_ng_sender_spool_messages") == 0
            )
            return s if ok else None

        wait_for(lambda: done() or not sender.running(), timeout=60, what="all frames acked")
        assert sender.running(), sender.read_log()
        yield receiver, rx_port, sender, tx_port
    finally:
        sender.kill()
        receiver.kill()


def metrics_text(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read()


def promtool_check(name: str, port: int) -> None:
    """Prometheus's own checker (Debian package prometheus) on a daemon's exposition,
    which has the process collectors too."""
    require_debian(["prometheus"], ["promtool"])
    text = metrics_text(port)
    assert b"process_resident_memory_bytes " in text and b"process_open_fds " in text
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    problems = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, f"promtool on the {name}'s /metrics: {problems}"


def test_promtool_accepts_both_daemons_metrics(transfer) -> None:
    require_debian(["prometheus"], ["promtool"])
    _, rx_port, _, tx_port = transfer
    for name, port in (("receiver", rx_port), ("sender", tx_port)):
        promtool_check(name, port)


def test_promtool_accepts_the_writers_metrics(receiver, make_producer, tmp_path: Path) -> None:
    """``hidra-ng write`` on any free metrics port, read from its ready file."""
    require_debian(["prometheus"], ["promtool"])
    stream = "metrics/written"
    producer = make_producer()
    for k in range(4):
        producer.send(stream, np.full((8, 8), k, np.uint16))
    producer.finish(stream)
    producer.flush(timeout=30)
    ready = tmp_path / "writer-ready.json"
    args = ["write", "--api", receiver.endpoints["api"], "--dir", str(tmp_path / "out"),
            "--format", "hdf5", "--metrics-port", "-1", "--ready-file", str(ready)]  # fmt: skip
    with DaemonProcess(args, tmp_path / "writer.log") as writer:
        port = writer.ready(ready)["metrics_port"]
        wait_for(
            lambda: (
                (try_scrape(port) or {}).get(
                    ("hidra_ng_writer_frames_total", (("stream", stream),))
                )
                == 4
            ),
            timeout=60,
            what="the 4 frames in a complete file",
        )
        promtool_check("writer", port)
        assert writer.terminate() == 0, writer.read_log()


def test_promtool_accepts_the_bridges_metrics(rabbitmq, receiver, make_producer, tmp_path) -> None:
    """``hidra-ng bridge`` on any free metrics port, read from its ready file."""
    from tests.bridge_helpers import BridgeProcess

    require_debian(["prometheus"], ["promtool"])
    stream = "metrics/bridged"
    producer = make_producer()
    for k in range(5):
        producer.send(stream, bytes([k]) * 100)
    producer.flush(timeout=30)
    api = receiver.endpoints["api"]
    bridge = BridgeProcess(api, rabbitmq.stream_uri, tmp_path / "b", "--prefix", "t-promtool")
    bridge.start()
    try:
        wait_for(
            lambda: (
                (try_scrape(bridge.metrics_port) or {}).get(
                    ("hidra_ng_bridge_published_total", (("stream", stream),))
                )
                == 5
            ),
            timeout=60,
            what="5 frames published",
        )
        promtool_check("bridge", bridge.metrics_port)
        assert bridge.terminate() == 0, bridge.read_log()[-3000:]
    finally:
        bridge.kill()


def test_metrics_match_the_transfer(transfer) -> None:
    receiver, rx_port, sender, tx_port = transfer

    rx = scrape(rx_port)
    for stream, (frames, shape) in STREAMS.items():
        assert value(rx, "hidra_ng_receiver_messages_total", stream=stream) == frames
        frame_bytes = shape[0] * shape[1] * 2
        assert value(rx, "hidra_ng_receiver_bytes_total", stream=stream) == frames * frame_bytes
        assert value(rx, "hidra_ng_receiver_last_index", stream=stream) == frames - 1
    commits = value(rx, "hidra_ng_receiver_commit_seconds_count")
    assert 0 < commits <= TOTAL
    assert value(rx, "hidra_ng_receiver_commit_seconds_bucket", le="+Inf") == commits
    assert value(rx, "hidra_ng_receiver_commit_seconds_sum") > 0
    assert value(rx, "hidra_ng_receiver_store_bytes") > 0
    assert value(rx, "hidra_ng_subscriber_skipped_total") == 0
    assert [k for k in rx if k[0] == "hidra_ng_receiver_rejected_total"] == []
    (build,) = [k for k in rx if k[0] == "hidra_ng_build_info"]
    assert dict(build[1])["version"] and rx[build] == 1
    assert not [k for k in rx if k[0].endswith("_created")], "no _created series"
    assert set(RECEIVER_NAMES) <= exposed_names(rx_port)

    tx = scrape(tx_port)
    acked = value(tx, "hidra_ng_sender_acked_total")
    assert acked == TOTAL
    assert value(tx, "hidra_ng_sender_sent_total") >= acked
    assert value(tx, "hidra_ng_sender_spool_messages") == 0
    assert value(tx, "hidra_ng_sender_spool_bytes") == 0
    assert value(tx, "hidra_ng_sender_receiver_up") == 1
    assert set(SENDER_NAMES) <= exposed_names(tx_port)

    # the receiver dies: the sender notices within a few heartbeats
    receiver.kill()
    wait_for(
        lambda: value(scrape(tx_port), "hidra_ng_sender_receiver_up") == 0,
        timeout=20,
        what="receiver_up 0 after the receiver was killed",
    )
    assert sender.terminate(timeout=30) == 0, sender.read_log()
