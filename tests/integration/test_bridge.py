"""``hidra-ng bridge`` against a real RabbitMQ (SPEC §13): what rstream and pika readers see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hidra_ng import Consumer
from hidra_ng.bridge import broker_name
from tests.bridge_helpers import InProcessBridge, bridge_config, read_pika, read_rstream
from tests.conftest import digest, wait_for

pytestmark = pytest.mark.timeout(240)


def _send(producer, stream: str, count: int, shape=(16, 8)) -> list:
    frames = []
    for i in range(count):
        frame = np.full(shape, i, dtype=np.uint16) + np.arange(shape[1], dtype=np.uint16)
        producer.send(stream, frame, meta={"i": i, "scan": "x"})
        frames.append(frame)
    return frames


def test_rstream_and_pika_read_the_same_frames_and_the_end(
    rabbitmq, receiver, make_producer, tmp_path
) -> None:
    stream = "p11/scan.1-a"
    producer = make_producer()
    frames = _send(producer, stream, 20)
    producer.send(stream, b"raw bytes", meta={"kind": "bytes"})
    producer.send(stream, None, meta={"kind": "none"})
    producer.finish(stream)
    producer.flush(timeout=60)
    config = bridge_config(receiver.endpoints["api"], rabbitmq.stream_uri, tmp_path / "b")
    with InProcessBridge(config) as bridge:
        wait_for(lambda: stream in bridge._finished, timeout=60, what="the end message confirmed")
    target = broker_name(stream)
    assert target == "hidra.p11.scan-.1--a"
    got = read_rstream(rabbitmq.stream_uri, target)
    by_pika = read_pika(rabbitmq.amqp_uri, target)
    assert [m.index for m in got] == list(range(23))
    assert [(m.index, m.digest) for m in by_pika] == [(m.index, m.digest) for m in got]
    for m in got[:20]:
        i = m.index
        assert m.props["hidra_stream"] == stream and m.props["sender"] == "det-1"
        assert m.props["seq"] == i and m.props["hidra_finished"] is False
        assert m.props["dtype"] == "<u2" and json.loads(m.props["shape"]) == [16, 8]
        assert m.props["compression"] == "none" and m.props["payload"] == "array"
        assert json.loads(m.props["meta"]) == {"i": i, "scan": "x"}
        assert m.props["stored"] >= m.props["created"] > 0
        assert m.digest == digest(frames[i])
    assert got[20].body == b"raw bytes" and got[20].props["payload"] == "bytes"
    assert got[21].body == b"" and got[21].props["payload"] == "none"
    end = got[22]
    assert end.finished and end.props["hidra_index"] == 22 and end.body == b""
    for m in by_pika:  # pika sees the same properties as headers
        assert m.props["hidra_index"] == m.index and m.props["hidra_stream"] == stream
    assert by_pika[-1].finished


def test_record_mode_sends_properties_and_no_payload(
    rabbitmq, receiver, make_producer, tmp_path
) -> None:
    stream = "record/only"
    producer = make_producer(compression="lz4")
    _send(producer, stream, 5, shape=(64, 64))
    producer.finish(stream)
    producer.flush(timeout=60)
    config = bridge_config(
        receiver.endpoints["api"], rabbitmq.stream_uri, tmp_path / "b", payload="record"
    )
    with InProcessBridge(config) as bridge:
        wait_for(lambda: stream in bridge._finished, timeout=60, what="the end message confirmed")
    got = read_rstream(rabbitmq.stream_uri, broker_name(stream))
    assert [m.index for m in got] == list(range(6)) and got[-1].finished
    with Consumer(receiver.endpoints["api"]) as c:
        for m in got[:5]:
            assert m.body == b""
            assert m.props["compression"] == "lz4"
            stored = c.get(stream, m.index, decode=False)
            assert m.props["nbytes"] == stored.nbytes == len(stored.data)


def _published(bridge, stream: str) -> float:
    return bridge.metrics.published.labels(stream)._value.get()


def test_streams_created_later_and_patterns(rabbitmq, receiver, make_producer, tmp_path, caplog):
    """'*' within a segment, '**' across; a pattern matching nothing is told once and waited for."""
    config = bridge_config(
        receiver.endpoints["api"],
        rabbitmq.stream_uri,
        tmp_path / "b",
        streams=["later/*", "deep/**"],
        prefix="t-later",
    )
    producer = make_producer()
    with caplog.at_level("INFO", logger="hidra_ng.bridge"), InProcessBridge(config) as bridge:
        wait_for(
            lambda: "matches no stream" in caplog.text, timeout=30, what="the waiting pattern told"
        )
        for stream in ("later/a", "later/a/b", "deep/x/y", "other"):
            producer.send(stream, b"x")
            producer.finish(stream)
        producer.flush(timeout=60)
        wait_for(
            lambda: {"later/a", "deep/x/y"} <= bridge._finished, timeout=60, what="both bridged"
        )
        assert "later/a/b" not in bridge._links and "other" not in bridge._links
        assert "later/a/b" not in bridge._finished
    told = [r for r in caplog.records if "matches no stream" in r.getMessage()]
    assert len({r.getMessage() for r in told}) == 2 and len(told) == 2  # once per pattern
    assert [m.index for m in read_rstream(rabbitmq.stream_uri, "t-later.later.a")] == [0, 1]


def test_broker_down_at_start_then_up(private_rabbitmq, receiver, make_producer, tmp_path, caplog):
    private_rabbitmq.kill()
    stream = "down/then-up"
    producer = make_producer()
    _send(producer, stream, 10)
    producer.finish(stream)
    producer.flush(timeout=60)
    config = bridge_config(receiver.endpoints["api"], private_rabbitmq.stream_uri, tmp_path / "b")
    with caplog.at_level("INFO", logger="hidra_ng.bridge"), InProcessBridge(config) as bridge:
        wait_for(lambda: "cannot be reached" in caplog.text, timeout=30, what="the retry logged")
        assert f"127.0.0.1:{private_rabbitmq.stream_port}" in caplog.text
        assert bridge.metrics.broker_up._value.get() == 0
        private_rabbitmq.start()
        wait_for(lambda: stream in bridge._finished, timeout=120, what="bridged once up")
        assert bridge.metrics.broker_up._value.get() == 1
    got = read_rstream(private_rabbitmq.stream_uri, broker_name(stream))
    assert [m.index for m in got] == list(range(11)) and got[-1].finished


def test_receiver_restarted_under_the_bridge(rabbitmq, receiver_process, tmp_path) -> None:
    from hidra_ng import Producer

    stream = "restart/receiver"
    rx = receiver_process
    config = bridge_config(rx.api, rabbitmq.stream_uri, tmp_path / "b", prefix="t-restart")
    with (
        Producer(rx.ingest, rx.api, tmp_path / "spool", "det-r") as producer,
        InProcessBridge(config) as bridge,
    ):
        _send(producer, stream, 30)
        producer.flush(timeout=60)
        wait_for(lambda: _published(bridge, stream) >= 30, timeout=60, what="30 published")
        rx.kill()
        rx.start()
        _send(producer, stream, 30)
        producer.finish(stream)
        producer.flush(timeout=60)
        wait_for(lambda: stream in bridge._finished, timeout=120, what="all bridged")
    got = read_rstream(rabbitmq.stream_uri, broker_name(stream, "t-restart"))
    assert [m.index for m in got] == list(range(61)) and got[-1].finished
    assert [m.props["seq"] for m in got[:60]] == list(range(60))


def test_frames_removed_by_retention_are_counted_and_logged(
    rabbitmq, receiver_config, tmp_path, caplog
) -> None:
    from hidra_ng import Producer
    from hidra_ng.receiver.daemon import Receiver

    receiver_config.max_store_bytes = 1 << 20
    stream = "retention/gone"
    rx = Receiver(receiver_config)
    rx.start()
    try:
        with Producer(
            rx.endpoints["ingest"], rx.endpoints["api"], tmp_path / "spool", "det-g"
        ) as producer:
            for i in range(40):
                producer.send(stream, bytes([i]) * (64 << 10))
            producer.finish(stream)
            producer.flush(timeout=60)
        with Consumer(rx.endpoints["api"]) as c:
            first = wait_for(lambda: c.info(stream).first, timeout=30, what="retention")
        config = bridge_config(rx.endpoints["api"], rabbitmq.stream_uri, tmp_path / "b")
        with caplog.at_level("INFO", logger="hidra_ng.bridge"), InProcessBridge(config) as bridge:
            wait_for(lambda: stream in bridge._finished, timeout=60, what="bridged")
            gone = bridge.metrics.gone.labels(stream)._value.get()
    finally:
        rx.stop()
    # retention may go on removing while the bridge reads: every removed frame counts
    assert gone >= first > 0
    assert f"frames of {stream!r} (0 to " in caplog.text
    told = [r.getMessage() for r in caplog.records if "were removed" in r.getMessage()]
    assert sum(int(m.split()[1]) for m in told) == gone
    got = read_rstream(rabbitmq.stream_uri, broker_name(stream))
    assert [m.index for m in got] == list(range(int(gone), 41))
    assert all(m.body == bytes([m.index]) * (64 << 10) for m in got[:-1])


def _cli(*args: str, timeout: float = 60):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "hidra_ng", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--rabbitmq", "amqp://guest:guest@localhost:5672/"], "'amqp', not rabbitmq-stream://"),
        (["--rabbitmq", "rabbitmq-stream://h:99999/"], "is not valid"),
        (["--streams", "p11/a b"], '--streams "p11/a b"'),
        (["--payload", "half"], "--payload \"half\": expected one of 'full' or 'record'"),
        (["--prefix", "amq.x"], '--prefix "amq.x"'),
        (["--api", "localhost:50101"], "--api"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args, named, tmp_path) -> None:
    result = _cli("--state-dir", str(tmp_path / "b"), "--metrics-port", "0", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines
    assert "Traceback" not in result.stderr


def test_unreachable_broker_waits_and_says_so_then_sigterm_exits_0(receiver, tmp_path) -> None:
    from hidra_ng.testing import reserve_port
    from tests.bridge_helpers import BridgeProcess
    from tests.ops_helpers import try_scrape

    nowhere = reserve_port()  # held, never listening: each connection is refused
    uri = f"rabbitmq-stream://guest:secret@127.0.0.1:{nowhere.port}/%2F"
    bridge = BridgeProcess(receiver.endpoints["api"], uri, tmp_path / "b").start()
    try:
        wait_for(lambda: "cannot be reached" in bridge.read_log(), timeout=60, what="the log")
        line = next(x for x in bridge.read_log().splitlines() if "cannot be reached" in x)
        assert uri.replace(":secret", "").split("@")[1] in line and "secret" not in line
        samples = wait_for(lambda: try_scrape(bridge.metrics_port), timeout=30, what="/metrics")
        assert samples[("hidra_ng_bridge_broker_up", ())] == 0
        assert bridge.proc.poll() is None, "waits for the broker, does not exit"
        assert bridge.terminate() == 0
    finally:
        bridge.kill()
        nowhere.release()


def test_metrics_of_a_bridge_process(rabbitmq, receiver, make_producer, tmp_path) -> None:
    from tests.bridge_helpers import BridgeProcess
    from tests.ops_helpers import try_scrape

    stream = "metrics/one"
    producer = make_producer()
    _send(producer, stream, 12)
    producer.flush(timeout=60)
    bridge = BridgeProcess(
        receiver.endpoints["api"], rabbitmq.stream_uri, tmp_path / "b", "--prefix", "t-metrics"
    ).start()
    try:
        labels = (("stream", stream),)

        def settled():
            s = try_scrape(bridge.metrics_port) or {}
            done = s.get(("hidra_ng_bridge_published_total", labels)) == 12
            return s if done and s.get(("hidra_ng_bridge_lag_frames", labels)) == 0 else None

        samples = wait_for(settled, timeout=60, what="12 published, lag 0")
        assert samples[("hidra_ng_bridge_broker_up", ())] == 1
        assert samples[("hidra_ng_bridge_gone_total", labels)] == 0
        assert bridge.terminate() == 0
    finally:
        bridge.kill()
