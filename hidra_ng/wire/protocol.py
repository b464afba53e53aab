"""Wire messages of hidra_ng and their codec: bytes <-> typed messages.

This module owns no socket and touches no disk, so it is tested with bytes
alone. Every message starts with a first frame that begins with a 4-byte
preamble ``b"HN" + version + kind`` followed by a msgpack body; the version is
checked before anything else is decoded.

Ingest (producer PUSH -> receiver PULL), one multipart message::

    [preamble(DATA) + Envelope, header_1, payload_1, ..., header_n, payload_n]

The envelope says who sends (sender id, spool incarnation) and carries the
go-back-N bookkeeping (ack floor, resend epoch); each header describes one
message; each payload is the raw (possibly compressed) bytes, sent and received
without copies. Control and api messages (DEALER <-> ROUTER) are one frame
each, plus a payload frame where a reply carries a frame's data. The ack path
is described in docs/adr/0001-ack-path.md.
"""

from __future__ import annotations

import enum
import math
import re
import typing
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from hidra_ng.errors import (
    InvalidFrame,
    InvalidInput,
    InvalidStreamName,
    MessageTooLarge,
    ProtocolError,
    UnsupportedVersion,
)

VERSION = 1
MAGIC = b"HN"
PREAMBLE_SIZE = 4

MAX_DATA_BYTES = 256 * 1024 * 1024
MAX_META_BYTES = 64 * 1024
#: a replay waiting for new frames tells its consumer it is alive this often
REPLAY_IDLE_SECONDS = 5.0
MAX_STREAM_NAME = 200
MAX_NDIM = 32
SEQ_LIMIT = 2**63
#: most messages one group request hands out or acknowledges (next max_count, ack indices)
MAX_BATCH = 10_000
#: a batched next stops adding messages once its payloads reach this many bytes
MAX_BATCH_BYTES = 64 << 20


class Kind(enum.IntEnum):
    """Message kinds, the fourth byte of the preamble."""

    DATA = 1
    HELLO = 2
    ACK = 3
    GAP = 4
    REQUEST = 5
    REPLY = 6
    PUBLISH = 7
    DATA_PACKED = 8  # small messages: [envelope, Packed headers + sizes, joined payloads]


class Payload(enum.IntEnum):
    """What a message's payload frame holds."""

    NONE = 0  # metadata only, empty payload frame
    BYTES = 1  # opaque bytes
    ARRAY = 2  # an ndarray: dtype and shape in the header
    FINISH = 3  # control: the stream is finished (empty payload frame)


#: Payload codecs. "lz4" and "zstd" are blosc2 chunks (SPEC §11, made by a Producer);
#: "bslz4" (bitshuffle + LZ4), "lz4-hdf5", "bszstd" (bitshuffle + Zstandard) and "trpx"
#: (TERSE/PROLIX) are the framings DECTRIS detectors send, stored as received
#: (see hidra_ng/wire/compression.py).
COMPRESSIONS = ("none", "lz4", "zstd", "bslz4", "lz4-hdf5", "bszstd", "trpx")


# --------------------------------------------------------------------------
# Message structs. array_like keeps the per-frame headers small and fast.


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    sender: str
    incarnation: int  # random id of the sender's spool; (sender, incarnation) dedupes
    floor: int  # lowest sequence number the sender still holds unacknowledged
    epoch: int  # resend epoch: a GAP from an older epoch is stale


class Header(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One message's description on the ingest path (in a spool, on the wire).

    ``gc=False``: a batch holds thousands, and its fields (strings, numbers, a tuple
    of ints) cannot refer back to it, so the garbage collector need not track them.
    """

    stream: str
    seq: int
    payload: Payload
    dtype: str  # numpy dtype.str for ARRAY, "" otherwise
    shape: tuple[int, ...]
    compression: str
    meta: bytes  # a JSON object, kept encoded: the receiver stores it as is
    created: float


class Packed(msgspec.Struct, array_like=True, frozen=True):
    """Second frame of a DATA_PACKED message: the messages' headers and payload sizes.

    The third frame holds the payloads joined in order; ``sizes`` cuts it apart.
    Three zmq frames carry a batch of small messages, where DATA takes two per
    message (docs/adr/0002-packed-small-messages.md).
    """

    headers: list[Header]
    sizes: list[int]


class Record(msgspec.Struct, array_like=True, frozen=True):
    """A stored message's description, as kept in the store and sent to consumers."""

    sender: str
    seq: int
    payload: Payload
    dtype: str
    shape: tuple[int, ...]
    compression: str
    meta: bytes
    created: float
    stored: float
    nbytes: int  # payload size as stored (compressed size for compressed frames)


class Hello(msgspec.Struct, array_like=True, frozen=True):
    sender: str
    incarnation: int


class Ack(msgspec.Struct, array_like=True, frozen=True):
    incarnation: int
    last_seq: int  # highest committed seq of this incarnation, -1 if none


class Gap(msgspec.Struct, array_like=True, frozen=True):
    incarnation: int
    expected: int  # resend from this seq
    epoch: int


class _Request(msgspec.Struct, tag_field="op", omit_defaults=True, frozen=True):
    """A consumer's request; ``op`` (the tag) names it. Replies carry the same id; a
    replay's frames all do. On the wire a msgpack map: ``{"op": "get", "id": 1, ...}``."""

    id: int

    @property
    def op(self) -> str:
        return str(self.__struct_config__.tag)


class PingRequest(_Request, tag="ping", frozen=True):
    pass


class StreamsRequest(_Request, tag="streams", frozen=True):
    pass


class InfoRequest(_Request, tag="info", frozen=True):
    stream: str = ""


class LastRequest(_Request, tag="last", frozen=True):
    stream: str = ""
    timeout: float = 0.0  # wait this long for a first message


class GetRequest(_Request, tag="get", frozen=True):
    stream: str = ""
    index: int = 0
    timeout: float = 0.0  # wait this long for a future index


class ReplayRequest(_Request, tag="replay", frozen=True):
    stream: str = ""
    index: int = 0  # the start
    stop: int = -1  # exclusive end, -1 for none
    follow: bool = False  # keep going with frames committed later
    credit_frames: int = 0  # frames the consumer can take
    credit_bytes: int = 0  # payload bytes the consumer can take
    batch: bool = False  # frames come as FrameBatch bodies, small ones several per reply


class CreditRequest(_Request, tag="credit", frozen=True):
    """More room for the replay of the same id."""

    credit_frames: int = 0
    credit_bytes: int = 0


class CancelRequest(_Request, tag="cancel", frozen=True):
    """End the replay of the same id, or answer a waiting get/last/next of that id now."""


class SkippedRequest(_Request, tag="skipped", frozen=True):
    count: int = 0  # frames a subscriber skipped since its last report


class NextRequest(_Request, tag="next", frozen=True):
    stream: str = ""
    group: str = ""
    timeout: float = 0.0
    ack_timeout: float = 0.0  # the group's ack timeout, 0 for the receiver's
    max_deliveries: int = 0  # deliveries before a message is parked, 0 for default
    max_count: int = 0  # hand out up to this many at once (a list reply), 0 for one
    indices: tuple[int, ...] = ()  # acked first


class AckRequest(_Request, tag="ack", frozen=True):
    stream: str = ""
    group: str = ""
    index: int = 0
    indices: tuple[int, ...] = ()  # several at once (``index`` unused)


class NackRequest(_Request, tag="nack", frozen=True):
    stream: str = ""
    group: str = ""
    index: int = 0
    delay: float = 0.0  # seconds before the message is handed out again


class ParkedRequest(_Request, tag="parked", frozen=True):
    stream: str = ""
    group: str = ""


#: matches in one query reply: the default of ``limit``, and its most
DEFAULT_QUERY_LIMIT = 10_000
MAX_QUERY_LIMIT = 1_000_000
#: records a query examines for one reply: the default of ``scan_limit``, and its most
DEFAULT_SCAN_LIMIT = 100_000
MAX_SCAN_LIMIT = 100_000_000


class QueryRequest(_Request, tag="query", frozen=True):
    stream: str = ""
    expr: str = ""  # the filter expression
    limit: int = 0  # at most this many results, 0 for the default
    start: int = 0  # the first index examined: 0, or the ``next`` of the last QueryResult
    scan_limit: int = 0  # at most this many records examined, 0 for the default


Request = (
    PingRequest
    | StreamsRequest
    | InfoRequest
    | LastRequest
    | GetRequest
    | ReplayRequest
    | CreditRequest
    | CancelRequest
    | SkippedRequest
    | NextRequest
    | AckRequest
    | NackRequest
    | ParkedRequest
    | QueryRequest
)

#: op -> request type
REQUEST_TYPES: dict[str, type[_Request]] = {
    str(cls.__struct_config__.tag): cls for cls in typing.get_args(Request)
}


class RequestHead(msgspec.Struct):
    """What every request has, to answer one whose op is unknown."""

    id: int
    op: str


def make_request(id: int, op: str, **fields: Any) -> Request:
    """The request ``op`` with ``fields``; InvalidInput for an unknown op or field."""
    cls = REQUEST_TYPES.get(op)
    if cls is None:
        raise InvalidInput(
            f"operation {op!r} is unknown; expected one of {', '.join(REQUEST_TYPES)}"
        )
    try:
        return cls(id=id, **fields)  # type: ignore[return-value]
    except TypeError as err:
        raise InvalidInput(f"{op} request: {err}") from None


class ReplayEvent(enum.Enum):
    """Reply bodies that end or keep alive a replay (its frames are FrameRef bodies)."""

    END = "end"  # every frame asked for was sent
    IDLE = "idle"  # a follow replay waits for new frames; the receiver is alive


class Reply(msgspec.Struct, omit_defaults=True, frozen=True):
    id: int
    error: str = ""
    message: str = ""
    body: msgspec.Raw = msgspec.Raw(b"\xc0")  # msgpack nil


class StreamInfo(msgspec.Struct, frozen=True):
    """A stream's extent as the receiver reports it (SPEC §4)."""

    name: str
    first: int  # lowest index still stored (== next index when count is 0)
    last: int | None  # highest index written, None before the first message
    count: int  # messages currently stored
    bytes: int  # payload bytes as stored
    finished: bool


class FrameRef(msgspec.Struct, array_like=True, frozen=True):
    """Body of a reply that carries one stored frame; its payload follows."""

    stream: str
    index: int
    record: msgspec.Raw
    group: str = ""  # set when handed out by a consumer group
    deliveries: int = 0  # how often the group handed this message out


class QueryResult(msgspec.Struct, array_like=True, frozen=True):
    """Body of a query's reply: the matches among the records examined, and where to go on.

    The receiver examines records from ``start`` until it has ``limit`` matches, has
    examined ``scan_limit`` records, or reaches the last record stored when the query
    began. ``next`` is the first index not examined; ``more`` says a bound stopped the
    scan before that last record, so a query from ``next`` continues it.
    """

    frames: list[FrameRef]
    next: int
    more: bool


class FrameBatch(msgspec.Struct, array_like=True, frozen=True):
    """Body of a reply that carries several frames (a batched next, a batched replay).

    Their payloads follow in one frame, joined in order; ``sizes`` cuts it apart
    (one zmq frame per reply instead of one per message: small messages are
    cheaper that way). A batched replay sends a large frame as a batch of one,
    its payload frame a view of the store, not a copy.
    """

    frames: list[FrameRef]
    sizes: list[int]


# --------------------------------------------------------------------------
# Codec

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(kind: type) -> msgspec.msgpack.Decoder[Any]:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return dec


def preamble(kind: Kind) -> bytes:
    return MAGIC + bytes((VERSION, kind))


def encode(kind: Kind, body: msgspec.Struct) -> bytes:
    """A first frame: preamble + msgpack body."""
    return preamble(kind) + _encoder.encode(body)


def encode_body(body: Any) -> bytes:
    return _encoder.encode(body)


def encode_packed(headers: Sequence[bytes], sizes: Sequence[int]) -> bytes:
    """A :class:`Packed` frame from headers already encoded (as the spool keeps them)."""
    return encode_packed_joined(len(headers), b"".join(headers), sizes)


def encode_packed_joined(count: int, headers: bytes | memoryview, sizes: Sequence[int]) -> bytes:
    """A :class:`Packed` frame from ``count`` encoded headers joined (a spool batch's)."""
    if count < 16:
        prefix = bytes((0x90 | count,))
    elif count < 1 << 16:
        prefix = b"\xdc" + count.to_bytes(2, "big")
    else:
        prefix = b"\xdd" + count.to_bytes(4, "big")
    return b"".join((b"\x92", prefix, headers, _encoder.encode(list(sizes))))


def unpack_payloads(packed: Packed, joined: memoryview) -> list[memoryview]:
    """Views of each message's payload in the joined payload frame, sizes checked."""
    return cut_payloads(joined, packed.sizes, len(packed.headers), "packed message")


def cut_payloads(joined: memoryview, sizes: list[int], count: int, what: str) -> list[memoryview]:
    """``joined`` cut into ``count`` views by ``sizes``; a ProtocolError if they do not fit."""
    if not sizes or len(sizes) != count:
        raise ProtocolError(
            f"{what} has {count} entries and {len(sizes)} payload sizes; expected the same"
            " number, at least one"
        )
    if min(sizes) < 0 or sum(sizes) != len(joined):
        raise ProtocolError(
            f"{what}: payload sizes add up to {sum(sizes)} (smallest {min(sizes)}) but the"
            f" payload frame has {len(joined)} bytes"
        )
    views = []
    offset = 0
    for size in sizes:
        views.append(joined[offset : offset + size])
        offset += size
    return views


def peek_kind(frame: bytes | memoryview) -> Kind:
    """Check magic and version of a first frame and return its kind."""
    if len(frame) < PREAMBLE_SIZE or bytes(frame[:2]) != MAGIC:
        raise ProtocolError(
            f"first frame of {len(frame)} bytes does not start with the hidra_ng preamble "
            f"{MAGIC!r}; expected a hidra_ng message"
        )
    version = frame[2]
    if version != VERSION:
        raise UnsupportedVersion(
            f"message has protocol version {version}; this build speaks version {VERSION}"
        )
    try:
        return Kind(frame[3])
    except ValueError:
        raise ProtocolError(f"unknown message kind {frame[3]}") from None


def decode(kind: Kind, body_type: type, frame: bytes | memoryview) -> Any:
    """Decode a first frame of an expected kind into ``body_type``."""
    got = peek_kind(frame)
    if got != kind:
        raise ProtocolError(f"expected a {kind.name} message, got {got.name}")
    return decode_body(body_type, memoryview(frame)[PREAMBLE_SIZE:])


def decode_body(body_type: type, data: bytes | memoryview) -> Any:
    try:
        return _decoder(body_type).decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as err:
        # msgspec reports invalid UTF-8 in a str field as UnicodeDecodeError
        name = getattr(body_type, "__name__", "request")  # a union of requests has none
        raise ProtocolError(f"malformed {name}: {err}") from err


# --------------------------------------------------------------------------
# Validation: every field is checked before anything is allocated from it.

_STREAM_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SENDER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,100}")
_DTYPE = re.compile(r"[<>|][biufc][0-9]{1,2}")


def check_stream_name(name: object) -> str:
    """Return ``name`` if it is a valid stream name (SPEC §2), else raise."""
    if isinstance(name, str) and name in _valid_names:
        return name
    _check_stream_name(name)
    if len(_valid_names) >= 4096:
        _valid_names.clear()  # a bounded cache of names seen valid
    _valid_names.add(name)  # type: ignore[arg-type]
    return name  # type: ignore[return-value]


_valid_names: set[str] = set()


def _check_stream_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidStreamName(f"stream name {name!r} is a {type(name).__name__}; expected str")
    if not 1 <= len(name) <= MAX_STREAM_NAME:
        raise InvalidStreamName(
            f"stream name {name[:40]!r}{'...' if len(name) > 40 else ''} has {len(name)} "
            f"characters; expected 1 to {MAX_STREAM_NAME}"
        )
    for segment in name.split("/"):
        if not segment:
            raise InvalidStreamName(
                f"stream name {name!r} has an empty segment; segments are joined by single '/'"
                " and the name neither starts nor ends with '/'"
            )
        if not _STREAM_SEGMENT.fullmatch(segment):
            bad = next(ch for ch in segment if not _STREAM_SEGMENT.fullmatch(ch))
            what = "a space" if bad == " " else f"the character {bad!r}"
            raise InvalidStreamName(
                f"stream name {name!r} has {what}; use letters, digits, '.', '_', '-' and '/'"
            )
    return name


def check_sender_id(sender: object) -> str:
    if not isinstance(sender, str) or not _SENDER_ID.fullmatch(sender):
        raise InvalidInput(
            f"sender id {sender!r} is not valid; use 1 to 100 letters, digits, '.', '_', ':',"
            " '@' and '-'"
        )
    return sender


def check_dtype(dtype: str) -> np.dtype:
    if not _DTYPE.fullmatch(dtype):
        raise InvalidFrame(
            f"dtype {dtype!r} is not supported; expected a numeric numpy dtype string"
            " such as '<u2' or '<f4'"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise InvalidFrame(f"dtype {dtype!r} is not a numpy dtype: {err}") from err
    if dt.str != dtype and not (dt.itemsize == 1 and dtype[0] in "<>|"):
        raise InvalidFrame(f"dtype {dtype!r} is not canonical; expected {dt.str!r}")
    return dt


def array_nbytes(dtype: str, shape: Sequence[int], max_data_bytes: int) -> int:
    """Bytes an array of ``dtype`` and ``shape`` takes, checked against the limit."""
    dt = check_dtype(dtype)
    if len(shape) > MAX_NDIM:
        raise InvalidFrame(f"shape {tuple(shape)} has {len(shape)} dimensions; at most {MAX_NDIM}")
    for n in shape:
        if not isinstance(n, int) or n < 0:
            raise InvalidFrame(f"shape {tuple(shape)} has {n!r}; expected integers >= 0")
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes > max_data_bytes:
        raise MessageTooLarge(
            f"array of shape {tuple(shape)} and dtype {dtype} is {nbytes} bytes;"
            f" the maximum is {max_data_bytes} bytes"
        )
    return nbytes


def check_meta(meta: bytes, max_meta_bytes: int = MAX_META_BYTES) -> None:
    if len(meta) > max_meta_bytes:
        raise MessageTooLarge(
            f"meta is {len(meta)} bytes of JSON; the maximum is {max_meta_bytes} bytes"
        )
    if meta[:1] != b"{":
        raise InvalidFrame(f"meta {bytes(meta[:40])!r} is not a JSON object")
    try:
        value = msgspec.json.decode(meta)
    except msgspec.DecodeError as err:
        raise InvalidFrame(f"meta is not valid JSON: {err}") from err
    except RecursionError:
        raise InvalidFrame("meta nests too deeply; flatten it") from None
    if not isinstance(value, dict):
        raise InvalidFrame("meta is not a JSON object")


def check_header(
    header: Header,
    payload_size: int,
    *,
    max_data_bytes: int = MAX_DATA_BYTES,
    max_meta_bytes: int = MAX_META_BYTES,
) -> None:
    """Validate one ingest header against its payload size and the limits."""
    check_stream_name(header.stream)
    if not 0 <= header.seq < SEQ_LIMIT:
        raise InvalidFrame(f"seq {header.seq} is out of range; expected 0 <= seq < 2**63")
    if header.compression not in COMPRESSIONS:
        raise InvalidFrame(
            f"compression {header.compression!r} is unknown; expected one of {COMPRESSIONS}"
        )
    if not math.isfinite(header.created):
        raise InvalidFrame(f"created time {header.created!r} is not a finite number")
    check_meta(header.meta, max_meta_bytes)
    if payload_size > max_data_bytes:
        raise MessageTooLarge(
            f"payload of {payload_size} bytes for stream {header.stream!r} exceeds the maximum"
            f" of {max_data_bytes} bytes"
        )
    kind = header.payload
    if kind in (Payload.NONE, Payload.FINISH):
        if payload_size or header.dtype or header.shape or header.compression != "none":
            raise InvalidFrame(
                f"a {kind.name.lower()} message for stream {header.stream!r} carries a payload,"
                " dtype, shape or compression; expected none"
            )
    elif kind == Payload.BYTES:
        if header.dtype or header.shape:
            raise InvalidFrame(
                f"a bytes message for stream {header.stream!r} has dtype {header.dtype!r} and"
                f" shape {header.shape}; expected neither"
            )
    else:
        nbytes = array_nbytes(header.dtype, header.shape, max_data_bytes)
        if header.compression == "none" and nbytes != payload_size:
            raise InvalidFrame(
                f"array of shape {header.shape} and dtype {header.dtype} needs {nbytes} bytes"
                f" but the payload has {payload_size}"
            )


#: a payload description that allows any payload size up to the maximum
_ANY_SIZE = -1


class HeaderChecker:
    """:func:`check_header` for the headers of one batch, one at a time, in order.

    The same checks with the same errors, but those of a stream name, a meta and a
    payload description (kind, dtype, shape, compression) run once per distinct
    one: a batch of small messages repeats them. Only what passed is remembered,
    so a checker is made per batch (its memory is that batch's distinct metas).
    """

    __slots__ = ("_metas", "_needs", "_streams", "max_data_bytes", "max_meta_bytes")

    def __init__(
        self, *, max_data_bytes: int = MAX_DATA_BYTES, max_meta_bytes: int = MAX_META_BYTES
    ) -> None:
        self.max_data_bytes = max_data_bytes
        self.max_meta_bytes = max_meta_bytes
        self._streams: set[str] = set()
        self._metas: set[bytes] = set()
        #: payload description -> the payload size it needs, or _ANY_SIZE
        self._needs: dict[tuple[Payload, str, tuple[int, ...], str], int] = {}

    def check(self, header: Header, size: int) -> None:
        """Raise what ``check_header(header, size, ...)`` raises, if anything."""
        description = (header.payload, header.dtype, header.shape, header.compression)
        need = self._needs.get(description)
        if (
            need is None
            or header.stream not in self._streams
            or size > self.max_data_bytes
            or (need != _ANY_SIZE and size != need)
            or not 0 <= header.seq < SEQ_LIMIT
            or not math.isfinite(header.created)
        ):
            # something new or wrong: every check, in check_header's order
            check_header(
                header,
                size,
                max_data_bytes=self.max_data_bytes,
                max_meta_bytes=self.max_meta_bytes,
            )
            self._streams.add(header.stream)
            self._needs[description] = _size_needed(header, self.max_data_bytes)
        elif header.meta not in self._metas:
            check_meta(header.meta, self.max_meta_bytes)  # the only check left
        self._metas.add(header.meta)


def check_headers(
    headers: Sequence[Header],
    sizes: Sequence[int],
    *,
    max_data_bytes: int = MAX_DATA_BYTES,
    max_meta_bytes: int = MAX_META_BYTES,
) -> tuple[int, InvalidInput | ProtocolError | None]:
    """:func:`check_header` of each header of a batch with its payload size, in order.

    The same checks with the same errors, run by a :class:`HeaderChecker`. Returns
    how many headers pass before the first that does not, and that one's error
    (None when all pass).
    """
    checker = HeaderChecker(max_data_bytes=max_data_bytes, max_meta_bytes=max_meta_bytes)
    check = checker.check
    # what check() decides at once, inline: the batch's headers alike but for seq and created
    needs, streams, metas = checker._needs, checker._streams, checker._metas
    for i, (header, size) in enumerate(zip(headers, sizes, strict=True)):
        need = needs.get((header.payload, header.dtype, header.shape, header.compression))
        if (
            need is not None
            and (need == size or (need == _ANY_SIZE and size <= max_data_bytes))
            and header.stream in streams
            and header.meta in metas
            and 0 <= header.seq < SEQ_LIMIT
            and math.isfinite(header.created)
        ):
            continue  # every check passed for one alike before
        try:
            check(header, size)
        except (InvalidInput, ProtocolError) as err:
            return i, err
    return len(headers), None


def _size_needed(header: Header, max_data_bytes: int) -> int:
    """The payload size a valid header's description needs, or ``_ANY_SIZE``."""
    if header.payload in (Payload.NONE, Payload.FINISH):
        return 0
    if header.payload == Payload.BYTES or header.compression != "none":
        return _ANY_SIZE
    return array_nbytes(header.dtype, header.shape, max_data_bytes)


MAX_WAIT_SECONDS = 3600.0


def check_request(req: Request) -> None:
    """Every number of a request within range before it is used (NaN, inf, negatives)."""
    fields = req.__struct_fields__
    for name in ("timeout", "delay", "ack_timeout"):
        value = getattr(req, name, 0.0)
        if not (math.isfinite(value) and 0 <= value <= MAX_WAIT_SECONDS * 168):
            raise InvalidInput(
                f"{req.op} {name} {value!r} is not valid; expected seconds from 0 to one week"
            )
    counts = ("index", "credit_frames", "credit_bytes", "count", "limit", "max_deliveries")
    for name in (*counts, "start", "scan_limit"):
        value = getattr(req, name, 0)
        if not 0 <= value < SEQ_LIMIT:
            raise InvalidInput(
                f"{req.op} {name} {value} is not valid; expected 0 <= {name} < 2**63"
            )
    stop = getattr(req, "stop", -1)
    if not -1 <= stop < SEQ_LIMIT:
        raise InvalidInput(f"{req.op} stop {stop} is not valid; expected -1 (none) or an index")
    max_count = getattr(req, "max_count", 0)
    if not 0 <= max_count <= MAX_BATCH:
        raise InvalidInput(
            f"{req.op} max_count {max_count} is not valid; expected 0 to {MAX_BATCH}"
        )
    indices: tuple[int, ...] = getattr(req, "indices", ()) if "indices" in fields else ()
    if len(indices) > MAX_BATCH or (indices and not 0 <= min(indices) <= max(indices) < SEQ_LIMIT):
        raise InvalidInput(
            f"{req.op} indices ({len(indices)} of them) are not valid; expected at most"
            f" {MAX_BATCH} indices from 0 to 2**63"
        )


def check_envelope(env: Envelope) -> None:
    check_sender_id(env.sender)
    for name in ("incarnation", "floor", "epoch"):
        value = getattr(env, name)
        if not 0 <= value < SEQ_LIMIT:
            raise ProtocolError(f"envelope {name} {value} is out of range")


# --------------------------------------------------------------------------
# Metadata helpers shared by producers and consumers.


def _meta_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_meta(meta: dict[str, Any] | None, max_meta_bytes: int = MAX_META_BYTES) -> bytes:
    """Encode a user's meta dict as the JSON object carried on the wire."""
    if meta is None:
        return b"{}"
    if not isinstance(meta, dict):
        raise InvalidFrame(f"meta {meta!r:.60} is a {type(meta).__name__}; expected a dict")
    try:
        data = msgspec.json.encode(meta, enc_hook=_meta_default)
    except RecursionError:
        raise InvalidFrame("meta nests too deeply (or refers to itself); flatten it") from None
    except (TypeError, msgspec.EncodeError) as err:
        raise InvalidFrame(f"meta cannot be encoded as JSON: {err}") from err
    if len(data) > max_meta_bytes:
        raise MessageTooLarge(
            f"meta is {len(data)} bytes of JSON; the maximum is {max_meta_bytes} bytes"
        )
    return data


def decode_meta(meta: bytes | memoryview) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(meta)
    return decoded
