"""DECTRIS Stream V2 as real detectors send it: recorded messages and our emitter end to end.

The recorded series are the public DECTRIS documentation repository's
``stream_v2/test_data`` (github.com/dectris/documentation, branch
``stream2-test_data``): an EIGER2 R 500K, three channels, 514x1030 pixels,
bslz4 and lz4, 8/16/32 bit. That repository states no licence, so its files are
not in ours: the tests that read them run when the environment variable
``DECTRIS_TEST_DATA`` names a local copy of ``stream_v2/test_data``
(one directory per set, ``000001.cbor`` ... one message each; a set's start
message ``000000.cbor`` may be absent: each set gets a start message of our
own, self-described like the real ones). Our emitter (tests/stream_v2_emitter.py)
reproduces their framing, which ``test_emitter_framing_equals_recorded`` checks,
and the emitter tests below always run, for every compression and bit depth.

Expected pixels come from DECTRIS's ``dectris-compression`` applied to the
bytes as sent, never from our own decoders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cbor2
import numpy as np
import pytest
from cbor_framing import framing
from conftest import wait_for
from dectris.compression import decompress
from source_helpers import Running, count
from stream_v2_emitter import (
    CHANNELS,
    COMPRESSIONS,
    Emitter,
    encode,
    end_message,
    image_message,
    start_message,
)

from hidra_ng import Consumer
from hidra_ng.sender.sources import parse

# Not HIDRA_NG_...: the daemons the tests start refuse HIDRA_NG_ names that are not settings.
ENV = "DECTRIS_TEST_DATA"
ROOT = Path(os.environ[ENV]) if os.environ.get(ENV) else None
SETS = sorted(p.name for p in ROOT.iterdir() if p.is_dir()) if ROOT and ROOT.is_dir() else []
NO_DATA = (
    f"recorded DECTRIS Stream V2 data not given: set {ENV} to a local copy of"
    " stream_v2/test_data of github.com/dectris/documentation (branch stream2-test_data)"
)
needs_data = pytest.mark.skipif(not SETS, reason=NO_DATA)
DTYPES = {64: "uint8", 69: "uint16", 70: "uint32"}  # typed-array tags the detector uses


@pytest.fixture
def consumer(receiver):
    with Consumer(receiver.endpoints["api"]) as c:
        yield c


def sent_images(raw: bytes) -> dict[str, tuple[bytes | None, np.ndarray]]:
    """channel -> (compressed bytes as sent or None, pixels by dectris-compression)."""
    msg = cbor2.loads(raw)
    out = {}
    for channel, array in msg["data"].items():
        dims, typed = array.value
        dtype = DTYPES[typed.tag]
        if isinstance(typed.value, bytes):  # not compressed
            out[channel] = (None, np.frombuffer(typed.value, dtype).reshape(dims))
            continue
        algorithm, elem_size, payload = typed.value.value  # tag 56500 in the typed array
        if algorithm == "lz4":
            pixels = decompress(payload, algorithm)
        else:
            pixels = decompress(payload, algorithm, elem_size=elem_size)
        out[channel] = (payload, np.frombuffer(pixels, dtype).reshape(dims))
    return out


def check_series(
    consumer: Consumer, prefix: str, images: list[bytes], unique: str, codec: str | None
) -> None:
    """Each channel stream: start, every image once in order pixel-exact, end."""
    expected = [sent_images(raw) for raw in images]
    for channel in CHANNELS:
        stream = f"{prefix}/{channel}"
        info = consumer.info(stream)
        assert info.count == len(images) + 2, stream
        start = consumer.get(stream, info.first)
        assert start.data is None and start.meta["type"] == "start"
        assert start.meta["channels"] == CHANNELS and start.meta["series_unique_id"] == unique
        for image_id, sent in enumerate(expected):
            index = info.first + 1 + image_id
            frame = consumer.get(stream, index)
            stored = consumer.get(stream, index, decode=False)
            payload, pixels = sent[channel]
            assert frame.meta["image_id"] == image_id and frame.meta["channel"] == channel
            assert frame.meta["series_unique_id"] == unique
            assert frame.data.dtype == pixels.dtype and frame.data.shape == pixels.shape
            np.testing.assert_array_equal(frame.data, pixels)
            if codec is not None:
                assert stored.compression == codec
            if payload is not None:
                assert bytes(stored.data) == payload  # stored as received, byte for byte
        end = consumer.get(stream, info.last)
        assert end.data is None and end.meta["type"] == "end"
        assert end.meta["series_unique_id"] == unique


def run_series(make_producer, consumer, prefix: str, messages: list[bytes]) -> object:
    with Emitter() as det:
        source = parse(f"dectris:{det.endpoint}?stream={prefix}")
        running = Running(source, make_producer(prefix.replace("/", "-")))
        for raw in messages:
            det.send(raw)
        for channel in CHANNELS:
            wait_for(
                lambda c=channel: count(consumer, f"{prefix}/{c}") == len(messages),
                timeout=60,
                what=f"{len(messages)} messages in {prefix}/{channel}",
            )
        running.close()
    assert source.refusals.total == 0, source.refusals.counts
    return source


# ---------------------------------------------------------------- recorded data


def recorded(name: str) -> tuple[list[bytes], bytes]:
    """A set's image messages in order and its end message."""
    files = sorted((ROOT / name).glob("*.cbor"))
    raws = [f.read_bytes() for f in files if f.name != "000000.cbor"]
    *images, end = raws
    assert cbor2.loads(end)["type"] == "end", f"{name}: the last message is not the end"
    return images, end


@needs_data
@pytest.mark.parametrize("name", SETS)
def test_recorded_series_through_sender_and_receiver(make_producer, consumer, name):
    images, end = recorded(name)
    ids = cbor2.loads(end)
    unique, series_id = ids["series_unique_id"], ids["series_id"]
    bits = int(name.rsplit("_", 1)[1].removesuffix("bit"))
    # the recorded sets lack their start message: ours, self-described like theirs
    start = start_message(
        series_id, unique, CHANNELS, shape=(514, 1030), dtype=f"uint{bits}", tables=True
    )
    prefix = f"rec/{name}"
    run_series(make_producer, consumer, prefix, [encode(start), *images, end])
    codec = "lz4-hdf5" if "_lz4_" in name else "bslz4"
    check_series(consumer, prefix, images, unique, codec)
    tables = consumer.info(f"{prefix}/tables")
    assert tables.count == 2 * len(CHANNELS) + 1  # flatfield and pixel mask per channel, LUT


def emitter_twin(raw: bytes) -> bytes:
    """What our emitter makes for the same content (pixels, ids, times) as a recorded message."""
    msg = cbor2.loads(raw)
    if msg["type"] == "end":
        return encode(end_message(msg["series_id"], msg["series_unique_id"]))
    frames, algorithm = {}, None
    for channel, array in msg["data"].items():
        dims, typed = array.value
        algorithm, elem_size, payload = typed.value.value
        pixels = decompress(
            payload, algorithm, **({} if algorithm == "lz4" else {"elem_size": elem_size})
        )
        frames[channel] = np.frombuffer(pixels, DTYPES[typed.tag]).reshape(dims)
    return encode(
        image_message(
            msg["series_id"],
            msg["series_unique_id"],
            msg["image_id"],
            frames,
            algorithm,
            msg["user_data"],
            # the detector writes milliseconds; cbor2 would write microseconds
            series_date=cbor2.CBORTag(0, msg["series_date"].isoformat(timespec="milliseconds")),
            times=(msg["real_time"], msg["start_time"], msg["stop_time"]),
        )
    )


@needs_data
def test_emitter_framing_equals_recorded(capsys):
    """Our emitter's messages have the recorded messages' tags, key order and types."""
    compared = 0
    identical_bytes = 0
    for name in SETS:
        for path in sorted((ROOT / name).glob("*.cbor")):
            raw = path.read_bytes()
            twin = emitter_twin(raw)
            assert framing(twin) == framing(raw), f"{name}/{path.name}"
            compared += 1
            identical_bytes += twin == raw
            with capsys.disabled():
                same = "byte-identical" if twin == raw else "LZ4 blocks packed differently"
                print(f"same framing: {name}/{path.name} ({len(framing(raw))} items; {same})")
    with capsys.disabled():
        print(f"{compared} recorded messages, framing equal; {identical_bytes} byte-identical")
    assert compared > 0


# ---------------------------------------------------------------- our emitter


@pytest.mark.parametrize("dtype", ["<u1", "<u2", "<u4"])
def test_emitter_every_compression_through_sender_and_receiver(make_producer, consumer, dtype):
    """Every tag-56500 algorithm, 8/16/32 bit, three channels, self-described."""
    rng = np.random.default_rng(np.dtype(dtype).itemsize)
    top = np.iinfo(dtype).max
    unique = f"emitted-{np.dtype(dtype).itemsize * 8}"
    shape = (37, 50)  # not a multiple of the bitshuffle block: the tail is stored raw
    start = start_message(3, unique, CHANNELS, shape=shape, dtype=np.dtype(dtype).name)
    images = []
    for image_id, compression in enumerate(COMPRESSIONS[1:]):  # every compressed form
        frames = {c: rng.poisson(2 + i, shape).astype(dtype) for i, c in enumerate(CHANNELS)}
        frames["difference"][0, :3] = top  # saturated pixels, as the detector marks them
        images.append(encode(image_message(3, unique, image_id, frames, compression)))
    prefix = f"emit/u{np.dtype(dtype).itemsize * 8}"
    run_series(
        make_producer, consumer, prefix, [encode(start), *images, encode(end_message(3, unique))]
    )
    expected = [sent_images(raw) for raw in images]
    codecs = {"bslz4": "bslz4", "lz4": "lz4-hdf5", "bszstd": "bszstd", "trpx": "trpx"}
    for channel in CHANNELS:
        stream = f"{prefix}/{channel}"
        first = consumer.info(stream).first
        for image_id, compression in enumerate(COMPRESSIONS[1:]):
            frame = consumer.get(stream, first + 1 + image_id)
            stored = consumer.get(stream, first + 1 + image_id, decode=False)
            payload, pixels = expected[image_id][channel]
            np.testing.assert_array_equal(frame.data, pixels)
            assert frame.data.dtype == np.dtype(dtype)
            assert stored.compression == codecs[compression]
            assert bytes(stored.data) == payload


def test_emitter_start_with_tables_stores_them_as_arrays(make_producer, consumer):
    """header_detail all: the tables go to STREAM/tables as arrays, the start meta lists them."""
    shape = (40, 30)
    start = start_message(
        4, "tables-4", CHANNELS, shape=shape, tables=True, table_compression="bslz4"
    )
    end = end_message(4, "tables-4")
    run_series(make_producer, consumer, "tab", [encode(start), encode(end)])
    meta = consumer.get("tab/threshold_1", 0).meta
    assert meta["tables_stream"] == "tab/tables"
    listed = {(t["table"], t["channel"]) for t in meta["tables"]}
    assert ("countrate_correction_lookup_table", None) in listed
    assert ("flatfield", "difference") in listed and ("pixel_mask", "threshold_2") in listed
    assert not {"flatfield", "pixel_mask", "countrate_correction_lookup_table"} & set(meta)
    info = consumer.info("tab/tables")
    tables = [consumer.get("tab/tables", i) for i in range(info.first, info.last + 1)]
    by_name = {(t.meta["table"], t.meta["channel"]): t for t in tables}
    assert len(by_name) == 2 * len(CHANNELS) + 1
    for i, channel in enumerate(CHANNELS):
        np.testing.assert_array_equal(by_name["flatfield", channel].data, np.full(shape, 1.0 + i))
        mask = by_name["pixel_mask", channel]
        np.testing.assert_array_equal(mask.data, np.eye(*shape, dtype="<u4") * (i + 1))
        assert mask.meta["series_unique_id"] == "tables-4" and mask.meta["message"] == "start"
    lut = by_name["countrate_correction_lookup_table", None]
    np.testing.assert_array_equal(lut.data, np.arange(1000))
    assert consumer.get("tab/tables", info.first, decode=False).compression == "bslz4"


# ---------------------------------------------------------------- the daemons


class SenderDaemon:
    """A real ``hidra-ng sender`` process with the given sources, stopped by pid."""

    def __init__(self, rx, tmp_path: Path, sources: list[str]) -> None:
        self.log = tmp_path / "sender.log"
        command = [
            sys.executable, "-m", "hidra_ng", "sender",
            "--ingest", rx.ingest, "--api", rx.api,
            "--spool-dir", str(tmp_path / "spool"), "--sender-id", "dcu",
            "--metrics-port", "0",
        ]  # fmt: skip
        for uri in sources:
            command += ["--source", uri]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    def alive(self) -> str:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return "alive"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def test_emitter_series_v2_and_v1_through_the_sender_daemon(receiver_process, tmp_path):
    """``hidra-ng sender --source dectris:... --source dectris1:...`` and ``hidra-ng receiver``."""
    from stream_v1_emitter import Emitter1, end_parts, header_parts, image_parts

    rng = np.random.default_rng(11)
    unique = "daemon-1"
    shape = (40, 56)
    v2 = [encode(start_message(1, unique, CHANNELS, shape=shape, tables=True))]
    for image_id, compression in enumerate(COMPRESSIONS):
        frames = {c: rng.poisson(2, shape).astype("<u2") for c in CHANNELS}
        v2.append(encode(image_message(1, unique, image_id, frames, compression)))
    v2.append(encode(end_message(1, unique)))
    v1_images = [rng.poisson(2, shape).astype("<u2") for _ in range(3)]
    with Emitter() as det, Emitter1() as det1:
        sender = SenderDaemon(
            receiver_process,
            tmp_path,
            [f"dectris:{det.endpoint}?stream=d2", f"dectris1:{det1.endpoint}?stream=d1"],
        )
        try:
            for raw in v2:
                det.send(raw, timeout=30)
            det1.send(header_parts(4, "basic", {"nimages": 3}), timeout=30)
            for i, (array, encoding) in enumerate(
                zip(v1_images, ["<", "lz4<", "bs16-lz4<"], strict=True)
            ):
                det1.send(image_parts(4, i, array, encoding))
            det1.send(end_parts(4))
            with Consumer(receiver_process.api) as consumer:
                for channel in CHANNELS:
                    wait_for(
                        lambda c=channel: count(consumer, f"d2/{c}") == len(v2),
                        timeout=60,
                        what=f"the V2 series in d2/{channel}",
                    )
                wait_for(lambda: count(consumer, "d1/threshold_1") == 5, timeout=60)
                sender.alive()
                check_series(consumer, "d2", v2[1:-1], unique, codec=None)
                assert consumer.info("d2/tables").count == 2 * len(CHANNELS) + 1
                info = consumer.info("d1/threshold_1")
                got = [consumer.get("d1/threshold_1", i) for i in range(info.first, info.last + 1)]
                assert [f.meta["type"] for f in got] == ["start", "image", "image", "image", "end"]
                for frame, array in zip(got[1:-1], v1_images, strict=True):
                    np.testing.assert_array_equal(frame.data, array)
        finally:
            sender.stop()


@needs_data
def test_recorded_sets_through_the_sender_daemon(receiver_process, tmp_path):
    """Every recorded set through ``hidra-ng sender`` (one dectris: source per set)."""
    series = {name: recorded(name) for name in SETS}
    emitters = {name: Emitter() for name in SETS}
    try:
        sender = SenderDaemon(
            receiver_process,
            tmp_path,
            [f"dectris:{emitters[n].endpoint}?stream=daemon/{n}" for n in SETS],
        )
        try:
            for name, (images, end) in series.items():
                ids = cbor2.loads(end)
                bits = int(name.rsplit("_", 1)[1].removesuffix("bit"))
                start = start_message(
                    ids["series_id"], ids["series_unique_id"], CHANNELS,
                    shape=(514, 1030), dtype=f"uint{bits}",
                )  # fmt: skip
                for raw in [encode(start), *images, end]:
                    emitters[name].send(raw, timeout=30)
            with Consumer(receiver_process.api) as consumer:
                for name, (images, end) in series.items():
                    messages = len(images) + 2
                    for channel in CHANNELS:
                        wait_for(
                            lambda n=name, c=channel, k=messages: (
                                count(consumer, f"daemon/{n}/{c}") == k
                            ),
                            timeout=120,
                            what=f"{name}/{channel}",
                        )
                    codec = "lz4-hdf5" if "_lz4_" in name else "bslz4"
                    unique = cbor2.loads(end)["series_unique_id"]
                    check_series(consumer, f"daemon/{name}", images, unique, codec)
                sender.alive()
        finally:
            sender.stop()
    finally:
        for emitter in emitters.values():
            emitter.close()
