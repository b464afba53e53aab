"""A DECTRIS SIMPLON Stream V2 emitter for tests, written from the public specification.

Stream V2: one CBOR map per ZeroMQ message on a PUSH socket, ``type`` = start |
image | end. Image data maps channel -> RFC 8746 multi-dimensional array
(tag 40: [dims, typed array]); a typed array (tags 64-87) holds the bytes, or
the DECTRIS compression tag 56500 [algorithm, modifier, bytes] standing in for
them: ``["bslz4", elem_size, ...]`` in the HDF5 bitshuffle filter framing or
``["lz4", 0, ...]`` in the HDF5 LZ4 filter framing. bslz4 bytes are made with
the ``bitshuffle`` package, the reference implementation.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import zmq

_HEADER = struct.Struct(">QI")
_SIZE = struct.Struct(">I")


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


def bslz4(array: np.ndarray, block_elems: int = 0) -> bytes:
    """The HDF5 bitshuffle filter framing of ``array``: header + bitshuffle's LZ4 blocks."""
    itemsize = array.dtype.itemsize
    if not block_elems:  # bitshuffle's default: 8 KiB, a multiple of 8 elements, >= 128
        block_elems = max(128, (8192 // itemsize) // 8 * 8)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(array), block_elems)
    return _HEADER.pack(array.nbytes, block_elems * itemsize) + body.tobytes()


def lz4_hdf5(raw: bytes, block_bytes: int = 1 << 20) -> bytes:
    """The HDF5 LZ4 filter framing: header, then per block a size and LZ4 (or raw) bytes."""
    out = [_HEADER.pack(len(raw), block_bytes)]
    for start in range(0, len(raw), block_bytes):
        block = raw[start : start + block_bytes]
        packed = lz4.block.compress(block, store_size=False)
        if len(packed) >= len(block):
            packed = block  # the filter stores a block raw when LZ4 does not shrink it
        out += [_SIZE.pack(len(packed)), packed]
    return b"".join(out)


def multidim(array: np.ndarray, compression: str = "none", block: int = 0) -> cbor2.CBORTag:
    """An RFC 8746 tag-40 array, its bytes compressed as a DECTRIS detector would."""
    array = np.ascontiguousarray(array)
    if compression == "none":
        data: Any = array.tobytes()
    elif compression == "bslz4":
        data = cbor2.CBORTag(56500, ["bslz4", array.dtype.itemsize, bslz4(array, block)])
    elif compression == "lz4":
        data = cbor2.CBORTag(56500, ["lz4", 0, lz4_hdf5(array.tobytes(), block or 1 << 20)])
    else:
        raise ValueError(compression)
    return cbor2.CBORTag(40, [list(array.shape), cbor2.CBORTag(typed_array_tag(array.dtype), data)])


class Emitter:
    """The detector side: a PUSH socket sending Stream V2 messages."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._disconnects = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.series_date = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    def send(self, message: dict[str, Any] | bytes, timeout: float = 10.0) -> None:
        raw = message if isinstance(message, bytes) else cbor2.dumps(message)
        if not self.sock.poll(timeout * 1000, zmq.POLLOUT):
            raise TimeoutError("no Stream V2 client connected")
        self.sock.send(raw)

    def start(
        self,
        series_id: int,
        unique: str,
        channels: list[str],
        *,
        shape: tuple[int, int] = (64, 48),
        user_data: Any = None,
        tables: bool = False,
    ) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "start",
            "arm_date": self.series_date,
            "beam_center_x": 24.5,
            "beam_center_y": 31.25,
            "channels": channels,
            "count_time": 0.001,
            "countrate_correction_enabled": True,
            "detector_description": "EIGER2 test",
            "detector_serial_number": "E-32-0000",
            "detector_translation": [0.0, 0.0, 0.12],
            "flatfield_enabled": True,
            "frame_time": 0.001,
            "goniometer": {"omega": {"increment": 0.1, "start": 0.0}},
            "image_size_x": shape[1],
            "image_size_y": shape[0],
            "incident_energy": 12400.0,
            "incident_wavelength": 1.0,
            "number_of_images": 100,
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
        if tables:
            msg["flatfield"] = {
                c: multidim(np.full(shape, 1.0 + i, "<f4")) for i, c in enumerate(channels)
            }
            msg["pixel_mask"] = {c: multidim(np.zeros(shape, "<u4")) for c in channels}
            lut = np.arange(1000, dtype="<u4")
            msg["countrate_correction_lookup_table"] = cbor2.CBORTag(70, lut.tobytes())
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
        base = 1_000_000  # time base: the denominators of the rationals
        self.send(
            {
                "type": "image",
                "series_id": series_id,
                "series_unique_id": unique,
                "image_id": image_id,
                "real_time": [1000, base],
                "series_date": self.series_date,
                "start_time": [image_id * 1000, base],
                "stop_time": [image_id * 1000 + 1000, base],
                "user_data": user_data,
                "data": {c: multidim(a, compression) for c, a in frames.items()},
            }
        )

    def end(self, series_id: int, unique: str) -> None:
        self.send({"type": "end", "series_id": series_id, "series_unique_id": unique})

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
