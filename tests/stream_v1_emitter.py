"""A DECTRIS SIMPLON Stream V1 (``format: legacy``) emitter for tests, from the public format.

Written from public descriptions of the format (docs/sources.md lists them):
multipart messages on a PUSH socket, told apart by the first part's ``htype``:

- ``dheader-1.0`` {series, header_detail}; with basic/all the detector
  configuration JSON; with all the pairs (``dflatfield-1.0``, float32 blob),
  (``dpixelmask-1.0``, uint32 blob), (``dcountrate_table-1.0``, float32 blob),
  each header with ``shape`` [x, y] (width first) and ``type``; then the
  header appendix, when given;
- ``dimage-1.0`` {series, frame, hash}, ``dimage_d-1.0`` {shape [x, y], type,
  encoding, size}, the blob, ``dconfig-1.0`` {start_time, stop_time, real_time}
  in ns, then the image appendix, when given;
- ``dseries_end-1.0`` {series}.

Encodings: ``<`` raw, ``lz4<`` one LZ4 block without a header, ``bsN-lz4<`` the
HDF5 bitshuffle framing (12-byte header, then the blocks) with N bits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lz4.block
import numpy as np
import zmq
from stream_v2_emitter import bslz4

ENCODINGS = ("<", "lz4<", "bs8-lz4<", "bs16-lz4<", "bs32-lz4<")


def blob(array: np.ndarray, encoding: str) -> bytes:
    """The data blob of ``array`` in a Stream V1 encoding."""
    array = np.ascontiguousarray(array)
    if encoding == "<":
        return array.astype(array.dtype.newbyteorder("<")).tobytes()
    if encoding == "lz4<":
        return lz4.block.compress(array.tobytes(), store_size=False)
    if encoding.startswith("bs") and encoding.endswith("-lz4<"):
        bits = int(encoding[2:-5])
        assert bits == array.dtype.itemsize * 8, (encoding, array.dtype)
        return bslz4(array)
    raise ValueError(encoding)


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def header_parts(
    series: int,
    detail: str = "basic",
    config: dict[str, Any] | None = None,
    tables: dict[str, np.ndarray] | None = None,
    appendix: Any = None,
) -> list[bytes]:
    """The parts of a series header; ``tables``: flatfield, pixel_mask, countrate (numpy)."""
    parts = [_json({"htype": "dheader-1.0", "series": series, "header_detail": detail})]
    if detail in ("basic", "all"):
        parts.append(_json(config or {}))
    if detail == "all":
        assert tables is not None
        for htype, name in (
            ("dflatfield-1.0", "flatfield"),
            ("dpixelmask-1.0", "pixel_mask"),
            ("dcountrate_table-1.0", "countrate"),
        ):
            table = tables[name]
            shape = list(reversed(table.shape))  # [x, y]: width first
            parts.append(_json({"htype": htype, "shape": shape, "type": table.dtype.name}))
            parts.append(table.tobytes())
    if appendix is not None:
        parts.append(_json(appendix) if not isinstance(appendix, str) else appendix.encode())
    return parts


def image_parts(
    series: int, frame: int, array: np.ndarray, encoding: str = "<", appendix: Any = None
) -> list[bytes]:
    data = blob(array, encoding)
    parts = [
        _json(
            {
                "htype": "dimage-1.0",
                "series": series,
                "frame": frame,
                "hash": hashlib.md5(data).hexdigest(),
            }
        ),
        _json(
            {
                "htype": "dimage_d-1.0",
                "shape": list(reversed(array.shape)),
                "type": array.dtype.name,
                "encoding": encoding,
                "size": len(data),
            }
        ),
        data,
        _json(
            {
                "htype": "dconfig-1.0",
                "start_time": frame * 1_000_000,
                "stop_time": frame * 1_000_000 + 999_000,
                "real_time": 999_000,
            }
        ),
    ]
    if appendix is not None:
        parts.append(_json(appendix))
    return parts


def end_parts(series: int) -> list[bytes]:
    return [_json({"htype": "dseries_end-1.0", "series": series})]


class Emitter1:
    """The detector side: a PUSH socket sending Stream V1 multipart messages."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, parts: list[bytes], timeout: float = 60.0) -> None:
        # a deadline, not a pace: a client process may start slowly on a loaded machine
        if not self.sock.poll(timeout * 1000, zmq.POLLOUT):
            raise TimeoutError("no Stream V1 client connected")
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Emitter1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
