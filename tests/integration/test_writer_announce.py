"""Announcements of complete series on an AMQP queue (SPEC §15), read with pika from the
session's real RabbitMQ node: Zocalo's message shape, persistent, a deterministic id that a
restarted writer's repeat carries again."""

from __future__ import annotations

import json
import uuid

import pika
import pytest
from conftest import wait_for
from writer_helpers import detector, running_writer, send_series, wait_master

from hidra_ng.writer.stream import STATE_FILE


def drain(uri: str, queue: str) -> list[tuple[pika.BasicProperties, dict]]:
    conn = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        ch = conn.channel()
        got = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((props, json.loads(body)))
    finally:
        conn.close()


@pytest.fixture
def queue() -> str:
    return f"hidra-test-{uuid.uuid4().hex[:8]}"


def test_each_complete_series_is_announced_once_in_zocalos_shape(
    make_producer, receiver, tmp_path, rabbitmq, queue
):
    api = receiver.endpoints["api"]
    out = tmp_path / "out"
    stream = "p11/eiger/threshold_1"
    options = dict(streams=["p11/**"], frames_per_file=3, amqp=rabbitmq.amqp_uri, queue=queue,
                   recipes=["per-image-analysis", "xia2"])  # fmt: skip
    with detector(make_producer) as det, running_writer(api, out, **options) as writer:
        send_series(det, 21, 7)
        send_series(det, 22, 2)
        wait_master(out, stream, 22)
        wait_for(lambda: writer.metrics.announced._value.get() == 2, timeout=30,
                 what="two confirmed announcements")  # fmt: skip
    messages = drain(rabbitmq.amqp_uri, queue)
    assert len(messages) == 2
    (props, first), (_, second) = messages
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert first["recipes"] == ["per-image-analysis", "xia2"]
    p = first["parameters"]
    directory = out / "p11" / "eiger" / "threshold_1"
    assert p["file"] == p["master"] == str(directory / "series_21_master.h5")
    assert p["data_files"] == [str(directory / f"series_21_data_00000{n}.h5") for n in (1, 2, 3)]
    assert p["stream"] == stream and p["format"] == "nxmx" and p["complete"] is True
    assert (p["first_index"], p["last_index"], p["image_count"]) == (0, 8, 7)
    assert (p["image_nr_low"], p["image_nr_high"]) == (1, 7)
    assert (p["series_id"], p["series_unique_id"]) == (21, "series-21")
    assert props.message_id == p["hidra_ng_id"]
    assert second["parameters"]["first_index"] == 9 and second["parameters"]["series_id"] == 22

    # a writer that must redo the series (its checkpoint lost) writes the same files and
    # announces them again under the same ids: a consumer recognises the repeat
    (directory / STATE_FILE).unlink()
    with running_writer(api, out, **options) as writer:
        wait_for(lambda: writer.metrics.announced._value.get() == 2, timeout=60,
                 what="the repeated announcements")  # fmt: skip
    again = drain(rabbitmq.amqp_uri, queue)
    assert [pr.message_id for pr, _ in again] == [pr.message_id for pr, _ in messages]
    assert [m for _, m in again] == [m for _, m in messages]
