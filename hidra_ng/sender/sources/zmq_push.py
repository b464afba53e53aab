"""``zmq:`` local detector software pushes frames over ZeroMQ.

``zmq:tcp://127.0.0.1:50110?stream=NAME``

The source binds a PULL socket on the endpoint (default
``tcp://127.0.0.1:50110``; ``connect=1`` connects instead); the detector
software connects a PUSH socket and sends each frame as a multipart message
``[header, payload]``:

header
    a UTF-8 JSON object of at most 68 KiB with these keys (any other key is
    refused, so a typo does not pass silently):

    ``version``      optional, 1
    ``stream``       stream name; default: the URI's ``stream=`` (default ``zmq``)
    ``dtype``        numpy dtype of an array, e.g. ``"uint16"``, ``"<u2"``, ``"float32"``
    ``shape``        list of dimensions, e.g. ``[2162, 2068]``; with ``dtype``
    ``compression``  ``"none"`` (default) or, for an array compressed already,
                     ``"lz4"``/``"zstd"`` (one blosc2 chunk), ``"bslz4"`` (HDF5
                     bitshuffle filter framing) or ``"lz4-hdf5"`` (HDF5 LZ4 framing)
    ``meta``         a JSON object stored with the frame (at most 64 KiB encoded)
    ``finish``       ``true``: finish the stream; no payload, no dtype

payload
    the array's bytes in C order (``dtype`` and ``shape`` given), opaque bytes
    (neither given), or nothing / an empty frame for a metadata-only message.

A message that breaks any of this is refused: counted by reason in
``refusals.counts``, logged (the first ones of each reason), and dropped; the
source goes on with the next. Messages are spooled durably in arrival order;
what a killed daemon had received but not spooled (the socket's small receive
queue) is lost, as with any PUSH/PULL link. There is no checkpoint: a PULL
socket has no position to resume from.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import zmq

from hidra_ng.errors import (
    ConfigError,
    HidraError,
    InvalidStreamName,
    MessageTooLarge,
    PushRefused,
)
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources._common import Item, Params, Refusals, receive_batch, spool_items
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded

log = logging.getLogger(__name__)

HEADER_KEYS = frozenset({"version", "stream", "dtype", "shape", "compression", "meta", "finish"})
DEFAULT_ENDPOINT = "tcp://127.0.0.1:50110"
MAX_HEADER_BYTES = proto.MAX_META_BYTES + 4096  # the meta and the other keys
RECEIVE_HWM = 16
BATCH_MESSAGES = 256
BATCH_BYTES = 64 << 20
POLL_SECONDS = 0.2
USAGE = "zmq:tcp://127.0.0.1:50110?stream=NAME&connect=0|1"


@dataclass(frozen=True, slots=True)
class Finish:
    stream: str


def parse_message(
    frames: list[bytes | memoryview],
    default_stream: str,
    max_data_bytes: int = proto.MAX_DATA_BYTES,
    max_meta_bytes: int = proto.MAX_META_BYTES,
) -> Item | Finish:
    """Validate one pushed message: (stream, data, meta) or Finish, else PushRefused."""
    if not 1 <= len(frames) <= 2:
        raise PushRefused("parts", f"message has {len(frames)} parts; expected [header, payload]")
    payload = memoryview(frames[1]).cast("B") if len(frames) == 2 else memoryview(b"")
    header = _header(frames[0])
    stream = header.get("stream", default_stream)
    try:
        proto.check_stream_name(stream)
    except InvalidStreamName as err:
        raise PushRefused("stream", str(err)) from None
    finish = header.get("finish", False)
    if not isinstance(finish, bool):
        raise PushRefused("header", f"finish {finish!r} is not true or false")
    has_array = "dtype" in header or "shape" in header
    compression = header.get("compression", "none")
    if finish:
        if has_array or len(payload) or "meta" in header or compression != "none":
            raise PushRefused("finish", "a finish message carries no payload, dtype, shape or meta")
        return Finish(stream)
    meta = header.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise PushRefused("meta", f"meta is a JSON {type(meta).__name__}; expected an object")
    try:
        proto.encode_meta(meta, max_meta_bytes)
    except HidraError as err:
        raise PushRefused("meta", str(err)) from None
    if compression not in proto.COMPRESSIONS:
        raise PushRefused(
            "compression", f"compression {compression!r} is unknown; expected {proto.COMPRESSIONS}"
        )
    if len(payload) > max_data_bytes:
        raise PushRefused("size", f"payload is {len(payload)} bytes; at most {max_data_bytes}")
    if not has_array:
        if compression != "none":
            raise PushRefused("compression", "compression needs an array: give dtype and shape")
        return stream, (bytes(payload) if len(payload) else None), meta
    return stream, _array(header, payload, compression, max_data_bytes), meta


def _header(raw: bytes | memoryview) -> dict[str, Any]:
    """The header part: a JSON object of known keys, version 1, else PushRefused."""
    if len(raw) > MAX_HEADER_BYTES:
        raise PushRefused("header", f"header is {len(raw)} bytes; at most {MAX_HEADER_BYTES}")
    try:
        header = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise PushRefused("header", f"header is not JSON: {err}") from None
    except RecursionError:
        raise PushRefused("header", "header JSON nests too deeply") from None
    if not isinstance(header, dict):
        raise PushRefused("header", f"header is a JSON {type(header).__name__}; expected an object")
    unknown = sorted(set(header) - HEADER_KEYS)
    if unknown:
        raise PushRefused(
            "header", f"header key {unknown[0]!r} is unknown; expected {sorted(HEADER_KEYS)}"
        )
    if header.get("version", 1) != 1:
        raise PushRefused("version", f"header version {header['version']!r} is unknown; expected 1")
    return header


def _array(
    header: dict[str, Any], payload: memoryview, compression: str, max_data_bytes: int
) -> np.ndarray | Encoded:
    """The payload as the array the header describes (or as it came, compressed)."""
    dtype, shape = _array_spec(header, max_data_bytes)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if compression == "none":
        if len(payload) != nbytes:
            raise PushRefused(
                "size",
                f"array of shape {list(shape)} and dtype {dtype.str} needs {nbytes} bytes;"
                f" the payload has {len(payload)}",
            )
        return np.frombuffer(payload, dtype).reshape(shape)
    encoded = Encoded(bytes(payload), dtype.str, shape, compression)
    try:
        encoded.check()
    except HidraError as err:
        raise PushRefused("compression", str(err)) from None
    return encoded


def _array_spec(header: dict[str, Any], max_data_bytes: int) -> tuple[np.dtype, tuple[int, ...]]:
    if "dtype" not in header or "shape" not in header:
        raise PushRefused("shape", "an array needs both dtype and shape")
    name = header["dtype"]
    not_a_dtype = PushRefused("dtype", f"dtype {name!r} is not a numpy dtype name like 'uint16'")
    if not isinstance(name, str):
        raise not_a_dtype
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise not_a_dtype from None
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise PushRefused("dtype", f"dtype {name!r} is not numeric; expected e.g. 'uint16'")
    shape = header["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > proto.MAX_NDIM
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise PushRefused("shape", f"shape {shape!r} is not a list of at most 32 integers >= 0")
    try:
        proto.array_nbytes(dtype.str, shape, max_data_bytes)
    except MessageTooLarge as err:
        raise PushRefused("size", str(err)) from None
    except HidraError as err:
        raise PushRefused("dtype", str(err)) from None
    return dtype, tuple(shape)


@dataclass
class ZmqSource:
    name: str
    endpoint: str
    stream: str = "zmq"
    connect: bool = False
    refusals: Refusals = field(init=False)

    def __post_init__(self) -> None:
        self.refusals = Refusals(self.name)
        self.received = 0
        self.bound_endpoint = ""  # the endpoint actually bound (port resolved for tcp://*:*)
        self.ready = threading.Event()

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> ZmqSource:
        p = Params(uri, params, {"stream", "connect"}, USAGE)
        target = target or DEFAULT_ENDPOINT
        if not target.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"source {uri!r}: endpoint {target!r} is not valid; expected {USAGE}")
        return cls(uri, target, stream=p.stream("zmq"), connect=p.flag("connect", False))

    def run(self, producer: Producer, stop: threading.Event) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, producer.max_message_bytes + proto.MAX_META_BYTES)
        try:
            try:
                if self.connect:
                    sock.connect(self.endpoint)
                else:
                    sock.bind(self.endpoint)
            except zmq.ZMQError as err:
                how = "connect to" if self.connect else "bind"
                raise ConfigError(
                    f"source {self.name!r}: cannot {how} {self.endpoint}: {err}"
                ) from err
            self.bound_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.ready.set()
            log.info("source %s: pulling on %s", self.name, self.bound_endpoint)
            while not stop.is_set():
                batch = receive_batch(sock, POLL_SECONDS, BATCH_MESSAGES, BATCH_BYTES)
                self._take(batch, producer, stop)
            self._take(receive_batch(sock, 0, RECEIVE_HWM * 4, 1 << 62), producer, stop)
        finally:
            self.ready.clear()
            sock.close(linger=0)
            ctx.term()

    def _take(
        self, batch: list[list[zmq.Frame]], producer: Producer, stop: threading.Event
    ) -> None:
        items: list[Item] = []
        for frames in batch:
            self.received += 1
            try:
                parsed = parse_message(
                    [f.buffer for f in frames],
                    self.stream,
                    producer.max_message_bytes,
                    producer.max_meta_bytes,
                )
            except PushRefused as err:
                self.refusals.refuse(err.reason, str(err))
                continue
            except Exception as err:
                # a bug must cost one message, not the batch received with it
                log.exception("pushed message could not be parsed; refused")
                self.refusals.refuse("internal", f"{type(err).__name__}: {err}")
                continue
            self.refusals.accept()
            if isinstance(parsed, Finish):
                if not spool_items(producer, items, stop, self.refusals):
                    return
                items = []
                try:
                    producer.finish(parsed.stream)
                except HidraError as err:
                    self.refusals.refuse("finish", str(err))
            else:
                items.append(parsed)
        spool_items(producer, items, stop, self.refusals)
