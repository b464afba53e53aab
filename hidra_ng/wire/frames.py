"""What users send and read: turning data into payloads and stored records into Frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hidra_ng.errors import InvalidFrame
from hidra_ng.wire.protocol import Payload, Record, StreamInfo, check_dtype, decode_meta

__all__ = ["Frame", "StreamInfo", "describe", "frame_from_record"]

Data = np.ndarray | bytes | bytearray | memoryview | None


@dataclass(frozen=True, slots=True)
class Frame:
    """A stored message as consumers see it (SPEC §2)."""

    stream: str
    index: int
    data: np.ndarray | bytes | None
    meta: dict[str, Any]
    sender: str
    seq: int
    created: float
    stored: float
    compression: str = "none"  # codec of the stored payload
    nbytes: int = field(default=0, repr=False)  # payload bytes as stored
    dtype: str = field(default="", repr=False)  # numpy dtype string of an array frame
    shape: tuple[int, ...] = field(default=(), repr=False)  # shape of an array frame
    group: str = ""  # the consumer group that handed it out (ack/nack go there)
    deliveries: int = field(default=0, repr=False)  # 2 and more: a redelivery


def describe(data: Data) -> tuple[Payload, str, tuple[int, ...], memoryview | bytes]:
    """Split user data into (payload kind, dtype, shape, payload buffer) without copying."""
    if type(data) is bytes:  # the usual small message: nothing to work out
        return Payload.BYTES, "", (), data
    if data is None:
        return Payload.NONE, "", (), b""
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biufc" or data.dtype.fields is not None:
            raise InvalidFrame(
                f"array dtype {data.dtype} is not supported; expected a numeric dtype"
                " (bool, int, uint, float or complex)"
            )
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        dtype = data.dtype.str
        check_dtype(dtype)
        flat = data.reshape(-1).view(np.uint8)
        shape = tuple(int(n) for n in data.shape)
        return Payload.ARRAY, dtype, shape, memoryview(flat)  # type: ignore[arg-type]
    if isinstance(data, (bytes, bytearray, memoryview)):
        buf = memoryview(data)
        if not buf.contiguous:
            raise InvalidFrame("memoryview payload is not contiguous; pass bytes or a C array")
        return Payload.BYTES, "", (), buf.cast("B") if buf.format != "B" else buf
    raise InvalidFrame(
        f"data of type {type(data).__name__} cannot be sent; expected numpy.ndarray, bytes or None"
    )


def payload_to_data(record: Record, payload: bytes | memoryview) -> np.ndarray | bytes | None:
    """Rebuild the user's data from a stored record and its (decoded) payload."""
    if record.payload == Payload.ARRAY:
        return np.frombuffer(payload, dtype=np.dtype(record.dtype)).reshape(record.shape)
    if record.payload == Payload.BYTES:
        return bytes(payload)
    return None


def frame_from_record(
    stream: str,
    index: int,
    record: Record,
    payload: bytes | memoryview | None,
    *,
    decode: bool = True,
    group: str = "",
    deliveries: int = 0,
) -> Frame:
    """A Frame; with ``decode=False`` its data is the payload as stored (compressed bytes).

    ``payload=None`` makes a metadata-only frame (``data`` is None), as queries return.
    """
    if payload is None:
        data: np.ndarray | bytes | None = None
    elif not decode and record.payload != Payload.NONE:
        data = bytes(payload)
    else:
        raw = payload
        if record.compression != "none" and record.payload != Payload.NONE:
            from hidra_ng.wire.compression import decompress  # blosc2: only when needed

            raw = decompress(payload, record)
        data = payload_to_data(record, raw)
    return Frame(  # positional, in the order of Frame's fields: faster per message
        stream,
        index,
        data,
        decode_meta(record.meta),
        record.sender,
        record.seq,
        record.created,
        record.stored,
        record.compression,
        record.nbytes,
        record.dtype,
        tuple(record.shape),
        group,
        deliveries,
    )
