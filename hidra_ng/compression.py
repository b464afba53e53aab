"""blosc2 compression of frame payloads (SPEC §11).

A compressed payload is one blosc2 chunk. Integer and float pixels are
bit-shuffled with their item size first, which is what makes detector frames
(mostly small counts) compress well. Frames stay compressed on the wire and in
the store; consumers get the decoded array.
"""

from __future__ import annotations

import blosc2

from hidra_ng.errors import InvalidFrame
from hidra_ng.protocol import COMPRESSIONS, Payload, Record, check_dtype

_CODECS = {"lz4": blosc2.Codec.LZ4, "zstd": blosc2.Codec.ZSTD}
_LEVELS = {"lz4": 5, "zstd": 3}


def check_compression(name: str) -> str:
    if name not in COMPRESSIONS:
        raise InvalidFrame(f"compression {name!r} is unknown; expected one of {COMPRESSIONS}")
    return name


def compress(buffer: memoryview | bytes, dtype: str, codec: str) -> bytes:
    """Compress one payload; ``dtype`` is '' for opaque bytes (no shuffle)."""
    itemsize = check_dtype(dtype).itemsize if dtype else 1
    filters = [blosc2.Filter.BITSHUFFLE] if itemsize > 1 or dtype else [blosc2.Filter.NOFILTER]
    return blosc2.compress2(
        buffer,
        cparams={
            "codec": _CODECS[codec],
            "clevel": _LEVELS[codec],
            "filters": filters,
            "typesize": itemsize,
            "nthreads": 1,
        },
    )


def decompressed_size(payload: bytes | memoryview) -> int:
    try:
        return blosc2.get_cbuffer_sizes(payload)[0]
    except Exception as err:  # blosc2 raises plain errors for bad headers
        raise InvalidFrame(f"payload is not a blosc2 chunk: {err}") from err


def decompress(payload: bytes | memoryview, record: Record) -> bytes:
    """Decode a stored payload back to its raw bytes, checking the expected size."""
    if record.compression == "none" or record.payload == Payload.NONE:
        return bytes(payload)
    size = decompressed_size(payload)
    if record.payload == Payload.ARRAY:
        expected = check_dtype(record.dtype).itemsize
        for n in record.shape:
            expected *= n
        if size != expected:
            raise InvalidFrame(
                f"compressed payload decodes to {size} bytes; shape {record.shape} and dtype"
                f" {record.dtype} need {expected}"
            )
    try:
        return blosc2.decompress2(payload)
    except Exception as err:
        raise InvalidFrame(f"compressed payload cannot be decoded: {err}") from err
