"""The live view's frame encodings: no sockets, no browser (hidra_ng/view/images.py)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import tifffile
from PIL import Image

from hidra_ng import Frame
from hidra_ng.config import ViewConfig, is_loopback
from hidra_ng.errors import ConfigError
from hidra_ng.view import images


def frame(data, index: int = 3) -> Frame:
    return Frame("p11/a", index, data, {"k": 1}, "det", index, 1.0, 2.0)


def message_parts(message: bytes) -> tuple[dict, bytes]:
    assert message[:4] == images.MAGIC
    (n,) = struct.unpack("<I", message[4:8])
    assert (8 + n) % 8 == 0  # the values start aligned for any typed array
    return json.loads(message[8 : 8 + n]), message[8 + n :]


@pytest.mark.parametrize(
    "dtype, sent",
    [
        ("<u2", "uint16"),
        (">u2", "uint16"),
        ("<i4", "int32"),
        ("<f4", "float32"),
        (">f8", "float64"),
        ("<u8", "float64"),
        ("<f2", "float32"),
        ("|b1", "uint8"),
        ("|u1", "uint8"),
    ],
)
def test_browser_message_carries_the_values_little_endian(dtype, sent):
    data = (np.arange(30).reshape(5, 6) % 2 == 1) if dtype == "|b1" else np.arange(30)
    data = np.asarray(data).reshape(5, 6).astype(dtype)
    header, body = message_parts(images.browser_message(frame(data), live=True, max_pixels=1000))
    view = header["view"]
    assert (view["dtype"], view["shape"], view["binning"]) == (sent, [5, 6], 1)
    assert ("uint64 shown as float64" in view["note"]) == (dtype == "<u8")
    values = np.frombuffer(body, np.dtype(sent).newbyteorder("<")).reshape(5, 6)
    np.testing.assert_array_equal(values, data.astype(sent))
    assert (header["index"], header["live"], header["meta"], header["shape"]) == (
        3, True, {"k": 1}, [5, 6])  # fmt: skip


def test_large_frames_are_binned_by_maximum_with_edges_kept():
    data = np.zeros((10, 7), np.uint16)
    data[9, 6] = 500  # in the last, partial block
    data[0, 1] = 7
    plane = images.display_plane(data, max_pixels=20)
    assert plane.binning == 2 and plane.values.shape == (5, 4)
    assert plane.values[4, 3] == 500 and plane.values[0, 0] == 7
    assert plane.note == "binned 2x2 (maximum) for display"


def test_other_shapes_show_a_plane():
    cube = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint16)
    plane = images.display_plane(cube, 1000)
    np.testing.assert_array_equal(plane.values, cube[0])
    assert "plane [0] of (2, 3, 4)" in plane.note
    assert images.display_plane(np.arange(5, dtype=np.int16), 1000).values.shape == (1, 5)
    complex_plane = images.display_plane(np.array([[3 + 4j]], np.complex64), 1000)
    assert complex_plane.values[0, 0] == 5 and "magnitude" in complex_plane.note


def test_value_at_reads_true_values():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    data[1, 2] = np.nan
    f = frame(data)
    assert images.value_at(f, 3, 2) == 11.0
    assert images.value_at(f, 2, 1) == "nan"
    assert images.value_at(f, 4, 0) is None and images.value_at(f, -1, 0) is None
    assert images.value_at(frame(b"xx"), 0, 0) is None


def test_files_hold_the_frame():
    data = np.arange(24, dtype=">u2").reshape(4, 6)
    body, _ = images.encode(frame(data), "npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), data)
    body, _ = images.encode(frame(data), "tiff")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(body)), data)
    body, headers = images.encode(frame(data), "png")
    assert headers == {"X-Hidra-Ng-Png": "exact"}
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), data)
    mask = np.eye(3, dtype=bool)
    body, headers = images.encode(frame(mask), "png")
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), mask * 255)


def test_what_cannot_be_an_image_says_so():
    with pytest.raises(images.NotAnImage, match="holds 2 bytes of opaque data, not an array"):
        images.encode(frame(b"ab"), "png")
    with pytest.raises(images.NotAnImage, match="holds metadata only"):
        images.encode(frame(None), "tiff")
    with pytest.raises(images.NotAnImage, match=r"shape \(2, 3, 4\), which is no 2-D image"):
        images.encode(frame(np.zeros((2, 3, 4), np.uint8)), "png")
    assert json.loads(images.encode(frame(None), "json")[0])["kind"] == "none"


def test_view_config():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ConfigError, match="expected a loopback address"):
        ViewConfig(bind="10.1.2.3")
    with pytest.raises(ConfigError, match=r"view\.port = 70000"):
        ViewConfig(port=70000)
    with pytest.raises(ConfigError, match=r"view\.api"):
        ViewConfig(api="tcp://*:50101")
    with pytest.raises(ConfigError, match=r"view\.wait_seconds"):
        ViewConfig(wait_seconds=11)
