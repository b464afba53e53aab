"""A DECTRIS SIMPLON Stream V2 emitter for tests, written from the public specification.

Stream V2: one CBOR map per ZeroMQ message on a PUSH socket, ``type`` = start |
image | end. The messages are framed as a real detector frames them (checked
against recorded messages by tests/integration/test_dectris_recorded.py, see
tests/cbor_framing.py): self-described CBOR (tag 55799 before the map), keys in
the detector's order, dates as tag 0 text, rationals as two-integer arrays, and
image data a map channel -> RFC 8746 multi-dimensional array (tag 40: [dims,
typed array]) whose typed array (tags 64-87) holds the bytes, or the DECTRIS
compression tag 56500 [algorithm, modifier, bytes] standing in for them:

- ``["bslz4", elem_size, ...]``: the HDF5 bitshuffle filter framing, made with
  the ``bitshuffle`` package (the reference implementation), 8 KiB blocks as
  the detector makes them: byte for byte the recorded detector's bytes;
- ``["lz4", 0, ...]``: the HDF5 LZ4 filter framing with 8 KiB blocks (the
  detector's LZ4 encoder packs the blocks differently; the framing is the same);
- ``["bszstd", elem_size, ...]``: the bitshuffle framing with Zstandard blocks;
- ``["trpx", elem_size, ...]``: TERSE/PROLIX, made by the encoder of DECTRIS's
  ``dectris-compression`` library (its C API, which the Python module does not
  wrap; called through ctypes).
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import struct
from typing import Any

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import zmq

_HEADER = struct.Struct(">QI")
_SIZE = struct.Struct(">I")
SELF_DESCRIBED = 55799
LZ4_BLOCK_BYTES = 8192  # what the recorded detector uses
CHANNELS = ["threshold_1", "threshold_2", "difference"]  # EIGER2 with two thresholds
TIME_BASE = 50_000_000  # the recorded detector's time base (Hz): rational denominators


def typed_array_tag(dtype: np.dtype) -> int:
    """RFC 8746 section 2.1: 0b010_f_s_e_ll."""
    dtype = np.dtype(dtype)
    little = dtype.byteorder == "<" or (dtype.byteorder == "=" and np.little_endian)
    if dtype.kind == "f":
        ll = {2: 0, 4: 1, 8: 2}[dtype.itemsize]
        return 0b010_1_0_0_00 | (little << 2) | ll
    ll = {1: 0, 2: 1, 4: 2, 8: 3}[dtype.itemsize]
    signed = dtype.kind == "i"
    return 0b010_0_0_0_00 | (signed << 3) | ((little and ll > 0) << 2) | ll


def _block_elems(itemsize: int, block_elems: int) -> int:
    # bitshuffle's default: 8 KiB, a multiple of 8 elements, >= 128
    return block_elems or max(128, (8192 // itemsize) // 8 * 8)


def bslz4(array: np.ndarray, block_elems: int = 0) -> bytes:
    """The HDF5 bitshuffle filter framing of ``array``: header + bitshuffle's LZ4 blocks."""
    itemsize = array.dtype.itemsize
    block_elems = _block_elems(itemsize, block_elems)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(array), block_elems)
    return _HEADER.pack(array.nbytes, block_elems * itemsize) + body.tobytes()


def bszstd(array: np.ndarray, block_elems: int = 0) -> bytes:
    """The bitshuffle HDF5 filter framing with Zstandard blocks."""
    itemsize = array.dtype.itemsize
    block_elems = _block_elems(itemsize, block_elems)
    body = bitshuffle.compress_zstd(np.ascontiguousarray(array), block_elems)
    return _HEADER.pack(array.nbytes, block_elems * itemsize) + body.tobytes()


def lz4_hdf5(raw: bytes, block_bytes: int = LZ4_BLOCK_BYTES) -> bytes:
    """The HDF5 LZ4 filter framing: header, then per block a size and LZ4 (or raw) bytes."""
    out = [_HEADER.pack(len(raw), block_bytes)]
    for start in range(0, len(raw), block_bytes):
        block = raw[start : start + block_bytes]
        packed = lz4.block.compress(block, store_size=False)
        if len(packed) >= len(block):
            packed = block  # the filter stores a block raw when LZ4 does not shrink it
        out += [_SIZE.pack(len(packed)), packed]
    return b"".join(out)


@functools.cache
def _dectris_c() -> ctypes.CDLL:
    from dectris import compression

    lib = ctypes.CDLL(compression.__file__)
    for name in ("compression_compress_bound", "compression_compress_buffer"):
        getattr(lib, name).restype = ctypes.c_size_t
    lib.compression_compress_bound.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t]
    lib.compression_compress_buffer.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    return lib


def trpx(array: np.ndarray) -> bytes:
    """TERSE/PROLIX bytes of an unsigned 8/16/32-bit array, by DECTRIS's own encoder."""
    trpx_algorithm = 3  # COMPRESSION_TRPX in dectris-compression's compression.h
    lib, raw, itemsize = _dectris_c(), np.ascontiguousarray(array).tobytes(), array.dtype.itemsize
    bound = lib.compression_compress_bound(trpx_algorithm, len(raw), itemsize)
    out = ctypes.create_string_buffer(bound)
    n = lib.compression_compress_buffer(trpx_algorithm, out, bound, raw, len(raw), itemsize)
    if n >= bound:
        raise ValueError(f"trpx cannot encode {array.dtype} data")
    return out.raw[:n]


COMPRESSIONS = ("none", "bslz4", "lz4", "bszstd", "trpx")


def compressed(array: np.ndarray, compression: str, block: int = 0) -> Any:
    """The bytes of a typed array: raw, or tag 56500 as a DECTRIS detector makes it."""
    array = np.ascontiguousarray(array)
    itemsize = array.dtype.itemsize
    if compression == "none":
        return array.tobytes()
    if compression == "bslz4":
        return cbor2.CBORTag(56500, ["bslz4", itemsize, bslz4(array, block)])
    if compression == "lz4":
        return cbor2.CBORTag(56500, ["lz4", 0, lz4_hdf5(array.tobytes(), block or LZ4_BLOCK_BYTES)])
    if compression == "bszstd":
        return cbor2.CBORTag(56500, ["bszstd", itemsize, bszstd(array, block)])
    if compression == "trpx":
        return cbor2.CBORTag(56500, ["trpx", itemsize, trpx(array)])
    raise ValueError(compression)


def multidim(array: np.ndarray, compression: str = "none", block: int = 0) -> cbor2.CBORTag:
    """An RFC 8746 tag-40 array, its bytes compressed as a DECTRIS detector would."""
    typed = cbor2.CBORTag(typed_array_tag(array.dtype), compressed(array, compression, block))
    return cbor2.CBORTag(40, [list(array.shape), typed])


def encode(message: dict[str, Any], self_described: bool = True) -> bytes:
    """A message as the detector sends it: self-described CBOR (tag 55799) by default."""
    return cbor2.dumps(cbor2.CBORTag(SELF_DESCRIBED, message) if self_described else message)


SERIES_DATE = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def start_message(
    series_id: int,
    unique: str,
    channels: list[str],
    *,
    shape: tuple[int, int] = (64, 48),
    dtype: str = "uint16",
    user_data: Any = None,
    tables: bool = False,
    table_compression: str = "none",
) -> dict[str, Any]:
    """A start message with every field of the Stream V2 specification, in its order.

    ``tables``: ``header_detail: all``: a flatfield (float32) and a pixel mask
    (uint32) per channel and the count-rate correction table (uint32).
    """
    msg: dict[str, Any] = {
        "type": "start",
        "arm_date": SERIES_DATE,
        "beam_center_x": 24.5,
        "beam_center_y": 31.25,
        "channels": channels,
        "count_time": 0.001,
        "countrate_correction_enabled": True,
    }
    if tables:
        lut = np.arange(1000, dtype="<u4")
        msg["countrate_correction_lookup_table"] = cbor2.CBORTag(
            typed_array_tag(lut.dtype), compressed(lut, table_compression)
        )
    msg |= {
        "detector_description": "EIGER2 test",
        "detector_serial_number": "E-32-0000",
        "detector_translation": [0.0, 0.0, 0.12],
    }
    if tables:
        msg["flatfield"] = {
            c: multidim(np.full(shape, 1.0 + i, "<f4"), table_compression)
            for i, c in enumerate(channels)
        }
    msg |= {
        "flatfield_enabled": True,
        "frame_time": 0.001,
        "goniometer": {"omega": {"increment": 0.1, "start": 0.0}},
        "image_dtype": dtype,
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "incident_energy": 12400.0,
        "incident_wavelength": 1.0,
        "number_of_images": 100,
    }
    if tables:
        msg["pixel_mask"] = {
            c: multidim(np.eye(*shape, dtype="<u4") * (i + 1), table_compression)
            for i, c in enumerate(channels)
        }
    msg |= {
        "pixel_mask_enabled": True,
        "pixel_size_x": 75e-6,
        "pixel_size_y": 75e-6,
        "saturation_value": 65000,
        "sensor_material": "Si",
        "sensor_thickness": 450e-6,
        "series_id": series_id,
        "series_unique_id": unique,
        "threshold_energy": {c: 6000.0 + 1000 * i for i, c in enumerate(channels)},
        "user_data": user_data,
        "virtual_pixel_interpolation_enabled": False,
    }
    return msg


def image_message(
    series_id: int,
    unique: str,
    image_id: int,
    frames: dict[str, np.ndarray],
    compression: str = "none",
    user_data: Any = None,
    *,
    time_base: int = TIME_BASE,
    exposure: int = 999_995,
    series_date: Any = SERIES_DATE,
    times: tuple[list[int], list[int], list[int]] | None = None,
) -> dict[str, Any]:
    """An image message: fields in the recorded detector's order, ``data`` last.

    ``times``: (real_time, start_time, stop_time) rationals instead of the ones
    made from ``exposure``; ``series_date`` may be a ``CBORTag(0, text)``.
    """
    start = image_id * (exposure + 5)
    real, begin, stop = times or (
        [exposure, time_base],
        [start, time_base],
        [start + exposure, time_base],
    )
    return {
        "type": "image",
        "series_id": series_id,
        "series_unique_id": unique,
        "image_id": image_id,
        "real_time": real,
        "series_date": series_date,
        "start_time": begin,
        "stop_time": stop,
        "user_data": user_data,
        "data": {c: multidim(a, compression) for c, a in frames.items()},
    }


def end_message(series_id: int, unique: str) -> dict[str, Any]:
    return {"type": "end", "series_id": series_id, "series_unique_id": unique}


class Emitter:
    """The detector side: a PUSH socket sending Stream V2 messages."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._disconnects = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def send(
        self, message: dict[str, Any] | bytes, timeout: float = 60.0, self_described: bool = True
    ) -> None:
        # a deadline, not a pace: a client process may start slowly on a loaded machine
        raw = message if isinstance(message, bytes) else encode(message, self_described)
        if not self.sock.poll(timeout * 1000, zmq.POLLOUT):
            raise TimeoutError("no Stream V2 client connected")
        self.sock.send(raw)

    def start(self, series_id: int, unique: str, channels: list[str], **kw: Any) -> dict:
        msg = start_message(series_id, unique, channels, **kw)
        self.send(msg)
        return msg

    def image(
        self,
        series_id: int,
        unique: str,
        image_id: int,
        frames: dict[str, np.ndarray],
        compression: str = "none",
        user_data: Any = None,
    ) -> None:
        self.send(image_message(series_id, unique, image_id, frames, compression, user_data))

    def end(self, series_id: int, unique: str) -> None:
        self.send(end_message(series_id, unique))

    def wait_disconnected(self, timeout: float = 10.0) -> None:
        """Until this PUSH saw a client go: messages sent before that may go down the
        dead connection and be lost inside ZeroMQ, as with a real detector."""
        if not self._disconnects.poll(timeout * 1000):
            raise TimeoutError("the Stream V2 client did not disconnect")
        self._disconnects.recv_multipart()

    def close(self) -> None:
        self.sock.disable_monitor()
        self._disconnects.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
