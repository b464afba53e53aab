"""DECTRIS Stream V1 (``dectris1:``) end to end: test emitter -> source -> Producer -> receiver."""

from __future__ import annotations

import lz4.block
import numpy as np
import pytest
from conftest import wait_for
from dectris.compression import decompress
from source_helpers import Running, count
from stream_v1_emitter import Emitter1, blob, end_parts, header_parts, image_parts

from hidra_ng import Consumer
from hidra_ng.sender.sources import parse

SHAPE = (37, 50)  # rows, columns: sent as shape [50, 37]
#: (encoding, dtype) of the images of the series, in order
IMAGES = [
    ("<", "<u2"),
    ("lz4<", "<u2"),
    ("lz4<", "<u4"),
    ("bs8-lz4<", "<u1"),
    ("bs16-lz4<", "<u2"),
    ("bs32-lz4<", "<u4"),
    ("<", "<u4"),
]
CONFIG = {"count_time": 0.01, "x_pixels_in_detector": SHAPE[1], "y_pixels_in_detector": SHAPE[0]}


@pytest.fixture
def consumer(receiver):
    with Consumer(receiver.endpoints["api"]) as c:
        yield c


def frame(i: int, dtype: str) -> np.ndarray:
    a = np.random.default_rng(i).poisson(3, SHAPE).astype(dtype)
    a[0, :2] = np.iinfo(dtype).max  # saturated pixels
    return a


def tables() -> dict[str, np.ndarray]:
    return {
        "flatfield": np.linspace(0.9, 1.1, SHAPE[0] * SHAPE[1], dtype="<f4").reshape(SHAPE),
        "pixel_mask": (np.arange(SHAPE[0] * SHAPE[1], dtype="<u4") % 7 == 0).reshape(SHAPE),
        "countrate": np.linspace(0, 1e6, 2 * 1000, dtype="<f4").reshape(1000, 2),
    }


def test_v1_series_every_encoding_pixel_exact(make_producer, consumer):
    arrays = [frame(i, dtype) for i, (_, dtype) in enumerate(IMAGES)]
    masks = {k: v.astype("<u4") if k == "pixel_mask" else v for k, v in tables().items()}
    with Emitter1() as det:
        source = parse(f"dectris1:{det.endpoint}?stream=v1/eiger")
        running = Running(source, make_producer("v1"))
        det.send(header_parts(5, "all", CONFIG, masks, appendix={"sample": "thaumatin"}))
        for i, ((encoding, _), array) in enumerate(zip(IMAGES, arrays, strict=True)):
            det.send(image_parts(5, i, array, encoding, appendix={"n": i}))
        det.send([b'{"htype": "dimage-1.0", "series": 5, "frame": 99}', b"{}", b"", b"{}"])
        det.send([b"not json"])
        det.send(end_parts(5))
        wait_for(lambda: count(consumer, "v1/eiger/threshold_1") == len(IMAGES) + 2)
        wait_for(lambda: count(consumer, "v1/eiger/tables") == 3)
        running.close()
    assert source.refusals.counts == {"StreamV1Error": 2}, source.refusals.counts

    stream = "v1/eiger/threshold_1"
    info = consumer.info(stream)
    frames = [consumer.get(stream, i) for i in range(info.first, info.last + 1)]
    stored = [consumer.get(stream, i, decode=False) for i in range(info.first, info.last + 1)]
    start, images, end = frames[0], frames[1:-1], frames[-1]
    assert start.data is None and start.meta["type"] == "start"
    assert start.meta["series_id"] == 5 and start.meta["header_detail"] == "all"
    assert start.meta["config"] == CONFIG and start.meta["user_data"] == {"sample": "thaumatin"}
    assert start.meta["channels"] == ["threshold_1"]
    assert {t["table"] for t in start.meta["tables"]} == {
        "flatfield",
        "pixel_mask",
        "countrate_correction_lookup_table",
    }
    assert end.data is None and end.meta == {"type": "end", "series_id": 5, "format": "stream_v1"}
    codecs = {"<": "none", "lz4<": "lz4-hdf5"}
    for i, (image, raw) in enumerate(zip(images, stored[1:-1], strict=True)):
        encoding, dtype = IMAGES[i]
        sent = blob(arrays[i], encoding)
        assert image.meta["image_id"] == i and image.meta["encoding"] == encoding
        assert image.meta["user_data"] == {"n": i} and image.meta["real_time"] == 999_000
        assert image.data.dtype == np.dtype(dtype) and image.data.shape == SHAPE
        np.testing.assert_array_equal(image.data, arrays[i])
        assert raw.compression == codecs.get(encoding, "bslz4")
        if encoding.startswith("bs"):  # as received, byte for byte
            assert bytes(raw.data) == sent
            pixels = decompress(sent, "bslz4", elem_size=np.dtype(dtype).itemsize)
            np.testing.assert_array_equal(image.data, np.frombuffer(pixels, dtype).reshape(SHAPE))
        elif encoding == "lz4<":  # the LZ4 block unchanged behind the 16-byte framing
            assert bytes(raw.data)[16:] == sent
            pixels = lz4.block.decompress(sent, uncompressed_size=arrays[i].nbytes)
            np.testing.assert_array_equal(image.data, np.frombuffer(pixels, dtype).reshape(SHAPE))
    by_name = {}
    tinfo = consumer.info("v1/eiger/tables")
    for i in range(tinfo.first, tinfo.last + 1):
        t = consumer.get("v1/eiger/tables", i)
        by_name[t.meta["table"]] = t.data
        assert t.meta["series_id"] == 5 and t.meta["channel"] == "threshold_1"
    np.testing.assert_array_equal(by_name["flatfield"], masks["flatfield"])
    np.testing.assert_array_equal(by_name["pixel_mask"], masks["pixel_mask"])
    np.testing.assert_array_equal(by_name["countrate_correction_lookup_table"], masks["countrate"])


def test_v1_restart_inside_a_series(make_producer, consumer):
    producer = make_producer("v1-restart")
    stream = "v1r/threshold_1"
    arrays = [frame(i, "<u2") for i in range(5)]
    with Emitter1() as det:
        uri = f"dectris1:{det.endpoint}?stream=v1r"
        first = Running(parse(uri), producer)
        det.send(header_parts(8, "basic", CONFIG))
        for i in range(2):
            det.send(image_parts(8, i, arrays[i], "bs16-lz4<"))
        wait_for(lambda: count(consumer, stream) == 3)
        first.close()
        second = Running(parse(uri), producer)
        for i in range(2, 5):
            det.send(image_parts(8, i, arrays[i], "bs16-lz4<"))
        det.send(end_parts(8))
        wait_for(lambda: count(consumer, stream) == 8)
        second.close()
    info = consumer.info(stream)
    frames = [consumer.get(stream, i) for i in range(info.first, info.last + 1)]
    kinds = [f.meta["type"] for f in frames]
    assert kinds == ["start", "image", "image", "restart", "image", "image", "image", "end"]
    assert frames[3].meta == {
        "type": "restart",
        "series_unique_id": None,
        "series_id": 8,
        "last_image_id": 1,
    }
    images = [f for f in frames if f.meta["type"] == "image"]
    assert [f.meta["image_id"] for f in images] == list(range(5))
    for f in images:
        np.testing.assert_array_equal(f.data, arrays[f.meta["image_id"]])
