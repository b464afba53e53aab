"""Each source end to end: real inputs made here -> source -> Producer -> receiver -> Consumer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq
from source_helpers import Running, count
from stream_v2_emitter import Emitter, bslz4, lz4_hdf5

from hidra_ng import Consumer, Producer
from hidra_ng.sender.sources import parse
from tests.helpers import wait_for


@pytest.fixture
def consumer(receiver):
    with Consumer(receiver.endpoints["api"]) as c:
        yield c


def read_all(consumer: Consumer, stream: str, **kw) -> list:
    info = consumer.info(stream)
    return [consumer.get(stream, i, **kw) for i in range(info.first, info.last + 1)]


# -------------------------------------------------------------------- dectris


def frames_for(image_id: int, channels: list[str], shape=(64, 48)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(image_id)
    return {c: rng.poisson(1 + i, shape).astype("<u2") for i, c in enumerate(channels)}


def test_dectris_plain_bslz4_and_lz4_images_pixel_for_pixel(make_producer, consumer):
    channels = ["threshold_1", "threshold_2"]
    with Emitter() as det:
        source = parse(f"dectris:{det.endpoint}?stream=p11/eiger&tables=1")
        running = Running(source, make_producer("dectris"))
        det.start(7, "series-7", channels, user_data={"sample": "lysozyme"}, tables=True)
        codecs = ["none"] * 3 + ["bslz4"] * 3 + ["lz4"] * 2
        sent = {}
        for image_id, codec in enumerate(codecs):
            sent[image_id] = frames_for(image_id, channels)
            det.image(7, "series-7", image_id, sent[image_id], codec, user_data={"n": image_id})
        det.send(b"\xff\x00 not CBOR")
        det.send({"type": "calibration", "series_id": 7})
        det.end(7, "series-7")
        for channel in channels:
            wait_for(lambda c=channel: count(consumer, f"p11/eiger/{c}") == len(codecs) + 3)
        wait_for(lambda: count(consumer, "p11/eiger/tables") == 5)
        running.close()
    assert source.refusals.counts == {"StreamV2Error": 1}  # the bytes that are not CBOR

    for channel in channels:
        stream = f"p11/eiger/{channel}"
        frames = read_all(consumer, stream)
        stored = read_all(consumer, stream, decode=False)
        start, images, extra, end = frames[0], frames[1:-2], frames[-2], frames[-1]
        # a message type of another producer (Jungfraujoch) is kept as metadata
        assert extra.data is None and extra.meta == {"type": "calibration", "series_id": 7}
        assert start.data is None and start.meta["type"] == "start"
        assert start.meta["channels"] == channels and start.meta["series_unique_id"] == "series-7"
        assert start.meta["user_data"] == {"sample": "lysozyme"}
        assert start.meta["arm_date"].startswith("2026-01-02T03:04:05")
        assert "flatfield" not in start.meta and "pixel_mask" not in start.meta
        assert end.data is None and end.meta == {
            "type": "end",
            "series_id": 7,
            "series_unique_id": "series-7",
        }
        for image_id, (frame, raw) in enumerate(zip(images, stored[1:-2], strict=True)):
            expected = sent[image_id][channel]
            assert frame.data.dtype == np.dtype("<u2") and frame.data.shape == (64, 48)
            np.testing.assert_array_equal(frame.data, expected)
            assert frame.meta["image_id"] == image_id and frame.meta["channel"] == channel
            assert frame.meta["real_time"] == [999_995, 50_000_000]
            assert frame.meta["start_time"] == [image_id * 1_000_000, 50_000_000]
            assert frame.meta["user_data"] == {"n": image_id}
            codec = {"none": "none", "bslz4": "bslz4", "lz4": "lz4-hdf5"}[codecs[image_id]]
            assert raw.compression == codec
            if codec == "bslz4":  # stored as received, byte for byte
                assert raw.data == bslz4(expected)
            elif codec == "lz4-hdf5":
                assert raw.data == lz4_hdf5(expected.tobytes())

    tables = read_all(consumer, "p11/eiger/tables")
    by_name = {(f.meta["table"], f.meta["channel"]): f.data for f in tables}
    np.testing.assert_array_equal(by_name["flatfield", "threshold_2"], np.full((64, 48), 2.0))
    assert by_name["pixel_mask", "threshold_1"].dtype == np.dtype("<u4")
    np.testing.assert_array_equal(
        by_name["countrate_correction_lookup_table", None], np.arange(1000)
    )


def test_dectris_restart_inside_a_series(make_producer, consumer):
    producer = make_producer("dectris-restart")
    channels = ["threshold_1"]
    stream = "eiger/threshold_1"
    with Emitter() as det:
        uri = f"dectris:{det.endpoint}?stream=eiger"
        first = Running(parse(uri), producer)
        det.start(3, "s3", channels)
        for i in range(3):
            det.image(3, "s3", i, frames_for(i, channels), "bslz4")
        wait_for(lambda: count(consumer, stream) == 4)
        first.close()
        det.wait_disconnected()  # a daemon that is down, as the detector sees it

        # the detector goes on while the daemon is down; its PUSH socket holds the images
        def detector() -> None:
            for i in range(3, 6):
                det.image(3, "s3", i, frames_for(i, channels), "bslz4")
            det.end(3, "s3")

        emitting = threading.Thread(target=detector)
        emitting.start()
        second = Running(parse(uri), producer)
        wait_for(lambda: count(consumer, stream) == 9)
        emitting.join()
        second.close()
    frames = read_all(consumer, stream)
    kinds = [f.meta["type"] for f in frames]
    assert kinds == ["start", "image", "image", "image", "restart"] + ["image"] * 3 + ["end"]
    assert frames[4].meta == {
        "type": "restart",
        "series_unique_id": "s3",
        "series_id": 3,
        "last_image_id": 2,
    }
    images = [f for f in frames if f.meta["type"] == "image"]
    assert [f.meta["image_id"] for f in images] == list(range(6))
    for f in images:
        np.testing.assert_array_equal(f.data, frames_for(f.meta["image_id"], channels)[channels[0]])


# ------------------------------------------------------------------------ zmq


def test_zmq_source_stores_valid_messages_and_counts_refusals(make_producer, consumer):
    source = parse("zmq:tcp://127.0.0.1:*?stream=local")
    running = Running(source, make_producer("zmq"))
    wait_for(source.ready.is_set)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(source.bound_endpoint)
    try:
        array = np.arange(12 * 10, dtype="<u4").reshape(12, 10)
        header = json.dumps
        good = [
            [header({"dtype": "uint32", "shape": [12, 10], "meta": {"n": 0}}), array],
            [header({"stream": "local/bytes"}), b"opaque payload"],
            [header({"meta": {"n": 2, "note": "metadata only"}})],
            [header({"dtype": "<u4", "shape": [12, 10], "compression": "bslz4"}), bslz4(array)],
            [header({"stream": "local/bytes", "finish": True})],
        ]
        bad = {
            "header": [b"{not json", b"x"],
            "parts": [b"{}", b"a", b"b"],
            "stream": [header({"stream": "bad name"}), b"x"],
            "dtype": [header({"dtype": "U8", "shape": [2]}), b"x" * 64],
            "size": [header({"dtype": "uint16", "shape": [4, 4]}), b"x" * 31],
            "meta": [header({"meta": [1, 2]}), b""],
            "compression": [header({"dtype": "uint8", "shape": [8], "compression": "gzip"})],
        }
        unknown_key = [header({"dtpye": "uint16", "shape": [2]}), b"xxxx"]
        for message in [good[0], *bad.values(), good[1], unknown_key, *good[2:]]:
            push.send_multipart([p.encode() if isinstance(p, str) else p for p in message])
        wait_for(lambda: count(consumer, "local") == 3)
        wait_for(lambda: consumer.info("local/bytes").finished)
        running.close()
    finally:
        push.close(linger=0)
        ctx.term()
    expected = dict.fromkeys(bad, 1)
    expected["header"] = 2  # and the unknown key
    assert dict(source.refusals.counts) == expected
    frames = read_all(consumer, "local")
    np.testing.assert_array_equal(frames[0].data, array)
    assert frames[0].meta == {"n": 0}
    assert frames[1].data is None and frames[1].meta["note"] == "metadata only"
    np.testing.assert_array_equal(frames[2].data, array)
    assert consumer.get("local", 2, decode=False).compression == "bslz4"
    assert [f.data for f in read_all(consumer, "local/bytes")] == [b"opaque payload"]


# ----------------------------------------------------------------------- hdf5


def write_series(path: Path, frames: np.ndarray, **filters) -> None:
    with h5py.File(path, "w") as f:
        chunks = (1, *frames.shape[1:])
        f.create_dataset("/entry/data/data", data=frames, chunks=chunks, **filters)


def test_hdf5_replays_a_series_then_is_done(make_producer, consumer, tmp_path):
    frames = np.random.default_rng(3).poisson(4, (12, 40, 30)).astype("<u2")
    plain, shuffled = tmp_path / "plain.h5", tmp_path / "bslz4.h5"
    write_series(plain, frames)
    write_series(shuffled, frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    producer = make_producer("hdf5", compression="zstd")
    for path, stream in ((plain, "rec/plain"), (shuffled, "rec/bslz4")):
        running = Running(parse(f"hdf5:{path}?stream={stream}&finish=1"), producer)
        wait_for(running.done)
        running.close()
        wait_for(lambda s=stream: consumer.info(s).finished if count(consumer, s) else False)
        stored = read_all(consumer, stream)
        assert [f.meta["frame"] for f in stored] == list(range(12))
        assert stored[0].meta["dataset"] == "/entry/data/data"
        np.testing.assert_array_equal(np.stack([f.data for f in stored]), frames)
    # DECTRIS-style chunks are passed on as stored, the others compressed by the Producer
    assert consumer.get("rec/bslz4", 5, decode=False).compression == "bslz4"
    assert consumer.get("rec/plain", 5, decode=False).compression == "zstd"


def test_hdf5_resumes_after_a_restart_without_duplicates(make_producer, consumer, tmp_path):
    frames = np.arange(20 * 6 * 5, dtype="<i4").reshape(20, 6, 5)
    path = tmp_path / "series.h5"
    write_series(path, frames)
    producer = make_producer("hdf5-restart")
    uri = f"hdf5:{path}?stream=rec/resume&rate=200"
    first = Running(parse(uri), producer)
    wait_for(lambda: count(consumer, "rec/resume") >= 4)
    first.close()
    assert count(consumer, "rec/resume") < 20 or pytest.skip("replay finished before the stop")
    second = Running(parse(uri), producer)
    wait_for(second.done)
    second.close()
    wait_for(lambda: count(consumer, "rec/resume") == 20)
    stored = read_all(consumer, "rec/resume")
    assert [f.meta["frame"] for f in stored] == list(range(20))
    np.testing.assert_array_equal(np.stack([f.data for f in stored]), frames)
    third = Running(parse(uri), producer)  # everything was replayed: nothing again
    wait_for(third.done)
    third.close()
    producer.flush(10)
    assert count(consumer, "rec/resume") == 20


def test_hdf5_missing_dataset_is_a_clear_error(make_producer, tmp_path):
    path = tmp_path / "x.h5"
    write_series(path, np.zeros((2, 3, 3), "u1"))
    running = Running(parse(f"hdf5:{path}?dataset=/entry/nope"), make_producer("hdf5-bad"))
    wait_for(running.done)
    with pytest.raises(Exception, match="has no dataset '/entry/nope'"):
        running.close()


# ---------------------------------------------------------------------- watch

WRITER = textwrap.dedent(
    """
    import os, sys, time
    root = sys.argv[1]
    os.makedirs(os.path.join(root, "run1"), exist_ok=True)
    for i in range(int(sys.argv[2])):
        name = os.path.join(root, "run1" if i % 2 else "", f"img_{i:04d}.cbf")
        with open(name, "wb") as f:  # written in pieces, like a detector's writer
            for part in range(3):
                f.write(bytes([i % 256, part]) * 500)
                f.flush()
                time.sleep(0.01)  # pacing the writer, not a wait
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not a frame")
    tmp = os.path.join(root, ".partial.cbf")
    with open(tmp, "wb") as f:
        f.write(b"renamed into place")
    os.rename(tmp, os.path.join(root, "renamed.cbf"))
    """
)


def expected_content(i: int) -> bytes:
    return b"".join(bytes([i % 256, part]) * 500 for part in range(3))


def write_files(directory: Path, n: int) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(directory), str(n)], check=True, timeout=60)


def by_path(consumer: Consumer, stream: str) -> dict[str, object]:
    frames = read_all(consumer, stream)
    paths = [f.meta["path"] for f in frames]
    assert len(paths) == len(set(paths)), f"a file was sent twice: {sorted(paths)}"
    return {f.meta["path"]: f for f in frames}


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_watch_sends_each_closed_file_once_across_a_restart(
    make_producer, consumer, tmp_path, mode
):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "before.cbf").write_bytes(b"arrived while the daemon was down")
    uri = f"watch:{incoming}?pattern=*.cbf&stream=files&mode={mode}&settle=0.3&poll=0.05"
    producer = make_producer(f"watch-{mode}")
    first = Running(parse(uri), producer)
    write_files(incoming, 6)
    wait_for(lambda: count(consumer, "files") == 8)
    first.close()
    sent = by_path(consumer, "files")
    assert set(sent) == {"before.cbf", "renamed.cbf"} | {
        f"run1/img_{i:04d}.cbf" if i % 2 else f"img_{i:04d}.cbf" for i in range(6)
    }
    for i in range(6):
        frame = sent[f"run1/img_{i:04d}.cbf" if i % 2 else f"img_{i:04d}.cbf"]
        assert frame.data == expected_content(i)
        assert frame.meta["size"] == 3000 and frame.meta["filename"] == f"img_{i:04d}.cbf"
        assert abs(frame.meta["mtime"] - os.stat(incoming / frame.meta["path"]).st_mtime) < 1e-6
    assert sent["renamed.cbf"].data == b"renamed into place"

    # restart on a new Producer over the same spool: nothing is sent again
    producer.close()
    again = make_producer(f"watch-{mode}")
    second = Running(parse(uri), again)
    (incoming / "after.cbf").write_bytes(b"new after the restart")
    wait_for(lambda: count(consumer, "files") >= 9)
    second.close()
    assert set(by_path(consumer, "files")) == set(sent) | {"after.cbf"}


def test_watch_removes_files_only_after_ack(make_producer, consumer, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(5):
        (incoming / f"f{i}.raw").write_bytes(bytes([i]) * 1000)
    uri = f"watch:{incoming}?stream=removed&remove=after_ack&settle=0"
    source = parse(uri)
    running = Running(source, make_producer("watch-remove"))
    wait_for(lambda: not list(incoming.iterdir()), what="files removed")
    running.close()
    assert source.removed_files == 5
    # every removed file is in the store, acknowledged before it went
    stored = by_path(consumer, "removed")
    assert {p: f.data for p, f in stored.items()} == {
        f"f{i}.raw": bytes([i]) * 1000 for i in range(5)
    }


def test_watch_keeps_files_while_the_receiver_does_not_ack(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "keep.raw").write_bytes(b"x" * 100)
    # a receiver that never answers: nothing is acknowledged
    producer = Producer(
        "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", tmp_path / "spool", sender_id="no-rx"
    )
    try:
        source = parse(f"watch:{incoming}?remove=after_ack&settle=0&mode=poll&poll=0.02")
        running = Running(source, producer)
        wait_for(lambda: source.sent_files == 1)
        rounds = source.rounds
        wait_for(lambda: source.rounds >= rounds + 5, what="five removal checks")
        running.close()
    finally:
        producer.close()
    assert (incoming / "keep.raw").exists() and source.removed_files == 0


def test_source_uri_errors_name_the_parameter(tmp_path):
    from hidra_ng.errors import ConfigError

    cases = {
        f"watch:{tmp_path}?remove=sometimes": "remove='sometimes'",
        f"watch:{tmp_path}?settle=-1": "settle='-1'",
        f"watch:{tmp_path}?colour=red": "unknown parameter 'colour'",
        "hdf5:?dataset=/x": "names no file",
        "dectris:detector:31001": "endpoint 'detector:31001'",
        "dectris:tcp://d:31001?tables=maybe": "tables='maybe'",
        "dectris1:detector:9999": "endpoint 'detector:9999'",
        "dectris1:tcp://d:9999?channel=": "channel='' is not valid",
        "dectris1:tcp://d:9999?stream=p11//x": "dectris1:tcp://d:9999",
        "dectris1:tcp://d:9999?series=1": "unknown parameter 'series'",
        "zmq:tcp://127.0.0.1:1?stream=a b": "has a space",
    }
    for uri, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("?", "\\?")):
            parse(uri)


def test_watch_removes_after_a_restart_what_was_sent_before(receiver, consumer, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "early.raw").write_bytes(b"sent before the restart")
    uri = f"watch:{incoming}?stream=late-ack&remove=after_ack&settle=0&mode=poll&poll=0.02"
    spool_dir = tmp_path / "spool"
    # two runs while the receiver is unreachable: spooled once, never acknowledged, kept
    for sent in (1, 0):
        offline = Producer("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", spool_dir, sender_id="late")
        try:
            source = parse(uri)
            running = Running(source, offline)
            wait_for(lambda s=source: s.rounds >= 5, what="five removal checks")
            running.close()
        finally:
            offline.close()
        assert source.sent_files == sent and (incoming / "early.raw").exists()
    # second run, receiver reachable: the spooled message is delivered, then the file removed
    online = Producer(
        receiver.endpoints["ingest"], receiver.endpoints["api"], spool_dir, sender_id="late"
    )
    try:
        source = parse(uri)
        running = Running(source, online)
        wait_for(lambda: not (incoming / "early.raw").exists(), what="early.raw removed")
        running.close()
    finally:
        online.close()
    assert source.sent_files == 0 and source.removed_files == 1
    assert [f.data for f in read_all(consumer, "late-ack")] == [b"sent before the restart"]
