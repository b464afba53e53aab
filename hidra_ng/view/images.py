"""Frames as files (PNG, TIFF, .npy, JSON) and as the view's binary WebSocket message.

Pure functions: arrays in, bytes out; no sockets, no event loop. The browser
renders the image itself (contrast, log scale, colour map, zoom are instant
there), so what it gets is the frame's values, not a picture: see
:func:`browser_message` for the layout.
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from hidra_ng.errors import InvalidArgument, NotAnImage
from hidra_ng.wire.frames import Frame

#: suffix -> (format, media type)
FORMATS = {
    "png": "image/png",
    "tiff": "image/tiff",
    "npy": "application/x-npy",
    "json": "application/json",
}
SUFFIXES = {"png": "png", "tif": "tiff", "tiff": "tiff", "npy": "npy", "json": "json"}
#: the WebSocket frame message starts with these four bytes
MAGIC = b"HNV1"
#: what JavaScript typed arrays can hold directly, by numpy dtype name
_BROWSER_DTYPES = {
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "float32",
    "float64",
}


def frame_info(frame: Frame) -> dict[str, Any]:
    """What the page and the ``.json`` route show about a frame, without its data."""
    data = frame.data
    if isinstance(data, np.ndarray):
        kind, dtype, shape = "array", str(data.dtype), list(data.shape)
    elif data is None:
        kind, dtype, shape = "none", "", []
    else:
        kind, dtype, shape = "bytes", "", [len(data)]
    return {
        "stream": frame.stream,
        "index": frame.index,
        "kind": kind,
        "dtype": dtype,
        "shape": shape,
        "meta": frame.meta,
        "sender": frame.sender,
        "seq": frame.seq,
        "created": frame.created,
        "stored": frame.stored,
        "compression": frame.compression,
        "nbytes": frame.nbytes,
    }


def _array(frame: Frame, fmt: str) -> np.ndarray:
    data = frame.data
    if not isinstance(data, np.ndarray):
        what = "metadata only" if data is None else f"{len(data)} bytes of opaque data"
        raise NotAnImage(
            f"frame {frame.stream!r} #{frame.index} holds {what}, not an array, so it has no"
            f" {fmt.upper()} form; ask for .json to read its meta"
        )
    return data


def encode(frame: Frame, fmt: str) -> tuple[bytes, dict[str, str]]:
    """The frame as ``fmt`` (png, tiff, npy, json): (body, extra response headers)."""
    if fmt == "json":
        return json.dumps(frame_info(frame)).encode(), {}
    data = _array(frame, fmt)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, data, allow_pickle=False)
        return buf.getvalue(), {}
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(buf, data)
        return buf.getvalue(), {}
    if fmt == "png":
        return to_png(frame, data)
    raise InvalidArgument(f"format {fmt!r} is unknown; expected one of {', '.join(FORMATS)}")


def to_png(frame: Frame, data: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A grayscale PNG: exact for uint8, uint16 and bool; other dtypes scaled to 8 bits.

    A 16-bit PNG holds uint16 values as they are; anything wider cannot be a PNG
    without losing values, so it becomes an 8-bit picture scaled linearly from the
    frame's minimum to its maximum, which the ``X-Hidra-Ng-Png`` header states
    (``exact`` or ``scaled min=... max=...``). Use .tiff or .npy for exact values.
    """
    from PIL import Image

    plane = data.reshape(data.shape[-2:]) if data.ndim > 2 and _leading_ones(data) else data
    if plane.ndim == 1:
        plane = plane.reshape(1, -1)
    if plane.ndim != 2 or plane.size == 0:
        raise NotAnImage(
            f"frame {frame.stream!r} #{frame.index} has shape {tuple(data.shape)}, which is no"
            " 2-D image for a PNG; ask for .tiff or .npy"
        )
    if plane.dtype == np.bool_:
        plane = plane.astype(np.uint8) * 255
        note = "exact (true = 255)"
    elif plane.dtype.kind == "u" and plane.dtype.itemsize <= 2:
        plane = plane.astype(plane.dtype.newbyteorder("="), copy=False)
        note = "exact"
    else:
        finite = plane[np.isfinite(plane)] if plane.dtype.kind in "fc" else plane
        values = np.abs(finite) if finite.dtype.kind == "c" else finite
        lo = float(values.min()) if values.size else 0.0
        hi = float(values.max()) if values.size else 0.0
        shown = np.abs(plane) if plane.dtype.kind == "c" else plane
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        scaled = np.nan_to_num((shown.astype(np.float64) - lo) * scale, nan=0.0)
        plane = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        note = f"scaled min={lo:g} max={hi:g}"
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="PNG")
    return buf.getvalue(), {"X-Hidra-Ng-Png": note}


def _leading_ones(data: np.ndarray) -> bool:
    return all(n == 1 for n in data.shape[:-2])


# ------------------------------------------------------- the browser message


@dataclass(frozen=True, slots=True)
class Plane:
    """The 2-D values a browser shows for a frame, maybe binned."""

    values: np.ndarray  # 2-D, little-endian, a dtype JavaScript typed arrays hold
    binning: int  # 1: every pixel; k: each value is the maximum of a k x k block
    note: str  # what was changed to show it ("" when nothing)


def display_plane(data: np.ndarray, max_pixels: int) -> Plane:
    """The 2-D plane of ``data`` the browser shows, binned by max to at most ``max_pixels``.

    Binning takes the maximum of each k x k block (a Bragg spot or a hot pixel stays
    visible); the pixel readout asks the server for the true value in that case.
    """
    notes = []
    if data.ndim == 0:
        plane = data.reshape(1, 1)
    elif data.ndim == 1:
        plane = data.reshape(1, -1)
    elif data.ndim == 2:
        plane = data
    else:
        plane = data[(0,) * (data.ndim - 2)]
        notes.append(f"plane [{', '.join('0' * (data.ndim - 2))}] of {tuple(data.shape)}")
    if plane.dtype.kind == "c":
        plane = np.abs(plane)
        notes.append("magnitude of complex values")
    name = plane.dtype.name
    if plane.dtype == np.bool_:
        plane = plane.view(np.uint8)
    elif name == "float16":
        plane = plane.astype(np.float32)
    elif name not in _BROWSER_DTYPES:  # (u)int64 and longer floats
        plane = plane.astype(np.float64)
        notes.append(f"{name} shown as float64")
    binning = 1
    if plane.size > max_pixels:
        binning = math.ceil(math.sqrt(plane.size / max_pixels))
        plane = _bin_max(plane, binning)
        notes.append(f"binned {binning}x{binning} (maximum) for display")
    plane = np.ascontiguousarray(plane, dtype=plane.dtype.newbyteorder("<"))
    return Plane(plane, binning, "; ".join(notes))


def _bin_max(plane: np.ndarray, k: int) -> np.ndarray:
    h, w = plane.shape
    ph, pw = -h % k, -w % k
    if ph or pw:
        plane = np.pad(plane, ((0, ph), (0, pw)), mode="edge")
    return plane.reshape((h + ph) // k, k, (w + pw) // k, k).max(axis=(1, 3))


def browser_message(frame: Frame, *, live: bool, max_pixels: int) -> bytes:
    """One binary WebSocket message: ``b"HNV1"``, header length, JSON header, values.

    Layout: 4 bytes magic, a little-endian uint32 header length n, n bytes of
    UTF-8 JSON (padded with spaces so the values start at a multiple of 8), then
    the plane's values, little-endian in C order. The header is :func:`frame_info`
    plus ``live``, and for arrays ``view`` = {dtype, shape, binning, note} of the
    values sent.
    """
    info = frame_info(frame)
    info["live"] = live
    body: bytes | memoryview = b""
    if isinstance(frame.data, np.ndarray) and frame.data.size:
        plane = display_plane(frame.data, max_pixels)
        info["view"] = {
            "dtype": plane.values.dtype.name,
            "shape": list(plane.values.shape),
            "binning": plane.binning,
            "note": plane.note,
        }
        body = plane.values.data
    header = json.dumps(info, default=str).encode()
    header += b" " * (-(8 + len(header)) % 8)
    return b"".join((MAGIC, struct.pack("<I", len(header)), header, body))


def value_at(frame: Frame, x: int, y: int) -> float | int | str | None:
    """The value at column ``x``, row ``y`` of the shown plane of ``frame`` (None: outside)."""
    data = frame.data
    if not isinstance(data, np.ndarray) or data.size == 0:
        return None
    plane = data.reshape(1, -1) if data.ndim == 1 else data
    if plane.ndim > 2:
        plane = plane[(0,) * (plane.ndim - 2)]
    if plane.ndim == 0:
        plane = plane.reshape(1, 1)
    if not (0 <= y < plane.shape[0] and 0 <= x < plane.shape[1]):
        return None
    value = plane[y, x].item()
    if isinstance(value, complex) or (isinstance(value, float) and not math.isfinite(value)):
        return str(value)  # JSON has no complex, NaN or infinity
    return value
