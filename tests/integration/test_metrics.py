"""Prometheus metrics of both daemons (SPEC §8), scraped over HTTP and parsed with
prometheus_client.parser, checked against a known transfer."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from hidra_ng.testing import ReceiverProcess, free_port
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
    rx_port, tx_port = free_port(), free_port()
    receiver = ReceiverProcess(tmp_path / "store", "--metrics-port", str(rx_port))
    receiver.start()
    args = sender_args(
        receiver.ingest, receiver.api, tmp_path / "spool", SOURCES, metrics_port=tx_port
    )
    sender = DaemonProcess(args, tmp_path / "sender.log").start()
    try:

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


def test_promtool_accepts_both_daemons_metrics(transfer) -> None:
    """Prometheus's own checker (Debian package prometheus) on both expositions."""
    require_debian(["prometheus"], ["promtool"])
    _, rx_port, _, tx_port = transfer
    for name, port in (("receiver", rx_port), ("sender", tx_port)):
        text = metrics_text(port)
        assert b"process_resident_memory_bytes " in text and b"process_open_fds " in text
        done = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
        )
        problems = (done.stdout + done.stderr).decode()
        assert done.returncode == 0, f"promtool on the {name}'s /metrics: {problems}"


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
