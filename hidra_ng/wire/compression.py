"""Compressed frame payloads: blosc2 made by a Producer, HDF5-filter framings from detectors.

Codecs (``protocol.COMPRESSIONS``):

``lz4``, ``zstd``
    One blosc2 chunk, made by a Producer (SPEC §11). Pixels are bit-shuffled with
    their item size first, which is what makes detector frames (mostly small
    counts) compress well.
``bslz4``
    Bitshuffle + LZ4 in the framing of the HDF5 bitshuffle filter (id 32008), as
    DECTRIS detectors send it: a 12-byte header (uncompressed size as big-endian
    u64, block size in bytes as big-endian u32), then per block a big-endian u32
    compressed size and an LZ4 block of the bit-transposed block; the elements
    after the last multiple of 8 follow uncompressed.
``lz4-hdf5``
    LZ4 in the framing of the HDF5 LZ4 filter (id 32004): the same 12-byte header,
    then per block a big-endian u32 size and the LZ4 block, or the raw block when
    that size equals the block's uncompressed size.
``bszstd``
    Bitshuffle + Zstandard in the framing of the HDF5 bitshuffle filter with its
    Zstandard option: the header and block sizes of ``bslz4``, each block one
    Zstandard frame.
``trpx``
    TERSE/PROLIX (the HDF5 TERSE filter, id 32029): one or more streams, each an
    XML header ``<Terse prolix_bits= number_of_values= memory_size= .../>`` and
    ``memory_size`` bytes of compressed unsigned 8, 16 or 32 bit values.

The four detector codecs are decoded by DECTRIS's ``dectris-compression``
package (C: bounds-checked LZ4, Zstandard, bitshuffle, TRPX), several times
faster than the numpy decoders below, which stay as the reference
implementation of the bslz4 and lz4-hdf5 framings.

Frames stay compressed on the wire and in the store; :func:`decompress` gives
consumers the raw bytes back. Sources that receive frames already compressed
hand them to the Producer as :class:`Encoded`, which spools them as they are.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blosc2
import lz4.block
import numpy as np

from hidra_ng.errors import InvalidFrame
from hidra_ng.wire.protocol import COMPRESSIONS, Payload, Record, check_dtype

#: What a Producer can compress with (SPEC §11); the others arrive compressed.
PRODUCER_COMPRESSIONS = ("none", "lz4", "zstd")
#: Codecs in HDF5-filter framing, made by detectors and stored as received.
FRAMED = ("bslz4", "lz4-hdf5", "bszstd", "trpx")
#: Our codec names -> the algorithm names of DECTRIS's compression tag 56500.
DECTRIS_ALGORITHMS = {"bslz4": "bslz4", "lz4-hdf5": "lz4", "bszstd": "bszstd", "trpx": "trpx"}
#: Codecs whose bitshuffle block size must hold a multiple of 8 elements.
BITSHUFFLED = ("bslz4", "bszstd")

_CODECS = {"lz4": blosc2.Codec.LZ4, "zstd": blosc2.Codec.ZSTD}
_LEVELS = {"lz4": 5, "zstd": 3}
#: blosc2's own threads per compression (they run outside the GIL)
THREADS = 1
_FRAME_HEADER = struct.Struct(">QI")  # uncompressed bytes, block bytes
_BLOCK_SIZE = struct.Struct(">I")
_BSHUF_MULT = 8  # bitshuffle transposes blocks of a multiple of 8 elements
_UNSHUFFLE_BATCH_BYTES = 4 << 20  # bounds the 8x bit temporaries of the numpy transpose


def check_compression(name: str) -> str:
    """A codec a Producer can compress with, else InvalidFrame naming it."""
    if name not in PRODUCER_COMPRESSIONS:
        known = "" if name in COMPRESSIONS else " unknown;"
        raise InvalidFrame(
            f"compression {name!r} is{known} not one a Producer makes; expected one of"
            f" {PRODUCER_COMPRESSIONS} ({', '.join(FRAMED)} frames arrive compressed from"
            " detectors and are stored as received)"
        )
    return name


def compress(buffer: memoryview | bytes, dtype: str, codec: str) -> bytes:
    """Compress one payload with blosc2; ``dtype`` is '' for opaque bytes (no shuffle)."""
    if codec not in _CODECS:
        raise InvalidFrame(f"compression {codec!r} is not a blosc2 codec; expected lz4 or zstd")
    itemsize = check_dtype(dtype).itemsize if dtype else 1
    filters = [blosc2.Filter.BITSHUFFLE] if dtype else [blosc2.Filter.NOFILTER]
    return blosc2.compress2(  # type: ignore[no-any-return]
        buffer,
        cparams={
            "codec": _CODECS[codec],
            "clevel": _LEVELS[codec],
            "filters": filters,
            "typesize": itemsize,
            "nthreads": THREADS,
        },
    )


# --------------------------------------------------------------------------
# Sizes and checks that read headers only


def decompressed_size(payload: bytes | memoryview, codec: str = "lz4") -> int:
    """The size a compressed payload decodes to, read from its header alone."""
    if codec in _CODECS:
        try:
            nbytes, cbytes, _ = blosc2.get_cbuffer_sizes(payload)
        except Exception as err:  # blosc2 raises plain errors for bad headers
            raise InvalidFrame(f"payload is not a blosc2 chunk: {err}") from err
        if cbytes != len(payload):
            raise InvalidFrame(
                f"payload of {len(payload)} bytes is not a blosc2 chunk: its header says"
                f" {cbytes} compressed bytes"
            )
        return int(nbytes)
    if codec == "trpx":
        return _trpx_size(payload)
    if codec in FRAMED:
        if len(payload) < _FRAME_HEADER.size:
            raise InvalidFrame(
                f"{codec} payload of {len(payload)} bytes is shorter than its"
                f" {_FRAME_HEADER.size}-byte header"
            )
        return int(_FRAME_HEADER.unpack_from(payload)[0])
    raise InvalidFrame(f"compression {codec!r} is unknown; expected one of {COMPRESSIONS[1:]}")


_TRPX_HEADER = re.compile(rb"<Terse\s([^<>]{0,4096}?)/>")
_TRPX_ATTR = re.compile(rb'([a-z_]+)="([^"]*)"')


def _trpx_size(payload: bytes | memoryview) -> int:
    """The decoded size of concatenated TRPX streams, read from their XML headers."""
    data = memoryview(payload).cast("B")
    pos, total = 0, 0
    while pos < len(data):
        match = _TRPX_HEADER.match(bytes(data[pos : pos + 4200]))
        if match is None:
            raise InvalidFrame(f"trpx payload has no <Terse .../> header at byte {pos}")
        attrs = dict(_TRPX_ATTR.findall(match.group(1)))
        try:
            bits = int(attrs[b"prolix_bits"])
            values = int(attrs[b"number_of_values"])
            size = int(attrs[b"memory_size"])
        except (KeyError, ValueError):
            raise InvalidFrame(
                f"trpx header at byte {pos} lacks prolix_bits, number_of_values or memory_size"
            ) from None
        if bits not in (8, 16, 32) or values < 0 or size < 0:
            raise InvalidFrame(
                f"trpx header at byte {pos} gives {bits} bits per value; expected 8, 16 or 32"
            )
        total += values * (bits // 8)
        pos += match.end() + size
    if pos != len(data):
        raise InvalidFrame(f"trpx payload of {len(data)} bytes is cut off: its headers say {pos}")
    return total


_DECTRIS: list[Any] = []  # [dectris.compression or None], resolved on first use


def _dectris_compression() -> Any:
    if not _DECTRIS:
        try:
            from dectris import compression
        except ImportError:  # a dependency; without it only bslz4 and lz4-hdf5 decode
            compression = None
        _DECTRIS.append(compression)
    return _DECTRIS[0]


def decode_dectris(payload: bytes | memoryview, codec: str, itemsize: int) -> bytes:
    """Decode a detector codec (FRAMED) with ``dectris-compression``; errors name the codec."""
    algorithm = DECTRIS_ALGORITHMS[codec]
    module = _dectris_compression()
    if module is None:
        if codec == "bslz4":
            return decode_bslz4(payload, itemsize).tobytes()
        if codec == "lz4-hdf5":
            return decode_lz4_hdf5(payload).tobytes()
        raise InvalidFrame(
            f"{codec} payload cannot be decoded without the dectris-compression package"
            " (pip install dectris-compression)"
        )
    try:
        if algorithm == "lz4":
            return bytes(module.decompress(payload, algorithm))
        # bslz4, bszstd: the bitshuffle element size; trpx: 0 takes the stream's
        return bytes(module.decompress(payload, algorithm, elem_size=itemsize))
    except (RuntimeError, ValueError) as err:
        failure = err
    # dectris-compression says only "error decompressing stream": our own decoders
    # of the two LZ4 framings name the block that is wrong
    if codec == "bslz4":
        decode_bslz4(payload, itemsize)
    elif codec == "lz4-hdf5":
        decode_lz4_hdf5(payload)
    raise InvalidFrame(f"{codec} payload cannot be decoded: {failure}") from failure


@dataclass(frozen=True, slots=True)
class Encoded:
    """An array compressed by its source, to be spooled and stored as it is.

    ``Producer.send(stream, Encoded(payload, "<u2", (512, 1024), "bslz4"), meta)``
    spools ``payload`` unchanged with that codec; consumers get the decoded array.
    """

    payload: bytes | memoryview
    dtype: str
    shape: tuple[int, ...]
    compression: str

    def check(self) -> memoryview:
        """Check the codec's header against dtype and shape; return the payload."""
        if self.compression not in COMPRESSIONS or self.compression == "none":
            raise InvalidFrame(
                f"compression {self.compression!r} of an encoded frame is not a codec;"
                f" expected one of {COMPRESSIONS[1:]}"
            )
        itemsize = check_dtype(self.dtype).itemsize
        expected = itemsize * math.prod(self.shape)
        payload = memoryview(self.payload).cast("B")
        size = decompressed_size(payload, self.compression)
        if size != expected:
            raise InvalidFrame(
                f"{self.compression} payload decodes to {size} bytes; shape {tuple(self.shape)}"
                f" and dtype {self.dtype} need {expected}"
            )
        if self.compression in BITSHUFFLED:
            _bslz4_block_elems(payload, itemsize, self.compression)
        return payload


# --------------------------------------------------------------------------
# Decoding


def decompress(payload: bytes | memoryview, record: Record) -> bytes | memoryview:
    """Decode a stored payload back to its raw bytes, checking the expected size."""
    codec = record.compression
    if codec == "none" or record.payload == Payload.NONE:
        return bytes(payload)
    expected = None
    itemsize = 1
    if record.payload == Payload.ARRAY:
        itemsize = check_dtype(record.dtype).itemsize
        expected = itemsize * math.prod(record.shape)
    size = decompressed_size(payload, codec)
    if expected is not None and size != expected:
        raise InvalidFrame(
            f"{codec} payload decodes to {size} bytes; shape {tuple(record.shape)} and dtype"
            f" {record.dtype} need {expected}"
        )
    if codec in _CODECS:
        try:
            return blosc2.decompress2(payload)  # type: ignore[no-any-return]
        except Exception as err:
            raise InvalidFrame(f"{codec} payload cannot be decoded: {err}") from err
    if codec in BITSHUFFLED:
        if record.payload != Payload.ARRAY:
            raise InvalidFrame(f"a {codec} payload needs an array's item size; got opaque bytes")
        _bslz4_block_elems(memoryview(payload).cast("B"), itemsize, codec)
    elif codec == "trpx" and record.payload != Payload.ARRAY:
        itemsize = 0  # the element size the stream gives
    out = decode_dectris(payload, codec, itemsize)
    if len(out) != size:
        raise InvalidFrame(f"{codec} payload decodes to {len(out)} bytes; its header says {size}")
    return out


def _lz4_block(data: memoryview, size: int, what: str) -> bytes:
    try:
        out = lz4.block.decompress(data, uncompressed_size=size)
    except lz4.block.LZ4BlockError as err:
        raise InvalidFrame(f"{what} is not a valid LZ4 block: {err}") from err
    if len(out) != size:
        raise InvalidFrame(f"{what} decodes to {len(out)} bytes; expected {size}")
    return out  # type: ignore[no-any-return]


def _read_block(payload: memoryview, pos: int, what: str) -> tuple[memoryview, int]:
    if pos + 4 > len(payload):
        raise InvalidFrame(f"{what} is cut off: no block size at byte {pos}")
    (csize,) = _BLOCK_SIZE.unpack_from(payload, pos)
    end = pos + 4 + csize
    if end > len(payload):
        raise InvalidFrame(
            f"{what} is cut off: a block of {csize} bytes at byte {pos} runs past the"
            f" end of the {len(payload)}-byte payload"
        )
    return payload[pos + 4 : end], end


def decode_lz4_hdf5(payload: bytes | memoryview) -> np.ndarray:
    """Decode the HDF5 LZ4 filter framing (id 32004) to a flat uint8 array."""
    payload = memoryview(payload).cast("B")
    total = decompressed_size(payload, "lz4-hdf5")
    (block,) = _BLOCK_SIZE.unpack_from(payload, 8)
    if total and not block:
        raise InvalidFrame("lz4-hdf5 payload has a block size of 0")
    out = np.empty(total, np.uint8)
    pos, done = _FRAME_HEADER.size, 0
    while done < total:
        this = min(block, total - done)
        data, pos = _read_block(payload, pos, "lz4-hdf5 payload")
        if len(data) == this:  # stored raw: LZ4 would not have made it smaller
            out[done : done + this] = np.frombuffer(data, np.uint8)
        else:
            chunk = _lz4_block(data, this, f"lz4-hdf5 block at byte {done}")
            out[done : done + this] = np.frombuffer(chunk, np.uint8)
        done += this
    return out


def _bslz4_block_elems(payload: memoryview, itemsize: int, codec: str = "bslz4") -> int:
    block_bytes: int = _BLOCK_SIZE.unpack_from(payload, 8)[0]
    elems, rest = divmod(block_bytes, itemsize)
    if rest or elems <= 0 or elems % _BSHUF_MULT:
        raise InvalidFrame(
            f"{codec} block size of {block_bytes} bytes does not hold a positive multiple of"
            f" {_BSHUF_MULT} elements of {itemsize} bytes"
        )
    return elems


_BIT_TRANSPOSE_STEPS = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0xF0F0F0F0))
_FAST: list[Callable[..., np.ndarray] | None] = []  # [bitunshuffle or None], on first use


def _fast_bitunshuffle() -> Callable[..., np.ndarray] | None:
    if not _FAST:
        try:
            from bitshuffle import bitunshuffle as fast  # optional, imports in ~0.2 s
        except ImportError:
            fast = None
        _FAST.append(fast)
    return _FAST[0]


def _transpose_bits_8x8(x: np.ndarray) -> np.ndarray:
    """Transpose each uint64 as an 8x8 bit matrix (byte k, bit m -> byte m, bit k), in place."""
    for shift, mask in _BIT_TRANSPOSE_STEPS:
        t = (x ^ (x >> np.uint64(shift))) & np.uint64(mask)
        x ^= t ^ (t << np.uint64(shift))
    return x


def bitunshuffle(blocks: np.ndarray, itemsize: int) -> np.ndarray:
    """Undo bitshuffle's bit transpose on rows of equal-sized blocks (uint8, 2-D).

    A shuffled block of n elements holds 8 * itemsize rows of n / 8 bytes: row
    ``8 * j + k`` packs bit k of byte j of every element, element i in bit i % 8.
    Gathering, for each 8 elements and byte j, the 8 row bytes into one 64-bit
    word turns the inverse into an 8x8 bit transpose of that word. When the
    optional ``bitshuffle`` package is installed its SIMD transpose does the same
    about ten times faster (LZ4 decoding stays with the bounds-checked ``lz4``).
    """
    count, nbytes = blocks.shape
    fast = _fast_bitunshuffle() if itemsize in (1, 2, 4, 8) else None
    if fast is not None:
        elems = np.ascontiguousarray(blocks).view(f"u{itemsize}").reshape(-1)
        out = fast(elems, nbytes // itemsize)
        return out.view(np.uint8).reshape(count, nbytes)
    groups = nbytes // itemsize // 8
    blocked: np.ndarray = blocks.reshape(count, itemsize, 8, groups).transpose(0, 3, 1, 2)
    words = np.ascontiguousarray(blocked).view("<u8").reshape(count, groups, itemsize)
    bits: np.ndarray = _transpose_bits_8x8(words).view(np.uint8)
    unshuffled = bits.reshape(count, groups, itemsize, 8)
    return np.ascontiguousarray(unshuffled.transpose(0, 1, 3, 2)).reshape(count, nbytes)


def decode_bslz4(payload: bytes | memoryview, itemsize: int) -> np.ndarray:
    """Decode the HDF5 bitshuffle filter framing (id 32008, LZ4) to a flat uint8 array."""
    payload = memoryview(payload).cast("B")
    total = decompressed_size(payload, "bslz4")
    if total % itemsize:
        raise InvalidFrame(f"bslz4 payload of {total} bytes is not a whole number of {itemsize}")
    block_elems = _bslz4_block_elems(payload, itemsize)
    elems = total // itemsize
    block_bytes = block_elems * itemsize
    full, rest = divmod(elems, block_elems)
    last_elems = rest - rest % _BSHUF_MULT
    out = np.empty(total, np.uint8)
    pos = _FRAME_HEADER.size
    batch = max(1, _UNSHUFFLE_BATCH_BYTES // block_bytes)
    staging = np.empty((min(batch, full), block_bytes), np.uint8)
    for first in range(0, full, batch):
        count = min(batch, full - first)
        for i in range(count):
            data, pos = _read_block(payload, pos, "bslz4 payload")
            what = f"bslz4 block {first + i}"
            staging[i] = np.frombuffer(_lz4_block(data, block_bytes, what), np.uint8)
        start = first * block_bytes
        out[start : start + count * block_bytes] = bitunshuffle(staging[:count], itemsize).ravel()
    done = full * block_bytes
    if last_elems:
        size = last_elems * itemsize
        data, pos = _read_block(payload, pos, "bslz4 payload")
        chunk = np.frombuffer(_lz4_block(data, size, "last bslz4 block"), np.uint8)
        out[done : done + size] = bitunshuffle(chunk.reshape(1, size), itemsize).ravel()
        done += size
    tail = total - done  # fewer than 8 elements, stored as they are
    if len(payload) - pos != tail:
        raise InvalidFrame(
            f"bslz4 payload has {len(payload) - pos} bytes after its last block; expected"
            f" the {tail} bytes of the last {tail // itemsize} elements"
        )
    out[done:] = np.frombuffer(payload[pos:], np.uint8)
    return out
