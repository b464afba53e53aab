"""Source message decoding without sockets: Stream V2 CBOR and the zmq: header format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cbor2
import numpy as np
import pytest
from stream_v2_emitter import bslz4, multidim, typed_array_tag

from hidra_ng.sender.sources._common import fit_meta, jsonable
from hidra_ng.sender.sources.dectris import (
    DectrisSource,
    MultiDimArray,
    StreamV2Error,
    decode_message,
    typed_array_dtype,
)
from hidra_ng.sender.sources.zmq_push import Finish, PushRefused, parse_message
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded

PRODUCER = SimpleNamespace(max_message_bytes=proto.MAX_DATA_BYTES, max_meta_bytes=1000)


# ------------------------------------------------------------------ Stream V2


@pytest.mark.parametrize(
    ("tag", "dtype"),
    [(64, "|u1"), (65, ">u2"), (66, ">u4"), (67, ">u8"), (68, "|u1"), (69, "<u2"), (70, "<u4"),
     (71, "<u8"), (72, "|i1"), (73, ">i2"), (74, ">i4"), (75, ">i8"), (77, "<i2"), (78, "<i4"),
     (79, "<i8"), (80, ">f2"), (81, ">f4"), (82, ">f8"), (84, "<f2"), (85, "<f4"), (86, "<f8")],
)  # fmt: skip
def test_rfc8746_typed_array_tags(tag, dtype):
    assert typed_array_dtype(tag).str == dtype
    if tag != 68:  # 68 is uint8 "clamped": the emitter never makes it
        assert typed_array_tag(np.dtype(dtype)) == tag


@pytest.mark.parametrize("tag", [76, 83, 87])
def test_reserved_and_128_bit_tags_are_refused(tag):
    with pytest.raises(StreamV2Error, match=f"tag {tag}"):
        typed_array_dtype(tag)


def test_image_message_becomes_frames_per_channel():
    a = np.arange(12, dtype="<u2").reshape(3, 4)
    b = (np.arange(12, dtype="<u4") * 7).reshape(3, 4)
    raw = cbor2.dumps(
        {
            "type": "image",
            "series_id": 1,
            "series_unique_id": "u1",
            "image_id": 5,
            "real_time": [1, 10],
            "user_data": {"blob": b"\x00\x01"},
            "data": {"threshold_1": multidim(a), "thr 2": multidim(b, "bslz4")},
        }
    )
    source = DectrisSource("dectris:x", "tcp://x:1", stream="det")
    items = source.translate(decode_message(raw), PRODUCER)
    (s1, d1, m1), (s2, d2, m2) = items
    assert s1 == "det/threshold_1" and s2 == "det/thr_2"
    np.testing.assert_array_equal(d1, a)
    assert isinstance(d2, Encoded) and d2.compression == "bslz4" and d2.shape == (3, 4)
    assert d2.payload == bslz4(b)
    assert m1["image_id"] == 5 and m1["real_time"] == [1, 10] and m2["channel"] == "thr 2"
    assert m1["user_data"] == {"blob": {"base64": "AAE="}}
    assert source.state.last_image_id == 5 and source.state.open


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\xff\xff", "not a CBOR message"),
        (cbor2.dumps([1, 2]), "expected a map"),
        (cbor2.dumps({"type": 3}), "type 3 is not a text"),
        (cbor2.dumps({"type": "image", "data": {}}), "no data map"),
        (cbor2.dumps({"type": "image", "data": {"c": 3}}), "expected a multi-dimensional"),
        (
            cbor2.dumps({"type": "image", "data": {"c": cbor2.CBORTag(40, [[2, 2], 5])}}),
            "tag 40 does not hold",
        ),
        (
            cbor2.dumps(
                {
                    "type": "image",
                    "data": {"c": cbor2.CBORTag(40, [[2, 3], cbor2.CBORTag(69, b"12")])},
                }
            ),
            "needs 12 bytes; got 2",
        ),
        (
            cbor2.dumps(
                {
                    "type": "image",
                    "data": {
                        "c": cbor2.CBORTag(
                            40, [[2], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["zip", 2, b"x"]))]
                        )
                    },
                }
            ),
            "compression 'zip' \\(tag 56500\\) is unknown",
        ),
        (
            cbor2.dumps(
                {
                    "type": "image",
                    "data": {
                        "c": cbor2.CBORTag(
                            40, [[4], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, b"x"]))]
                        )
                    },
                }
            ),
            "shorter than its 12-byte header",
        ),
    ],
)
def test_bad_stream_v2_messages_are_refused_with_a_reason(message, error):
    source = DectrisSource("dectris:x", "tcp://x:1")
    with pytest.raises(StreamV2Error, match=error):
        source.translate(decode_message(message), PRODUCER)


def test_start_goes_to_every_channel_without_tables():
    raw = cbor2.dumps(
        {
            "type": "start",
            "series_id": 2,
            "series_unique_id": "u2",
            "channels": ["a", "b"],
            "flatfield": {"a": multidim(np.ones((2, 2), "<f4"))},
            "user_data": "x" * 5000,
        }
    )
    source = DectrisSource("dectris:x", "tcp://x:1", stream="d", tables=False)
    items = source.translate(decode_message(raw), PRODUCER)
    assert [s for s, _, _ in items] == ["d/a", "d/b"]
    meta = items[0][2]
    assert "flatfield" not in meta and meta["channels"] == ["a", "b"]
    assert meta["dropped_tables"] == ["flatfield/a"]
    assert "user_data" not in meta and meta["dropped_meta"] == ["user_data"]  # over 1000 bytes
    assert isinstance(decode_message(cbor2.dumps({"type": "end"})), dict)


def test_multidim_dimensions_are_checked():
    bad = cbor2.CBORTag(40, [[2, -1], cbor2.CBORTag(64, b"")])
    with pytest.raises(StreamV2Error, match="dimensions"):
        decode_message(cbor2.dumps({"type": "image", "data": {"c": bad}}))
    ok = decode_message(cbor2.dumps({"type": "image", "data": {"c": multidim(np.zeros(3))}}))
    assert isinstance(ok["data"]["c"], MultiDimArray)


def test_meta_helpers():
    assert jsonable({"t": (1, 2.5), "n": float("nan"), "k": np.uint16(3)}) == {
        "t": [1, 2.5],
        "n": "nan",
        "k": 3,
    }
    meta = {"a": 1, "user_data": "u" * 100, "big": "b" * 200}
    assert fit_meta(meta, 1000) is meta
    assert fit_meta(meta, 300) == {"a": 1, "big": "b" * 200, "dropped_meta": ["user_data"]}
    assert fit_meta(meta, 150) == {"a": 1, "dropped_meta": ["user_data", "big"]}


# ---------------------------------------------------------------- zmq: header


def message(header: dict, payload: bytes | None = None) -> list[bytes]:
    frames = [json.dumps(header).encode()]
    return frames if payload is None else [*frames, payload]


def test_zmq_array_bytes_metadata_and_finish():
    array = np.arange(6, dtype=">f8").reshape(2, 3)
    stream, data, meta = parse_message(
        message({"dtype": ">f8", "shape": [2, 3], "meta": {"x": 1}}, array.tobytes()), "dflt"
    )
    assert stream == "dflt" and meta == {"x": 1}
    np.testing.assert_array_equal(data, array)
    assert parse_message(message({"stream": "a/b"}, b"raw"), "dflt") == ("a/b", b"raw", None)
    assert parse_message(message({"meta": {}}), "d") == ("d", None, {})
    assert parse_message(message({"finish": True, "stream": "s"}), "d") == Finish("s")


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"[1]", b""], "header"),
        ([b"{}" + b" " * (proto.MAX_META_BYTES + 4096)], "header"),
        (message({"version": 2}), "version"),
        (message({"stream": "/x"}), "stream"),
        (message({"finish": "yes"}), "header"),
        (message({"finish": True}, b"x"), "finish"),
        (message({"dtype": "uint8"}, b"x"), "shape"),
        (message({"dtype": "object", "shape": [1]}, b"x" * 8), "dtype"),
        (message({"dtype": 5, "shape": [1]}, b"x"), "dtype"),
        (message({"dtype": "uint8", "shape": [True]}, b"x"), "shape"),
        (message({"dtype": "uint8", "shape": [2**40, 2**40]}, b"x"), "size"),
        (message({"dtype": "uint8", "shape": [3]}, b"xx"), "size"),
        (message({"compression": "lz4"}, b"xx"), "compression"),
        (message({"dtype": "uint8", "shape": [3], "compression": "lz4"}, b"xx"), "compression"),
        (message({"meta": {"f": "x" * proto.MAX_META_BYTES}}), "meta"),
    ],
)
def test_zmq_refusals_name_a_reason(frames, reason):
    with pytest.raises(PushRefused) as err:
        parse_message(frames, "d")
    assert err.value.reason == reason and str(err.value)
