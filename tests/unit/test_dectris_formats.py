"""DECTRIS formats without sockets: self-described Stream V2, every tag-56500 algorithm,
Jungfraujoch's extra message types, Stream V1 parts, and the 'every message refused' warning."""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace

import cbor2
import numpy as np
import pytest
from dectris.compression import decompress as dectris_decompress
from stream_v1_emitter import blob, end_parts, header_parts, image_parts
from stream_v2_emitter import (
    CHANNELS,
    COMPRESSIONS,
    bszstd,
    encode,
    end_message,
    image_message,
    multidim,
    start_message,
    trpx,
)

from hidra_ng.errors import InvalidFrame
from hidra_ng.sender.sources._common import Refusals
from hidra_ng.sender.sources.dectris import DectrisSource, StreamV2Error, decode_message
from hidra_ng.sender.sources.dectris1 import Dectris1Source, StreamV1Error
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded, decompress, decompressed_size

PRODUCER = SimpleNamespace(max_message_bytes=proto.MAX_DATA_BYTES, max_meta_bytes=64 << 10)
CODECS = {"bslz4": "bslz4", "lz4": "lz4-hdf5", "bszstd": "bszstd", "trpx": "trpx"}


def stored_decoded(item) -> np.ndarray:
    """What a consumer gets for an item: Encoded payloads decoded as the store decodes them."""
    _, data, _ = item
    if not isinstance(data, Encoded):
        return data
    payload = data.check()
    record = array_record(data.dtype, data.shape, data.compression, len(payload))
    return np.frombuffer(decompress(payload, record), data.dtype).reshape(data.shape)


def array_record(dtype: str, shape: tuple[int, ...], codec: str, nbytes: int) -> proto.Record:
    return proto.Record("s", 0, proto.Payload.ARRAY, dtype, shape, codec, b"{}", 0.0, 0.0, nbytes)


# ------------------------------------------------------------------ Stream V2


def test_self_described_messages_decode_to_plain_dicts_and_lists():
    raw = encode(start_message(1, "u1", CHANNELS, tables=True))
    assert raw[:3] == b"\xd9\xd9\xf7"  # tag 55799, as detectors send it
    msg = decode_message(raw)
    assert type(msg) is dict and type(msg["channels"]) is list
    assert type(msg["goniometer"]["omega"]) is dict
    # tag 55799 inside a message means nothing either
    inner = cbor2.dumps({"type": "end", "user_data": cbor2.CBORTag(55799, {"a": (1, 2)})})
    assert decode_message(inner)["user_data"] == {"a": [1, 2]}


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", ["<u1", "<u2", "<u4"])
def test_every_algorithm_is_stored_as_received_and_decodes_pixel_exact(compression, dtype):
    rng = np.random.default_rng(7)
    frames = {c: rng.poisson(3, (33, 70)).astype(dtype) for c in CHANNELS}
    raw = encode(image_message(1, "u", 4, frames, compression))
    source = DectrisSource("dectris:x", "tcp://x:1", stream="d")
    items = source.translate(decode_message(raw), PRODUCER)
    assert [s for s, _, _ in items] == [f"d/{c}" for c in CHANNELS]
    sent = cbor2.loads(raw)["data"]
    for item, channel in zip(items, CHANNELS, strict=True):
        np.testing.assert_array_equal(stored_decoded(item), frames[channel])
        data = item[1]
        if compression == "none":
            assert isinstance(data, np.ndarray)
            continue
        algorithm, modifier, payload = sent[channel].value[1].value.value
        assert isinstance(data, Encoded) and data.compression == CODECS[compression]
        assert bytes(data.payload) == payload  # as received
        kw = {} if algorithm == "lz4" else {"elem_size": modifier}
        expected = np.frombuffer(dectris_decompress(payload, algorithm, **kw), dtype)
        np.testing.assert_array_equal(stored_decoded(item).ravel(), expected)


def test_trpx_size_is_read_from_its_header_and_bad_trpx_is_refused():
    array = np.arange(600, dtype="<u2").reshape(20, 30)
    payload = trpx(array)
    assert payload.startswith(b"<Terse ")
    assert decompressed_size(payload, "trpx") == array.nbytes
    assert decompressed_size(payload + payload, "trpx") == 2 * array.nbytes
    with pytest.raises(InvalidFrame, match="cut off"):
        decompressed_size(payload[:-5], "trpx")
    with pytest.raises(InvalidFrame, match="no <Terse"):
        decompressed_size(b"garbage" * 10, "trpx")
    bad = Encoded(payload, "<u4", (20, 30), "trpx")
    with pytest.raises(InvalidFrame, match="decodes to 1200 bytes"):
        bad.check()


def test_bszstd_corrupt_block_is_refused_when_read():
    array = np.random.default_rng(1).poisson(2, (40, 40)).astype("<u2")
    payload = bytearray(bszstd(array))
    payload[12:16] = struct.pack(">I", 1 << 20)  # the first block's size: past the end
    record = array_record("<u2", (40, 40), "bszstd", len(payload))
    with pytest.raises(InvalidFrame, match="bszstd payload cannot be decoded"):
        decompress(bytes(payload), record)


def test_bslz4_with_another_element_size_is_decoded_at_the_source():
    array = np.random.default_rng(2).poisson(2, (16, 24)).astype("<u4")
    shuffled_as_bytes = multidim(array.view("u1").reshape(16, 96), "bslz4")
    typed = cbor2.CBORTag(70, shuffled_as_bytes.value[1].value)  # u4 pixels, bytes shuffled
    raw = cbor2.dumps({"type": "image", "data": {"c": cbor2.CBORTag(40, [[16, 24], typed])}})
    (item,) = DectrisSource("dectris:x", "tcp://x:1").translate(decode_message(raw), PRODUCER)
    np.testing.assert_array_equal(item[1], array)


def test_jungfraujoch_extra_message_types_become_metadata_with_arrays_in_tables():
    source = DectrisSource("dectris:x", "tcp://x:1", stream="jf")
    source.translate(decode_message(encode(start_message(9, "jf9", ["default"]))), PRODUCER)
    pedestal = np.arange(64 * 48, dtype="<f4").reshape(64, 48)
    calibration = {
        "type": "calibration",
        "series_id": 9,
        "series_unique_id": "jf9",
        "data": {"pedestal_G0": multidim(pedestal, "bszstd")},
    }
    items = source.translate(decode_message(encode(calibration)), PRODUCER)
    (meta_item, table_item) = items
    assert meta_item[0] == "jf/default" and meta_item[1] is None
    assert meta_item[2]["type"] == "calibration"
    assert meta_item[2]["tables"] == [
        {"table": "data", "channel": "pedestal_G0", "dtype": "<f4", "shape": [64, 48]}
    ]
    assert table_item[0] == "jf/tables" and table_item[2]["message"] == "calibration"
    np.testing.assert_array_equal(stored_decoded(table_item), pedestal)
    metadata = {
        "type": "metadata",
        "series_id": 9,
        "series_unique_id": "jf9",
        "images": [{"image_id": 0, "spots": [[1.5, 2.5, 100.0]], "bkg_estimate": 1.25}],
    }
    (item,) = source.translate(decode_message(encode(metadata)), PRODUCER)
    assert item[2] == {
        "type": "metadata",
        "series_id": 9,
        "series_unique_id": "jf9",
        "images": [{"image_id": 0, "spots": [[1.5, 2.5, 100.0]], "bkg_estimate": 1.25}],
    }


def test_small_arrays_of_image_fields_stay_in_meta_large_ones_go_to_tables():
    source = DectrisSource("dectris:x", "tcp://x:1", stream="s")
    msg = image_message(1, "u", 0, {"c": np.zeros((4, 4), "<u2")})
    msg["az_int_profile"] = multidim(np.arange(10, dtype="<f4"))
    msg["roi_sum"] = multidim(np.ones((100, 100), "<u4"))
    items = source.translate(decode_message(encode(msg)), PRODUCER)
    image, table = items
    assert image[2]["az_int_profile"] == {"dtype": "<f4", "shape": [10], "values": list(range(10))}
    assert "roi_sum" not in image[2]
    assert image[2]["tables"][0]["table"] == "roi_sum"
    assert table[0] == "s/tables" and table[2]["image_id"] == 0


def test_start_tables_stay_out_of_meta_and_are_named_when_not_stored():
    start = decode_message(encode(start_message(2, "u2", CHANNELS, tables=True)))
    kept = DectrisSource("dectris:x", "tcp://x:1", stream="d").translate(start, PRODUCER)
    assert len(kept) == len(CHANNELS) + 2 * len(CHANNELS) + 1
    meta = kept[0][2]
    assert not {"flatfield", "pixel_mask", "countrate_correction_lookup_table"} & set(meta)
    assert len(meta["tables"]) == 2 * len(CHANNELS) + 1
    dropped = DectrisSource("dectris:x", "tcp://x:1", stream="d", tables=False)
    items = dropped.translate(start, PRODUCER)
    assert len(items) == len(CHANNELS)
    assert sorted(items[0][2]["dropped_tables"]) == sorted(
        ["countrate_correction_lookup_table"]
        + [f"{t}/{c}" for t in ("flatfield", "pixel_mask") for c in CHANNELS]
    )
    end = source_end = DectrisSource("dectris:x", "tcp://x:1", stream="d")
    source_end.translate(start, PRODUCER)
    (*_, last) = end.translate(decode_message(encode(end_message(2, "u2"))), PRODUCER)
    assert last[2] == {"type": "end", "series_id": 2, "series_unique_id": "u2"}


# ------------------------------------------------------------------ Stream V1


def frames(parts: list[bytes]) -> list:
    return [SimpleNamespace(buffer=memoryview(p)) for p in parts]


def test_v1_header_image_end():
    source = Dectris1Source("dectris1:x", "tcp://x:1", stream="v1")
    tables = {
        "flatfield": np.ones((3, 4), "<f4"),
        "pixel_mask": np.zeros((3, 4), "<u4"),
        "countrate": np.arange(8, dtype="<f4").reshape(4, 2),
    }
    items = source.translate_parts(
        frames(header_parts(1, "all", {"nimages": 2}, tables, appendix="note")), PRODUCER
    )
    assert [s for s, _, _ in items] == ["v1/threshold_1"] + ["v1/tables"] * 3
    assert items[0][2]["user_data"] == "note" and items[0][2]["config"] == {"nimages": 2}
    assert items[3][1].shape == (4, 2)  # [x, y] = [2, 4] -> 4 rows of 2
    array = np.arange(12, dtype="<u2").reshape(3, 4)
    (image,) = source.translate_parts(frames(image_parts(1, 0, array, "bs16-lz4<")), PRODUCER)
    assert image[1].compression == "bslz4" and image[1].shape == (3, 4)
    np.testing.assert_array_equal(stored_decoded(image), array)
    (end,) = source.translate_parts(frames(end_parts(1)), PRODUCER)
    assert end[2]["type"] == "end" and not source.state.open


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ([b"[1]"], "first part is a JSON list"),
        ([b'{"htype": "dimage-2.0"}'], "htype 'dimage-2.0' is unknown"),
        ([b'{"htype": "dheader-1.0", "series": 1, "header_detail": "some"}'], "header_detail"),
        ([b'{"htype": "dheader-1.0", "series": 1, "header_detail": "basic"}'], "no detector"),
        (
            [*header_parts(1, "basic", {})[:1], b"{}", b'{"htype": "x"}', b"b"],
            "has 2 parts after its tables and configuration",
        ),
        (image_parts(1, 0, np.zeros((2, 2), "<u2"))[:3], "image has 3 parts"),
        (
            [*image_parts(1, 0, np.zeros((2, 2), "<u2"))[:2], b"xx", b'{"htype":"dconfig-1.0"}'],
            "image blob has 2 bytes; its header says size 8",
        ),
        (
            [
                b'{"htype":"dimage-1.0"}',
                b'{"htype":"dimage_d-1.0","shape":[2,2],"type":"uint16","encoding":"zip<"}',
                b"x",
                b'{"htype":"dconfig-1.0"}',
            ],
            "encoding 'zip<' is unknown",
        ),
        (
            [
                b'{"htype":"dimage-1.0"}',
                b'{"htype":"dimage_d-1.0","shape":[2,2],"type":"complex","encoding":"<"}',
                b"x",
                b'{"htype":"dconfig-1.0"}',
            ],
            "type 'complex' is not one of",
        ),
        ([*end_parts(1), b"x"], "series end has 2 parts"),
    ],
)
def test_v1_bad_messages_are_refused_with_a_reason(parts, error):
    source = Dectris1Source("dectris1:x", "tcp://x:1")
    with pytest.raises(StreamV1Error, match=error):
        source.translate_parts(frames(parts), PRODUCER)


def test_v1_lz4_block_is_framed_not_recompressed():
    array = np.random.default_rng(3).poisson(1, (10, 20)).astype("<u4")
    source = Dectris1Source("dectris1:x", "tcp://x:1")
    (item,) = source.translate_parts(frames(image_parts(1, 0, array, "lz4<")), PRODUCER)
    payload = bytes(item[1].payload)
    assert struct.unpack(">QII", payload[:16])[:2] == (array.nbytes, array.nbytes)
    assert payload[16:] == blob(array, "lz4<")
    np.testing.assert_array_equal(stored_decoded(item), array)


# ------------------------------------------------------------ every message refused


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_message_refused_for_a_minute_logs_one_warning(caplog):
    clock = Clock()
    refusals = Refusals("dectris:tcp://det:31001", clock=clock)
    caplog.set_level(logging.WARNING, logger="hidra_ng.sender.sources._common")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "every message refused" in r.getMessage()]

    for _ in range(60):
        refusals.refuse("StreamV2Error", "message is a CBOR frozendict; expected a map")
        clock.now += 1
    assert warnings() == []  # 59 s so far
    refusals.refuse("StreamV2Error", "message is a CBOR frozendict; expected a map")
    (warning,) = warnings()
    assert "dectris:tcp://det:31001: every message refused: 61 messages in 60 s" in warning
    assert "StreamV2Error x61" in warning and "expected a map" in warning
    clock.now += 100
    refusals.refuse("StreamV2Error", "again")
    assert len(warnings()) == 1  # once per run of refusals
    refusals.accept()  # a message was used: the run is over
    for _ in range(3):
        refusals.refuse("StreamV2Error", "new firmware")
        clock.now += 30
    assert len(warnings()) == 2 and refusals.all_refused_warnings == 2
    refusals.accept()
    refusals.refuse("x", "one")
    clock.now += 59
    refusals.accept()
    clock.now += 10
    refusals.refuse("x", "two")
    assert len(warnings()) == 2  # used messages in between: no warning


def test_source_refusing_everything_warns_through_its_refusals(caplog):
    source = DectrisSource("dectris:x", "tcp://x:1")
    clock = Clock()
    source.refusals = Refusals(source.name, all_refused_after=5, clock=clock)
    caplog.set_level(logging.WARNING, logger="hidra_ng.sender.sources._common")
    bad = [SimpleNamespace(buffer=memoryview(b"\xff"))]
    for _ in range(10):
        for item in [bad]:
            try:
                source.translate_parts(item, PRODUCER)
            except StreamV2Error as err:
                source.refusals.refuse(type(err).__name__, str(err))
        clock.now += 1
    assert any("every message refused" in r.getMessage() for r in caplog.records)


def test_without_dectris_compression_bslz4_and_lz4_still_decode(monkeypatch):
    from stream_v2_emitter import bslz4, lz4_hdf5

    import hidra_ng.wire.compression as compression

    monkeypatch.setattr(compression, "_DECTRIS", [None])  # as if the package were missing
    array = np.random.default_rng(4).poisson(2, (30, 40)).astype("<u2")
    for payload, codec in ((bslz4(array), "bslz4"), (lz4_hdf5(array.tobytes()), "lz4-hdf5")):
        out = compression.decode_dectris(payload, codec, 2)
        np.testing.assert_array_equal(np.frombuffer(out, "<u2").reshape(30, 40), array)
    with pytest.raises(InvalidFrame, match="without the dectris-compression package"):
        compression.decode_dectris(trpx(array), "trpx", 2)
