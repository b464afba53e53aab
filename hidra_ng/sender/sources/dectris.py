"""``dectris:`` a PULL client of the DECTRIS SIMPLON Stream V2 interface.

``dectris:tcp://eiger-dcu:31001?stream=p11/eiger&tables=1``

Stream V2 sends one CBOR map per ZeroMQ message, ``type`` = ``start`` |
``image`` | ``end``, as real detectors send it: self-described (tag 55799 before
the map, which cbor2 decodes to immutable maps and tuples; both are accepted,
and tag 55799 anywhere else too). Each channel (threshold) of a series goes to
its own stream ``STREAM/CHANNEL`` (e.g. ``p11/eiger/threshold_1``), so every
stream holds frames of one shape and dtype and its indices follow the image ids:

- ``start``: a metadata-only message in every channel stream, meta = the start
  fields (``type: "start"``, ``series_id``, ``series_unique_id``, ``channels``,
  geometry, ``user_data``, ...). Arrays (``header_detail: all``: ``flatfield``,
  ``pixel_mask``, ``countrate_correction_lookup_table``) cannot go in a meta (64
  KiB): each is an array message of the stream ``STREAM/tables`` with meta
  ``{"type": "table", "message": "start", "table": NAME, "channel": CHANNEL or
  null, series ids}``, and the start meta lists them under ``tables``
  (``tables=0``: not stored; the start meta names them under ``dropped_tables``).
- ``image``: one array frame per channel, meta ``type: "image"``, ``image_id``,
  ``series_id``, ``series_unique_id``, ``channel``, ``real_time``,
  ``start_time``, ``stop_time`` (rationals as ``[numerator, denominator]``),
  ``series_date`` (ISO 8601), ``user_data`` and any further field. Images
  compressed by the detector (tag 56500: ``bslz4``, ``lz4``, ``bszstd``,
  ``trpx``) are spooled and stored as received (codec ``bslz4``, ``lz4-hdf5``,
  ``bszstd``, ``trpx``) and decoded when read.
- ``end``: a metadata-only message ``{"type": "end", ...the end fields}`` in
  every channel stream. Streams are not finished: the next series follows.
- any other ``type`` (PSI Jungfraujoch sends ``calibration`` and ``metadata``):
  a metadata-only message ``{"type": TYPE, ...}`` in every channel stream of the
  series (or ``STREAM`` before any start), its arrays in ``STREAM/tables`` as for
  start.

CBOR values that JSON lacks become JSON: dates as ISO strings, byte strings as
``{"base64": ...}``, unknown tags as ``{"cbor_tag": N, "value": ...}``, arrays
in image fields other than ``data`` as ``{"dtype", "shape", "values"}`` when
small (at most 4 KiB). Meta over the limit (64 KiB) loses ``user_data`` first;
``dropped_meta`` says what.

Restart: every message is spooled durably before the next is taken, together
with a checkpoint of the series in progress. Messages the detector has not yet
delivered wait in its buffers and arrive after the restart; what a killed
daemon had received but not spooled (at most the few messages of the socket's
receive queue) is lost, as with any PUSH/PULL consumer. After a restart inside
a series, every channel stream of that series gets a metadata-only message
``{"type": "restart", "series_unique_id", "series_id", "last_image_id"}``:
images after ``last_image_id`` that are not in the stream were lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cbor2
import msgspec
import numpy as np
import zmq

from hidra_ng.errors import ConfigError, HidraError, StreamV2Error
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources._common import (
    Item,
    Params,
    Refusals,
    checkpoint_key,
    fit_meta,
    jsonable,
    receive_batch,
    safe_segment,
    spool_items,
)
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import BITSHUFFLED, Encoded, decode_dectris, decompressed_size

log = logging.getLogger(__name__)

#: the arrays of a start message with ``header_detail: all`` (stored in STREAM/tables)
TABLES = ("flatfield", "pixel_mask", "countrate_correction_lookup_table")
RECEIVE_HWM = 8  # messages queued in this process; the detector buffers the rest
BATCH_MESSAGES = 64
BATCH_BYTES = 64 << 20
POLL_SECONDS = 0.2
USAGE = "dectris:tcp://HOST:31001?stream=NAME&tables=0|1"
#: tag 56500 algorithm -> our codec (hidra_ng.wire.compression); all decoded by dectris-compression
ALGORITHMS = {"bslz4": "bslz4", "lz4": "lz4-hdf5", "bszstd": "bszstd", "trpx": "trpx"}
SELF_DESCRIBED = 55799  # RFC 8949 3.4.6: marks CBOR, means nothing else
INLINE_ARRAY_BYTES = 4096  # arrays in image fields up to this size go into the meta


# --------------------------------------------------------------------------
# CBOR: RFC 8746 typed and multi-dimensional arrays, DECTRIS compression tag


@dataclass(frozen=True, slots=True)
class Compressed:
    """Tag 56500: a byte string compressed with ``algorithm``."""

    algorithm: str
    elem_size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TypedArray:
    """RFC 8746 typed array (tags 64-87): raw or compressed bytes of one dtype."""

    dtype: np.dtype
    data: bytes | Compressed


@dataclass(frozen=True, slots=True)
class MultiDimArray:
    """RFC 8746 tag 40: row-major dimensions and a typed array."""

    shape: tuple[int, ...]
    array: TypedArray


def typed_array_dtype(tag: int) -> np.dtype:
    """The numpy dtype of an RFC 8746 typed-array tag (64-87)."""
    bits = tag - 64
    is_float, signed, little, size_code = bits >> 4 & 1, bits >> 3 & 1, bits >> 2 & 1, bits & 3
    if is_float:
        if signed or size_code == 3:
            raise StreamV2Error(f"typed array tag {tag} (a 128-bit float) is not supported")
        return np.dtype(("<" if little else ">") + f"f{2 << size_code}")
    if size_code == 0:
        if signed and little:
            raise StreamV2Error(f"typed array tag {tag} is reserved by RFC 8746")
        return np.dtype("i1" if signed else "u1")  # tag 68 is uint8 clamped: same storage
    return np.dtype(("<" if little else ">") + ("i" if signed else "u") + str(1 << size_code))


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
    number, value = tag.tag, tag.value
    if number == 56500:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not isinstance(value[0], str)
            or not isinstance(value[1], int)
            or not isinstance(value[2], bytes)
        ):
            raise StreamV2Error("tag 56500 does not hold [algorithm, elem_size, bytes]")
        return Compressed(value[0], value[1], value[2])
    if 64 <= number <= 87:
        if not isinstance(value, (bytes, Compressed)):
            raise StreamV2Error(f"typed array tag {number} does not hold a byte string")
        return TypedArray(typed_array_dtype(number), value)
    if number == 40:
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not isinstance(value[0], (list, tuple))
            or not isinstance(value[1], TypedArray)
        ):
            raise StreamV2Error("tag 40 does not hold [dimensions, typed array]")
        dims = value[0]
        if not 1 <= len(dims) <= proto.MAX_NDIM or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in dims
        ):
            raise StreamV2Error(f"tag 40 dimensions {list(dims)} are not 1 to 32 integers >= 0")
        return MultiDimArray(tuple(dims), value[1])
    if number == 1040:
        raise StreamV2Error("column-major arrays (tag 1040) are not supported")
    return tag


def thaw(value: Any) -> Any:
    """cbor2's immutable maps and tuples (inside tag 55799) as dicts and lists."""
    if isinstance(value, (dict, Mapping)):
        return {k: thaw(v) for k, v in value.items()}  # keys stay hashable
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        if value.tag == SELF_DESCRIBED:
            return thaw(value.value)
        return cbor2.CBORTag(value.tag, thaw(value.value))
    return value


def decode_message(raw: bytes | memoryview) -> dict[str, Any]:
    """One Stream V2 message as a dict; arrays become :class:`MultiDimArray`."""
    try:
        msg = cbor2.loads(raw, tag_hook=_tag_hook, max_depth=64)
    except StreamV2Error:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, StreamV2Error) else err
        raise StreamV2Error(f"not a CBOR message: {cause}") from err
    msg = thaw(msg)
    if not isinstance(msg, dict):
        raise StreamV2Error(f"message is a CBOR {type(msg).__name__}; expected a map")
    kind = msg.get("type")
    if not isinstance(kind, str) or not kind:
        raise StreamV2Error(f"message type {kind!r} is not a text; expected start, image or end")
    return msg


def array_nbytes(array: MultiDimArray) -> int:
    return array.array.dtype.itemsize * int(np.prod(array.shape, dtype=np.int64))


def array_data(array: MultiDimArray, limit: int) -> np.ndarray | Encoded:
    """The frame data of a Stream V2 array: an ndarray, or Encoded as received."""
    typed = array.array
    dtype, shape = typed.dtype, array.shape
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if nbytes > limit:
        raise StreamV2Error(
            f"array of shape {shape} and dtype {dtype} is {nbytes} bytes; max {limit}"
        )
    data = typed.data
    if not isinstance(data, Compressed):
        if len(data) != nbytes:
            raise StreamV2Error(
                f"array of shape {shape} and dtype {dtype} needs {nbytes} bytes; got {len(data)}"
            )
        return np.frombuffer(data, dtype).reshape(shape)
    codec = ALGORITHMS.get(data.algorithm)
    if codec is None:
        raise StreamV2Error(
            f"compression {data.algorithm!r} (tag 56500) is unknown; expected one of"
            f" {', '.join(ALGORITHMS)}"
        )
    if codec in BITSHUFFLED and data.elem_size != dtype.itemsize:
        # another element size than the pixels': decode here, the store knows one itemsize
        try:
            raw = decode_dectris(data.data, codec, data.elem_size)
        except HidraError as err:
            raise StreamV2Error(str(err)) from err
        if len(raw) != nbytes:
            raise StreamV2Error(f"{codec} data decodes to {len(raw)} bytes; expected {nbytes}")
        return np.frombuffer(raw, dtype).reshape(shape)
    encoded = Encoded(data.data, dtype.str, shape, codec)
    try:
        encoded.check()
    except HidraError as err:
        raise StreamV2Error(str(err)) from err
    return encoded


def as_multidim(value: Any) -> MultiDimArray | None:
    """A tag-40 array as it is, a typed array (1-D, length from its bytes) as one; else None."""
    if isinstance(value, MultiDimArray):
        return value
    if not isinstance(value, TypedArray):
        return None
    data = value.data
    if isinstance(data, Compressed):
        codec = ALGORITHMS.get(data.algorithm)
        if codec is None:
            raise StreamV2Error(f"compression {data.algorithm!r} (tag 56500) is unknown")
        try:
            nbytes = decompressed_size(data.data, codec)
        except HidraError as err:
            raise StreamV2Error(str(err)) from err
    else:
        nbytes = len(data)
    return MultiDimArray((nbytes // value.dtype.itemsize,), value)


def inline_array(array: MultiDimArray, limit: int) -> dict[str, Any]:
    """A small array as meta: ``{"dtype", "shape", "values"}``."""
    data = array_data(array, limit)
    if isinstance(data, Encoded):
        raw = decode_dectris(data.payload, data.compression, np.dtype(data.dtype).itemsize)
        data = np.frombuffer(raw, data.dtype).reshape(data.shape)
    return {"dtype": data.dtype.str, "shape": list(data.shape), "values": data.tolist()}


# --------------------------------------------------------------------------
# The source


@dataclass
class SeriesState:
    """The series in progress, kept in the checkpoint."""

    series_unique_id: str | None = None
    series_id: int | None = None
    channels: list[str] = field(default_factory=list)
    last_image_id: int | None = None
    open: bool = False


_state_decoder = msgspec.json.Decoder(SeriesState)


@dataclass
class DectrisSource:
    """Stream V2 over PULL; the series logic is shared with Stream V1 (``dectris1``)."""

    name: str
    endpoint: str
    stream: str = "dectris"
    tables: bool = True
    refusals: Refusals = field(init=False)

    KIND: ClassVar[str] = "dectris"  # the checkpoint key's prefix
    ERRORS: ClassVar[tuple[type[Exception], ...]] = (StreamV2Error, HidraError)

    def __post_init__(self) -> None:
        self.refusals = Refusals(self.name)
        self.state = SeriesState()
        self.images = 0

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> DectrisSource:
        p = Params(uri, params, {"stream", "tables"}, USAGE)
        if not target.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"source {uri!r}: endpoint {target!r} is not valid; expected {USAGE}")
        return cls(
            name=uri, endpoint=target, stream=p.stream("dectris"), tables=p.flag("tables", True)
        )

    @property
    def checkpoint_name(self) -> str:
        return checkpoint_key(self.KIND, self.endpoint, self.stream)

    @property
    def tables_stream(self) -> str:
        return proto.check_stream_name(f"{self.stream}/tables")

    def channel_stream(self, channel: str) -> str:
        return proto.check_stream_name(f"{self.stream}/{safe_segment(channel)}")

    def _series_streams(self) -> list[str]:
        return [self.channel_stream(c) for c in self.state.channels] or [self.stream]

    # ------------------------------------------------------------------ run

    def run(self, producer: Producer, stop: threading.Event) -> None:
        saved = producer.checkpoint(self.checkpoint_name)
        self.state = _state_decoder.decode(saved) if saved else SeriesState()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        try:
            try:
                sock.connect(self.endpoint)
            except zmq.ZMQError as err:
                raise ConfigError(f"source {self.name!r}: cannot connect: {err}") from err
            log.info("source %s: pulling from %s", self.name, self.endpoint)
            if self.state.open:
                self._mark_restart(producer, stop)
            while not stop.is_set():
                batch = receive_batch(sock, POLL_SECONDS, BATCH_MESSAGES, BATCH_BYTES)
                if batch:
                    self.handle(batch, producer, stop)
            # what already sits in this process is spooled, not dropped
            batch = receive_batch(sock, 0, RECEIVE_HWM * 4, 1 << 62)
            if batch:
                self.handle(batch, producer, stop)
        finally:
            sock.close(linger=0)
            ctx.term()

    def _mark_restart(self, producer: Producer, stop: threading.Event) -> None:
        s = self.state
        meta = {
            "type": "restart",
            "series_unique_id": s.series_unique_id,
            "series_id": s.series_id,
            "last_image_id": s.last_image_id,
        }
        log.warning("source %s: restarted inside series %s", self.name, s.series_unique_id)
        items = [(stream, None, meta) for stream in self._series_streams()]
        spool_items(producer, items, stop, self.refusals, self._checkpoint())

    def _checkpoint(self) -> tuple[str, bytes]:
        return self.checkpoint_name, msgspec.json.encode(self.state)

    def handle(
        self, messages: list[list[zmq.Frame]], producer: Producer, stop: threading.Event
    ) -> bool:
        """Translate and spool a batch of messages; bad ones are refused and counted."""
        items: list[Item] = []
        for frames in messages:
            try:
                items += self.translate_parts(frames, producer)
            except self.ERRORS as err:
                self.refusals.refuse(type(err).__name__, str(err))
            except Exception as err:
                # a bug must cost one message, not the source and the batch with it
                log.exception("source %s: message could not be translated; refused", self.name)
                self.refusals.refuse("internal", f"{type(err).__name__}: {err}")
            else:
                self.refusals.accept()
        return spool_items(producer, items, stop, self.refusals, self._checkpoint())

    def translate_parts(self, frames: list[zmq.Frame], producer: Producer) -> list[Item]:
        """Items for one ZeroMQ message."""
        if len(frames) != 1:
            raise StreamV2Error(f"message has {len(frames)} parts; Stream V2 sends one")
        return self.translate(decode_message(frames[0].buffer), producer)

    def translate(self, msg: dict[str, Any], producer: Producer) -> list[Item]:
        """Items for one decoded message; updates the series state."""
        limit, meta_limit = producer.max_message_bytes, producer.max_meta_bytes
        kind = msg["type"]
        ids = {k: jsonable(msg.get(k)) for k in ("series_id", "series_unique_id")}
        if kind == "start":
            channels = msg.get("channels") or []
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                raise StreamV2Error(f"start channels {channels!r} are not a list of names")
            meta, tables = self.split_fields(msg, "start", ids, limit)
            self.state = SeriesState(
                ids["series_unique_id"], ids["series_id"], list(channels), None, True
            )
            return self.series_meta(meta, meta_limit) + tables
        if kind == "end":
            meta, tables = self.split_fields(msg, "end", ids, limit)
            items = self.series_meta(meta, meta_limit) + tables
            self.state.open = False
            return items
        if kind == "image":
            return self.image(msg, ids, limit, meta_limit)
        # another producer's extra message type (Jungfraujoch: calibration, metadata)
        meta, tables = self.split_fields(msg, kind, ids, limit)
        return self.series_meta(meta, meta_limit) + tables

    def series_meta(self, meta: dict[str, Any], meta_limit: int) -> list[Item]:
        """A metadata-only message in every channel stream of the series."""
        meta = fit_meta(meta, meta_limit)
        return [(s, None, meta) for s in self._series_streams()]

    def image(
        self, msg: dict[str, Any], ids: dict[str, Any], limit: int, meta_limit: int
    ) -> list[Item]:
        data = msg.get("data")
        if not isinstance(data, dict) or not data:
            raise StreamV2Error("image message has no data map of channel -> array")
        image_id = msg.get("image_id")
        meta, tables = self.split_fields(msg, "image", ids, limit, image_id=image_id)
        items: list[Item] = []
        for channel, array in data.items():
            if not isinstance(channel, str) or not isinstance(array, MultiDimArray):
                raise StreamV2Error(
                    f"image channel {channel!r} holds a {type(array).__name__}; expected a"
                    " multi-dimensional array (tag 40)"
                )
            frame = array_data(array, limit)
            frame_meta = fit_meta({**meta, "channel": channel}, meta_limit)
            items.append((self.channel_stream(channel), frame, frame_meta))
        for channel in data:
            if channel not in self.state.channels:
                self.state.channels.append(channel)
        if self.state.series_unique_id != ids["series_unique_id"]:
            self.state.series_unique_id = ids["series_unique_id"]
            self.state.series_id = ids["series_id"]
            self.state.open = True
        self.state.last_image_id = image_id if isinstance(image_id, int) else None
        self.images += 1
        return items + tables

    def split_fields(
        self,
        msg: dict[str, Any],
        kind: str,
        ids: dict[str, Any],
        limit: int,
        image_id: Any = None,
    ) -> tuple[dict[str, Any], list[Item]]:
        """A message's fields as meta, its arrays as table messages.

        A field holding an array, or a map of arrays (per channel), becomes one
        array message per array in ``STREAM/tables``; in an image message arrays
        of at most 4 KiB stay in the meta. Arrays deeper inside go into the meta
        when small, else as ``{"dtype", "shape", "omitted"}``.
        """
        meta: dict[str, Any] = {"type": kind}
        listed: list[dict[str, Any]] = []
        dropped: list[str] = []
        items: list[Item] = []
        for key, value in msg.items():
            if key in ("type", "data") and (key == "type" or kind == "image"):
                continue
            arrays = _arrays_of(value)
            if arrays is None:
                meta[key] = plain(value, limit)
                continue
            if kind == "image" and all(
                array_nbytes(a) <= INLINE_ARRAY_BYTES for a in arrays.values()
            ):
                meta[key] = plain(value, limit)
                continue
            for channel, array in arrays.items():
                what = key if channel is None else f"{key}/{channel}"
                if not self.tables:
                    dropped.append(what)
                    continue
                entry = {"table": key, "channel": channel}
                table_meta = {"type": "table", "message": kind, **entry, **ids}
                if kind == "image":
                    table_meta["image_id"] = jsonable(image_id)
                data = array_data(array, limit)
                items.append((self.tables_stream, data, table_meta))
                dtype = data.dtype if isinstance(data, Encoded) else data.dtype.str
                listed.append({**entry, "dtype": dtype, "shape": list(array.shape)})
        if listed:
            meta["tables"] = listed
            meta["tables_stream"] = self.tables_stream
        if dropped:
            meta["dropped_tables"] = dropped
        return meta, items


def _arrays_of(value: Any) -> dict[str | None, MultiDimArray] | None:
    """``{None: array}`` for an array, ``{key: array}`` for a map of arrays; else None."""
    array = as_multidim(value)
    if array is not None:
        return {None: array}
    if isinstance(value, dict) and value:
        arrays = {k: as_multidim(v) for k, v in value.items()}
        if all(isinstance(k, str) and a is not None for k, a in arrays.items()):
            return arrays  # type: ignore[return-value]
    return None


def plain(value: Any, limit: int) -> Any:
    """A decoded CBOR value as JSON-able meta; small arrays as values, large ones described."""
    if isinstance(value, dict):
        return {str(k): plain(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, limit) for v in value]
    if isinstance(value, (MultiDimArray, TypedArray)):
        array = as_multidim(value)
        assert array is not None
        if array_nbytes(array) <= INLINE_ARRAY_BYTES:
            return inline_array(array, limit)
        return {
            "dtype": array.array.dtype.str,
            "shape": list(array.shape),
            "omitted": f"larger than {INLINE_ARRAY_BYTES} bytes",
        }
    if isinstance(value, Compressed):
        return {"compressed": value.algorithm, "bytes": len(value.data)}
    return jsonable(value)
