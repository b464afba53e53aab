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
