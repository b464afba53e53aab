"""``dectris1:`` a PULL client of the DECTRIS SIMPLON Stream V1 interface (``format: legacy``).

``dectris1:tcp://eiger-dcu:9999?stream=p11/eiger&channel=threshold_1&tables=1``

Stream V1 is the SIMPLON default and the only stream of EIGER (1) detectors:
multipart ZeroMQ messages of JSON parts and binary blobs, told apart by the
``htype`` of the first part (docs/sources.md names the public sources):

- series header: ``{"htype": "dheader-1.0", "series": N, "header_detail":
  "none"|"basic"|"all"}``; with ``basic`` or ``all`` a second part, the detector
  configuration as JSON; with ``all`` three (header, blob) pairs: flatfield
  (``dflatfield-1.0``, float32), pixel mask (``dpixelmask-1.0``, uint32) and
  count-rate table (``dcountrate_table-1.0``, float32), each header giving
  ``shape`` as ``[x, y]`` (width first) and ``type``; then, when configured, the
  ``header_appendix`` as a last part.
- image: ``{"htype": "dimage-1.0", "series", "frame", "hash"}``,
  ``{"htype": "dimage_d-1.0", "shape": [x, y], "type", "encoding", "size"}``,
  the data blob, ``{"htype": "dconfig-1.0", "start_time", "stop_time",
  "real_time"}`` (nanoseconds) and, when configured, the ``image_appendix``.
  ``encoding`` is ``[bs<BITS>][[-]lz4][<|>]``: ``<``/``>`` raw little/big
  endian, ``lz4<`` one LZ4 block without any header, ``bs8-lz4<``,
  ``bs16-lz4<``, ``bs32-lz4<`` bitshuffle + LZ4 in the HDF5 bitshuffle framing.
- end: ``{"htype": "dseries_end-1.0", "series": N}``.

Stored like Stream V2 (``dectris:``): images in ``STREAM/CHANNEL`` (V1 has one
channel; ``channel=`` names it, default ``threshold_1`` as Stream V2 names the
first threshold), the header and the end as metadata-only messages in that
stream, the tables as array messages in ``STREAM/tables``, the same checkpoint
and ``restart`` message. Image blobs are stored as received: ``bs*-lz4`` as
codec ``bslz4`` byte for byte, ``lz4<`` as codec ``lz4-hdf5`` (the LZ4 block
unchanged behind the 16 bytes of that framing: a header and one block size),
raw blobs as arrays.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from hidra_ng.errors import ConfigError, HidraError, StreamV1Error
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources._common import Item, Params, fit_meta, jsonable
from hidra_ng.sender.sources.dectris import DectrisSource, SeriesState
from hidra_ng.wire.compression import Encoded, decode_dectris

USAGE = "dectris1:tcp://HOST:9999?stream=NAME&channel=threshold_1&tables=0|1"
HEADER, IMAGE, END = "dheader-1.0", "dimage-1.0", "dseries_end-1.0"
#: Stream V1 table headers -> the Stream V2 names the tables are stored under
TABLES = {
    "dflatfield-1.0": "flatfield",
    "dpixelmask-1.0": "pixel_mask",
    "dcountrate_table-1.0": "countrate_correction_lookup_table",
}
TYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64")
_ENCODING = re.compile(r"^(?:bs(8|16|32|64)-?)?(lz4)?([<>])$")
_LZ4_HDF5 = struct.Struct(">QII")  # total bytes, block bytes, size of the one block


def _json(part: zmq.Frame | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(_blob(part)))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StreamV1Error(f"{what} is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise StreamV1Error(f"{what} is a JSON {type(value).__name__}; expected an object")
    return value


def _blob(part: zmq.Frame | bytes) -> bytes | memoryview:
    """A part's bytes: a zmq.Frame's buffer, or bytes as they are."""
    if isinstance(part, bytes):
        return part
    blob: bytes | memoryview = part.buffer
    return blob


def array_of(header: dict[str, Any], what: str, limit: int) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and numpy shape (``[x, y]`` reversed) of a V1 ``shape``/``type`` header."""
    kind, shape = header.get("type"), header.get("shape")
    if kind not in TYPES:
        raise StreamV1Error(f"{what} type {kind!r} is not one of {', '.join(TYPES)}")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise StreamV1Error(f"{what} shape {shape!r} is not [x, y] of integers >= 0")
    dtype = np.dtype(kind)
    numpy_shape = tuple(reversed(shape))
    nbytes = dtype.itemsize * int(np.prod(numpy_shape, dtype=np.int64))
    if nbytes > limit:
        raise StreamV1Error(
            f"{what} of shape {shape} and type {kind} is {nbytes} bytes; max {limit}"
        )
    return dtype, numpy_shape


def image_data(
    dimage_d: dict[str, Any], blob: bytes | memoryview, limit: int
) -> np.ndarray | Encoded:
    """The frame data of an image blob, as received where a codec stores it."""
    dtype, shape = array_of(dimage_d, "image", limit)
    encoding = dimage_d.get("encoding")
    match = _ENCODING.match(encoding) if isinstance(encoding, str) else None
    if match is None:
        raise StreamV1Error(
            f"image encoding {encoding!r} is unknown; expected '<', 'lz4<' or 'bs8-lz4<',"
            " 'bs16-lz4<', 'bs32-lz4<' (or '>' for big endian)"
        )
    bits, lz4, order = match.groups()
    dtype = dtype.newbyteorder("<" if order == "<" else ">")
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    size = dimage_d.get("size")
    if isinstance(size, int) and size != len(blob):
        raise StreamV1Error(f"image blob has {len(blob)} bytes; its header says size {size}")
    if bits and not lz4:
        raise StreamV1Error(f"image encoding {encoding!r} shuffles without lz4; not defined")
    try:
        if bits:
            encoded = Encoded(blob, dtype.str, shape, "bslz4")
            if int(bits) != dtype.itemsize * 8:  # shuffled with another element size
                raw = decode_dectris(blob, "bslz4", int(bits) // 8)
                if len(raw) != nbytes:
                    raise StreamV1Error(f"image decodes to {len(raw)} bytes; expected {nbytes}")
                return np.frombuffer(raw, dtype).reshape(shape)
            encoded.check()
            return encoded
        if lz4:
            if len(blob) == nbytes:
                # the LZ4 framing would take a block of this size as stored raw
                raw = bytes(_lz4_block(blob, nbytes))
                return np.frombuffer(raw, dtype).reshape(shape)
            framed = _LZ4_HDF5.pack(nbytes, nbytes, len(blob)) + bytes(blob)
            encoded = Encoded(framed, dtype.str, shape, "lz4-hdf5")
            encoded.check()
            return encoded
    except StreamV1Error:
        raise  # says what is wrong already
    except HidraError as err:
        raise StreamV1Error(f"image ({encoding}): {err}") from err
    if len(blob) != nbytes:
        raise StreamV1Error(
            f"raw image of shape {list(shape)} and type {dtype} needs {nbytes} bytes;"
            f" got {len(blob)}"
        )
    return np.frombuffer(blob, dtype).reshape(shape)


def _lz4_block(blob: bytes | memoryview, nbytes: int) -> bytes:
    import lz4.block

    try:
        return lz4.block.decompress(blob, uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as err:
        raise StreamV1Error(f"image (lz4<) is not an LZ4 block: {err}") from err


def appendix(part: zmq.Frame | bytes) -> Any:
    """A header or image appendix: JSON when it is JSON, else text (or base64 bytes)."""
    raw = bytes(_blob(part))
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return jsonable(raw)


@dataclass
class Dectris1Source(DectrisSource):
    """Stream V1 over PULL; stores its series like the Stream V2 source."""

    channel: str = "threshold_1"

    KIND = "dectris1"
    ERRORS = (StreamV1Error, HidraError)

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> Dectris1Source:
        p = Params(uri, params, {"stream", "tables", "channel"}, USAGE)
        if not target.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"source {uri!r}: endpoint {target!r} is not valid; expected {USAGE}")
        channel = p.text("channel", "threshold_1")
        if not channel:
            raise ConfigError(f"source {uri!r}: channel='' is not valid; expected {USAGE}")
        return cls(
            name=uri,
            endpoint=target,
            stream=p.stream("dectris"),
            tables=p.flag("tables", True),
            channel=channel,
        )

    def translate_parts(self, frames: list[zmq.Frame], producer: Producer) -> list[Item]:
        limit, meta_limit = producer.max_message_bytes, producer.max_meta_bytes
        first = _json(frames[0], "first part")
        htype = first.get("htype")
        if htype == IMAGE:
            return self._image(first, frames, limit, meta_limit)
        if htype == HEADER:
            return self._header(first, frames, limit, meta_limit)
        if htype == END:
            if len(frames) != 1:
                raise StreamV1Error(f"series end has {len(frames)} parts; expected 1")
            meta = {"type": "end", "series_id": first.get("series"), "format": "stream_v1"}
            items = self.series_meta(meta, meta_limit)
            self.state.open = False
            return items
        raise StreamV1Error(
            f"htype {htype!r} is unknown; expected {HEADER}, {IMAGE} or {END} (Stream V1)"
        )

    def _series_streams(self) -> list[str]:
        return [self.channel_stream(self.channel)]

    def _header(
        self, first: dict[str, Any], frames: list[zmq.Frame], limit: int, meta_limit: int
    ) -> list[Item]:
        detail = first.get("header_detail")
        if detail not in ("none", "basic", "all"):
            raise StreamV1Error(f"header_detail {detail!r} is not none, basic or all")
        series = first.get("series")
        meta: dict[str, Any] = {
            "type": "start",
            "series_id": series,
            "header_detail": detail,
            "format": "stream_v1",
            "channels": [self.channel],
        }
        rest = list(frames[1:])
        if detail in ("basic", "all"):
            if not rest:
                raise StreamV1Error(f"header ({detail}) has no detector configuration part")
            config = _json(rest.pop(0), "detector configuration part")
            meta["config"] = jsonable(config)
        no_tables: tuple[list[Item], list[dict[str, Any]], list[str]] = ([], [], [])
        items, listed, dropped = self._tables(rest, series, limit) if detail == "all" else no_tables
        if len(rest) > 1:
            raise StreamV1Error(
                f"header ({detail}) has {len(rest)} parts after its tables and configuration;"
                " expected at most 1 (the appendix)"
            )
        if rest:
            meta["user_data"] = appendix(rest[0])
        if listed:
            meta["tables"], meta["tables_stream"] = listed, self.tables_stream
        if dropped:
            meta["dropped_tables"] = dropped
        self.state = SeriesState(
            None, series if isinstance(series, int) else None, [self.channel], None, True
        )
        return self.series_meta(meta, meta_limit) + items

    def _tables(
        self, rest: list[zmq.Frame], series: Any, limit: int
    ) -> tuple[list[Item], list[dict[str, Any]], list[str]]:
        """The (header, blob) pairs of the tables at the front of ``rest`` (taken off it):
        their messages, their listing for the start message, the names dropped."""
        items: list[Item] = []
        listed: list[dict[str, Any]] = []
        dropped: list[str] = []
        for _ in TABLES:
            if len(rest) < 2:
                raise StreamV1Error("header (all) lacks a table: expected 3 (header, blob) pairs")
            head = _json(rest.pop(0), "table header")
            blob = _blob(rest.pop(0))
            name = TABLES.get(head.get("htype"))  # type: ignore[arg-type]
            if name is None:
                raise StreamV1Error(
                    f"table htype {head.get('htype')!r} is not one of {', '.join(TABLES)}"
                )
            dtype, shape = array_of(head, name, limit)
            nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            if len(blob) != nbytes:
                raise StreamV1Error(
                    f"{name} of shape {head['shape']} and type {head['type']} needs"
                    f" {nbytes} bytes; got {len(blob)}"
                )
            if not self.tables:
                dropped.append(name)
                continue
            entry = {"table": name, "channel": self.channel}
            table_meta = {"type": "table", "message": "start", **entry, "series_id": series}
            items.append(
                (self.tables_stream, np.frombuffer(blob, dtype).reshape(shape), table_meta)
            )
            listed.append({**entry, "dtype": dtype.str, "shape": list(shape)})
        return items, listed, dropped

    def _image(
        self, first: dict[str, Any], frames: list[zmq.Frame], limit: int, meta_limit: int
    ) -> list[Item]:
        if len(frames) not in (4, 5):
            raise StreamV1Error(
                f"image has {len(frames)} parts; expected 4 (dimage, dimage_d, blob, dconfig)"
                " or 5 (with the appendix)"
            )
        dimage_d = _json(frames[1], "image part 2")
        if dimage_d.get("htype") != "dimage_d-1.0":
            raise StreamV1Error(
                f"image part 2 htype {dimage_d.get('htype')!r}; expected dimage_d-1.0"
            )
        dconfig = _json(frames[3], "image part 4")
        if dconfig.get("htype") != "dconfig-1.0":
            raise StreamV1Error(
                f"image part 4 htype {dconfig.get('htype')!r}; expected dconfig-1.0"
            )
        frame_id, series = first.get("frame"), first.get("series")
        data = image_data(dimage_d, _blob(frames[2]), limit)
        meta: dict[str, Any] = {
            "type": "image",
            "image_id": frame_id,
            "series_id": series,
            "channel": self.channel,
            "hash": first.get("hash"),
            "encoding": dimage_d.get("encoding"),
            **{k: jsonable(dconfig.get(k)) for k in ("start_time", "stop_time", "real_time")},
            "time_unit": "ns",
        }
        if len(frames) == 5:
            meta["user_data"] = appendix(frames[4])
        if self.state.series_id != series or not self.state.open:
            self.state = SeriesState(
                None, series if isinstance(series, int) else None, [self.channel], None, True
            )
        self.state.last_image_id = frame_id if isinstance(frame_id, int) else None
        self.images += 1
        return [(self.channel_stream(self.channel), data, fit_meta(meta, meta_limit))]
