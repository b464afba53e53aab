"""Compression: blosc2 round trips, and the DECTRIS HDF5-filter framings checked against HDF5."""

from __future__ import annotations

import struct

import h5py
import hdf5plugin
import numpy as np
import pytest
from stream_v2_emitter import bslz4, lz4_hdf5

from hidra_ng.errors import InvalidFrame
from hidra_ng.wire import compression
from hidra_ng.wire.compression import Encoded, check_compression, compress, decompress
from hidra_ng.wire.frames import describe, frame_from_record
from hidra_ng.wire.protocol import Payload, Record

DTYPES = ["uint8", "<u2", "<u4", "<f4"]


def poisson(shape, dtype, mean=2.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(mean, shape).astype(dtype)


def record(array: np.ndarray | None, codec: str, payload=b"") -> Record:
    kind = Payload.ARRAY if array is not None else Payload.BYTES
    dtype = array.dtype.str if array is not None else ""
    shape = tuple(array.shape) if array is not None else ()
    return Record("s", 0, kind, dtype, shape, codec, b"{}", 0.0, 0.0, len(payload))


def decoded(payload, array: np.ndarray, codec: str) -> np.ndarray:
    frame = frame_from_record("s", 0, record(array, codec, payload), payload)
    return frame.data


@pytest.fixture(params=["numpy", "bitshuffle"])
def transpose(request, monkeypatch):
    """Run bslz4 decoding with the numpy bit transpose and with bitshuffle's."""
    if request.param == "numpy":
        monkeypatch.setattr(compression, "_FAST", [None])
    else:
        monkeypatch.setattr(compression, "_FAST", [])
    return request.param


# ------------------------------------------------------------------ blosc2


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_blosc2_round_trip(codec, dtype):
    array = poisson((97, 131), dtype)
    _, dt, _, buf = describe(array)
    payload = compress(buf, dt, codec)
    assert len(payload) < array.nbytes
    out = decoded(payload, array, codec)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_blosc2_bytes_round_trip():
    data = bytes(range(256)) * 100
    payload = compress(data, "", "zstd")
    frame = frame_from_record("s", 0, record(None, "zstd", payload), payload)
    assert frame.data == data


def test_decode_false_returns_stored_bytes():
    array = poisson((16, 16), "<u2")
    payload = compress(describe(array)[3], array.dtype.str, "lz4")
    frame = frame_from_record("s", 0, record(array, "lz4", payload), payload, decode=False)
    assert frame.data == payload and frame.compression == "lz4"
    assert frame.dtype == "<u2" and frame.shape == (16, 16)


def test_producer_compressions_are_lz4_and_zstd():
    assert check_compression("lz4") == "lz4"
    assert check_compression("none") == "none"
    with pytest.raises(InvalidFrame, match=r"'bslz4'.*not one a Producer makes"):
        check_compression("bslz4")
    with pytest.raises(InvalidFrame, match="'gzip' is unknown"):
        check_compression("gzip")


def test_blosc2_wrong_size_is_refused():
    array = poisson((8, 8), "<u2")
    payload = compress(describe(array)[3], array.dtype.str, "lz4")
    wrong = np.zeros((8, 9), "<u2")
    with pytest.raises(InvalidFrame, match="decodes to 128 bytes"):
        decompress(payload, record(wrong, "lz4", payload))


# ------------------------------------------------------------------ bslz4

SHAPES = [(5,), (13, 17), (256, 200), (3, 1001)]


@pytest.mark.parametrize("dtype", ["uint8", "<u2", "<u4", "<f4", ">u2", "<i8"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bslz4_decodes_bitshuffle_output(transpose, dtype, shape):
    array = poisson(shape, dtype, mean=3.0, seed=len(shape))
    for block in (0, 8, 64):
        payload = bslz4(array, block)
        np.testing.assert_array_equal(decoded(payload, array, "bslz4"), array)


def test_bslz4_decodes_what_hdf5_bitshuffle_filter_wrote(transpose, tmp_path):
    """Chunks compressed by hdf5plugin's bitshuffle filter decode to the same pixels."""
    frames = poisson((3, 300, 257), "<u4", mean=5.0)
    path = tmp_path / "bs.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "d", data=frames, chunks=(1, 300, 257), **hdf5plugin.Bitshuffle(cname="lz4")
        )
    with h5py.File(path) as f:
        for i in range(3):
            mask, chunk = f["d"].id.read_direct_chunk((i, 0, 0))
            assert mask == 0
            np.testing.assert_array_equal(decoded(chunk, frames[i], "bslz4"), frames[i])


def test_bitshuffle_output_reads_back_through_hdf5_filter(tmp_path):
    """The emitter's bslz4 framing is what the HDF5 bitshuffle filter reads."""
    frames = poisson((2, 64, 96), "<u2")
    path = tmp_path / "direct.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "d", shape=frames.shape, dtype="<u2", chunks=(1, 64, 96), **hdf5plugin.Bitshuffle()
        )
        for i in range(2):
            d.id.write_direct_chunk((i, 0, 0), bslz4(frames[i]))
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["d"][...], frames)


def test_bslz4_truncated_or_corrupt_is_refused():
    array = poisson((64, 64), "<u2")
    payload = bslz4(array)
    with pytest.raises(InvalidFrame, match="cut off"):
        decoded(payload[:-100], array, "bslz4")
    with pytest.raises(InvalidFrame, match="shorter than its 12-byte header"):
        decoded(payload[:5], array, "bslz4")
    broken = bytearray(payload)
    broken[20:40] = b"\xff" * 20
    with pytest.raises(InvalidFrame):
        decoded(bytes(broken), array, "bslz4")
    odd_block = payload[:8] + struct.pack(">I", 6) + payload[12:]
    with pytest.raises(InvalidFrame, match="block size of 6 bytes"):
        decoded(odd_block, array, "bslz4")


# --------------------------------------------------------------- lz4-hdf5


@pytest.mark.parametrize("dtype", DTYPES)
def test_lz4_hdf5_round_trip_with_several_and_raw_blocks(dtype):
    array = poisson((128, 100), dtype)
    noise = np.random.default_rng(1).integers(0, 255, 5000, np.uint8).tobytes()
    for block in (1 << 20, 4096, 1000):
        payload = lz4_hdf5(array.tobytes(), block)
        np.testing.assert_array_equal(decoded(payload, array, "lz4-hdf5"), array)
    incompressible = lz4_hdf5(noise, 1024)  # every block stored raw
    raw = np.frombuffer(noise, np.uint8)
    np.testing.assert_array_equal(decoded(incompressible, raw, "lz4-hdf5"), raw)


def test_lz4_hdf5_decodes_what_hdf5_lz4_filter_wrote(tmp_path):
    frames = poisson((2, 200, 150), "<u2")
    path = tmp_path / "lz4.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=frames, chunks=(1, 200, 150), **hdf5plugin.LZ4(nbytes=8192))
    with h5py.File(path) as f:
        for i in range(2):
            mask, chunk = f["d"].id.read_direct_chunk((i, 0, 0))
            assert mask == 0
            np.testing.assert_array_equal(decoded(chunk, frames[i], "lz4-hdf5"), frames[i])


# ---------------------------------------------------------------- Encoded


def test_encoded_check_compares_header_with_dtype_and_shape():
    array = poisson((32, 32), "<u2")
    payload = bslz4(array)
    assert len(Encoded(payload, "<u2", (32, 32), "bslz4").check()) == len(payload)
    with pytest.raises(InvalidFrame, match="decodes to 2048 bytes; shape \\(32, 33\\)"):
        Encoded(payload, "<u2", (32, 33), "bslz4").check()
    with pytest.raises(InvalidFrame, match="'none'"):
        Encoded(payload, "<u2", (32, 32), "none").check()
    small_blocks = bslz4(array, 8)  # blocks of 8 u2 = 16 bytes: not 8 elements of u4
    with pytest.raises(InvalidFrame, match="block size of 16 bytes"):
        Encoded(small_blocks, "<u4", (16, 32), "bslz4").check()
    blosc = compress(describe(array)[3], "<u2", "lz4")
    assert Encoded(blosc, "<u2", (32, 32), "lz4").check()
    with pytest.raises(InvalidFrame, match="not a blosc2 chunk"):
        Encoded(b"garbage-garbage-garbage", "<u2", (32, 32), "zstd").check()
