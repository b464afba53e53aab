"""``dectris:`` a PULL client of the DECTRIS SIMPLON Stream V2 interface.

``dectris:tcp://eiger-dcu:31001?stream=p11/eiger&tables=0``

Stream V2 sends one CBOR map per ZeroMQ message, ``type`` = ``start`` |
``image`` | ``end``. Each channel (threshold) of a series goes to its own
stream ``STREAM/CHANNEL`` (e.g. ``p11/eiger/threshold_1``), so every stream
holds frames of one shape and dtype and its indices follow the image ids:

- ``start``: a metadata-only message in every channel stream, meta = the start
  fields (``type: "start"``, ``series_id``, ``series_unique_id``, ``channels``,
  geometry, ``user_data``, ...) without the large tables ``flatfield``,
  ``pixel_mask`` and ``countrate_correction_lookup_table``. With ``tables=1``
  each table goes to the stream ``STREAM/tables`` as an array message with meta
  ``{"type": "table", "table": NAME, "channel": CHANNEL or null, series ids}``.
- ``image``: one array frame per channel, meta ``type: "image"``, ``image_id``,
  ``series_id``, ``series_unique_id``, ``channel``, ``real_time``,
  ``start_time``, ``stop_time`` (rationals as ``[numerator, denominator]``),
  ``series_date`` (ISO 8601) and ``user_data``. Images compressed by the
  detector (tag 56500 ``bslz4`` or ``lz4``) are spooled and stored as received
  (codec ``bslz4`` or ``lz4-hdf5``) and decoded when read.
- ``end``: a metadata-only message ``{"type": "end", series ids}`` in every
  channel stream. Streams are not finished: the next series follows.

CBOR values that JSON lacks become JSON: dates as ISO strings, byte strings as
``{"base64": ...}``, unknown tags as ``{"cbor_tag": N, "value": ...}``. Meta
over the limit (64 KiB) loses ``user_data`` first; ``dropped_meta`` says what.

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
from dataclasses import dataclass, field
from typing import Any

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
from hidra_ng.wire.compression import Encoded, decode_bslz4

log = logging.getLogger(__name__)

TABLES = ("flatfield", "pixel_mask", "countrate_correction_lookup_table")
IMAGE_FIELDS = (
    "image_id",
    "series_id",
    "series_unique_id",
    "real_time",
    "start_time",
    "stop_time",
    "series_date",
    "user_data",
)
RECEIVE_HWM = 8  # messages queued in this process; the detector buffers the rest
BATCH_MESSAGES = 64
BATCH_BYTES = 64 << 20
POLL_SECONDS = 0.2
USAGE = "dectris:tcp://HOST:31001?stream=NAME&tables=0|1"


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


def decode_message(raw: bytes | memoryview) -> dict[str, Any]:
    """One Stream V2 message as a dict; arrays become :class:`MultiDimArray`."""
    try:
        msg = cbor2.loads(raw, tag_hook=_tag_hook, max_depth=64)
    except StreamV2Error:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, StreamV2Error) else err
        raise StreamV2Error(f"not a CBOR message: {cause}") from err
    if not isinstance(msg, dict):
        raise StreamV2Error(f"message is a CBOR {type(msg).__name__}; expected a map")
    kind = msg.get("type")
    if kind not in ("start", "image", "end"):
        raise StreamV2Error(f"message type {kind!r} is unknown; expected start, image or end")
    return msg


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
    if data.algorithm == "bslz4" and data.elem_size != dtype.itemsize:
        # another element size than the pixels': decode here, the store knows one itemsize
        try:
            raw = decode_bslz4(data.data, data.elem_size)
        except HidraError as err:
            raise StreamV2Error(str(err)) from err
        if raw.nbytes != nbytes:
            raise StreamV2Error(f"bslz4 data decodes to {raw.nbytes} bytes; expected {nbytes}")
        return raw.view(dtype).reshape(shape)
    codec = {"bslz4": "bslz4", "lz4": "lz4-hdf5"}.get(data.algorithm)
    if codec is None:
        raise StreamV2Error(
            f"compression {data.algorithm!r} is unknown; expected 'bslz4' or 'lz4' (tag 56500)"
        )
    encoded = Encoded(data.data, dtype.str, shape, codec)
    try:
        encoded.check()
    except HidraError as err:
        raise StreamV2Error(str(err)) from err
    return encoded


def _table_data(value: Any, limit: int) -> np.ndarray | Encoded:
    if isinstance(value, TypedArray):  # a 1-D table: its length comes from the bytes
        if isinstance(value.data, Compressed):
            raise StreamV2Error("a compressed typed array without dimensions has no known length")
        n = len(value.data) // value.dtype.itemsize
        return array_data(MultiDimArray((n,), value), limit)
    if isinstance(value, MultiDimArray):
        return array_data(value, limit)
    raise StreamV2Error(f"table is a {type(value).__name__}; expected a typed array")


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
    name: str
    endpoint: str
    stream: str = "dectris"
    tables: bool = False
    refusals: Refusals = field(init=False)

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
            name=uri, endpoint=target, stream=p.stream("dectris"), tables=p.flag("tables", False)
        )

    @property
    def checkpoint_name(self) -> str:
        return checkpoint_key("dectris", self.endpoint, self.stream)

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
                if len(frames) != 1:
                    raise StreamV2Error(f"message has {len(frames)} parts; Stream V2 sends one")
                items += self.translate(decode_message(frames[0].buffer), producer)
            except (StreamV2Error, HidraError) as err:
                self.refusals.refuse(type(err).__name__, str(err))
        return spool_items(producer, items, stop, self.refusals, self._checkpoint())

    def translate(self, msg: dict[str, Any], producer: Producer) -> list[Item]:
        """Items for one decoded message; updates the series state."""
        limit, meta_limit = producer.max_message_bytes, producer.max_meta_bytes
        kind = msg["type"]
        ids = {k: jsonable(msg.get(k)) for k in ("series_id", "series_unique_id")}
        if kind == "start":
            channels = msg.get("channels") or []
            if not isinstance(channels, (list, tuple)) or not all(
                isinstance(c, str) for c in channels
            ):
                raise StreamV2Error(f"start channels {channels!r} are not a list of names")
            meta = {"type": "start"}
            meta.update({k: jsonable(v) for k, v in msg.items() if k not in TABLES and k != "type"})
            self.state = SeriesState(
                ids["series_unique_id"], ids["series_id"], list(channels), None, True
            )
            items: list[Item] = [
                (s, None, fit_meta(meta, meta_limit)) for s in self._series_streams()
            ]
            if self.tables:
                items += self._tables(msg, ids, limit)
            return items
        if kind == "end":
            meta = {"type": "end", **ids}
            items = [(s, None, meta) for s in self._series_streams()]
            self.state.open = False
            return items
        data = msg.get("data")
        if not isinstance(data, dict) or not data:
            raise StreamV2Error("image message has no data map of channel -> array")
        meta = {"type": "image", **{k: jsonable(msg.get(k)) for k in IMAGE_FIELDS if k in msg}}
        items = []
        for channel, array in data.items():
            if not isinstance(channel, str) or not isinstance(array, MultiDimArray):
                raise StreamV2Error(
                    f"image channel {channel!r} holds a {type(array).__name__}; expected a"
                    " multi-dimensional array (tag 40)"
                )
            frame = array_data(array, limit)
            frame_meta = fit_meta({**meta, "channel": channel}, meta_limit)
            items.append((self.channel_stream(channel), frame, frame_meta))
            if channel not in self.state.channels:
                self.state.channels.append(channel)
        if self.state.series_unique_id != ids["series_unique_id"]:
            self.state.series_unique_id = ids["series_unique_id"]
            self.state.series_id = ids["series_id"]
            self.state.open = True
        image_id = msg.get("image_id")
        self.state.last_image_id = image_id if isinstance(image_id, int) else None
        self.images += 1
        return items

    def _tables(self, msg: dict[str, Any], ids: dict[str, Any], limit: int) -> list[Item]:
        stream = proto.check_stream_name(f"{self.stream}/tables")
        items: list[Item] = []
        for name in TABLES:
            value = msg.get(name)
            if value is None:
                continue
            per_channel = value.items() if isinstance(value, dict) else [(None, value)]
            for channel, table in per_channel:
                meta = {"type": "table", "table": name, "channel": channel, **ids}
                items.append((stream, _table_data(table, limit), meta))
        return items
