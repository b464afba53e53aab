"""The broker message of one hidra_ng frame (SPEC §13): AMQP 1.0, read by rstream and pika.

An AMQP 1.0 message of two sections:

* application properties (pika: ``properties.headers``; rstream:
  ``message.application_properties`` with bytes keys and values):

  ================  ======  ====================================================
  hidra_stream      string  the hidra_ng stream name, e.g. ``p11/scan_0001``
  hidra_index       int     its index (0, 1, ...); the end message: one past the last
  hidra_finished    bool    true only on the end message of a finished stream
  sender            string  the sender id
  seq               int     that sender's sequence number
  created           double  producer clock, seconds since the epoch
  stored            double  receiver clock at commit
  payload           string  ``array``, ``bytes`` or ``none``
  dtype             string  numpy dtype string of an array (``<u2``), else ``""``
  shape             string  JSON list of an array's shape (``[2048, 1024]``), else ``[]``
  compression       string  codec of the stored payload: ``none``, ``lz4``, ``zstd``, ...
  nbytes            int     size of the stored payload in bytes (also in record mode)
  meta              string  the frame's metadata as JSON text
  ================  ======  ====================================================

* one data section, the body: the payload exactly as the receiver stores it
  (``--payload full``; compressed bytes when ``compression`` is not ``none``,
  else the raw array bytes in C order), or empty (``--payload record``: fetch the
  payload from the receiver with ``Consumer.get(stream, index)``).

A finished stream ends with one message whose ``hidra_finished`` is true, whose
``hidra_index`` is the stream's length and whose body is empty. Broker publishing
ids are ``hidra_index + 1``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from hidra_ng.wire.frames import Frame
from hidra_ng.wire.protocol import Payload, Record

__all__ = ["ENTRY_HEADER", "FINISHED", "RecordEncoder", "encode_end", "encode_frame", "properties"]

FINISHED = "hidra_finished"
# AMQP 1.0 section headers: descriptor 0x00, smallulong 0x53, the section code
_APP_PROPERTIES = b"\x00\x53\x74"  # amqp:application-properties:map
_DATA_SECTION = b"\x00\x53\x75"  # amqp:data:binary
_LONG = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_U32 = struct.Struct(">I")
#: a publish entry of the stream protocol: publishing id, message length, the message
ENTRY_HEADER = struct.Struct(">QI")


def properties(frame: Frame) -> dict[str, Any]:
    """The application properties of ``frame`` (decode=False, as stored)."""
    kind = "array" if frame.dtype else "none" if frame.data is None else "bytes"
    return {
        "hidra_stream": frame.stream,
        "hidra_index": frame.index,
        FINISHED: False,
        "sender": frame.sender,
        "seq": frame.seq,
        "created": float(frame.created),
        "stored": float(frame.stored),
        "payload": kind,
        "dtype": frame.dtype,
        "shape": json.dumps(list(frame.shape)),
        "compression": frame.compression,
        "nbytes": frame.nbytes,
        "meta": json.dumps(frame.meta, separators=(",", ":"), ensure_ascii=False),
    }


def encode_frame(frame: Frame, *, full: bool) -> bytes:
    """The encoded AMQP 1.0 message of ``frame``; the body is its stored payload if ``full``."""
    body = frame.data if full and isinstance(frame.data, bytes) else b""
    return _encode(properties(frame), body)


class RecordEncoder:
    """:func:`encode_frame` for one stream, from the stored Record, without making a Frame.

    The bridge's path for every frame, many at a time (:meth:`entries`): what is the
    same from frame to frame (the stream, the sender, the array's kind, dtype, shape
    and codec, and every key) is encoded once and kept; the numbers and the lengths go
    in with one ``struct`` call per message; the meta is the stored JSON text as it is
    (not decoded and encoded again). The properties read back as :func:`encode_frame`'s
    do.
    """

    def __init__(self, stream: str) -> None:
        self._head = _key("hidra_stream") + _value(stream) + _key(FINISHED) + _value(False)
        self._forms: dict[tuple, _Form] = {}

    def encode(self, index: int, record: Record, payload: bytes | memoryview, full: bool) -> bytes:
        """One message (:meth:`entries` of one frame, without its publish entry header)."""
        return self.entries([(index, record, payload)], full)[0][ENTRY_HEADER.size :]

    def entries(
        self, records: Sequence[tuple[int, Record, bytes | memoryview]], full: bool
    ) -> tuple[bytes, int]:
        """``records`` as stream-protocol publish entries, joined, and their body bytes.

        Each entry is the publishing id (index + 1, uint64), the message's length
        (uint32) and the message: what a Publish frame carries after its publisher
        id and message count, so a batch goes to the broker as it is.
        """
        pieces: list[bytes | memoryview] = []
        add = pieces.extend
        forms = self._forms
        sections = _SECTIONS
        body_bytes = 0
        for index, record, payload in records:
            form = forms.get(
                (record.sender, record.payload, record.dtype, record.shape, record.compression)
            )
            if form is None:
                form = self._form(record)
            meta = record.meta
            size = len(meta)
            body = payload if full and form.body else b""
            nbody = len(body)
            section = sections.get(nbody) or _section(nbody)
            pack, a, b, c, d, e, f, g, fixed = form.short if size < 256 else form.long
            body_bytes += nbody
            add(
                (
                    pack(
                        index + 1, fixed + size + len(section) + nbody, a, size + fixed - 8, b,
                        index, c, record.seq, d, record.created, e, record.stored, f,
                        record.nbytes, g, size,
                    ),
                    meta,
                    section,
                    body,
                )
            )  # fmt: skip
        return b"".join(pieces), body_bytes

    def _form(self, record: Record) -> _Form:
        if len(self._forms) > 64:
            self._forms.clear()
        if record.dtype:
            kind = "array"
        elif record.payload in (Payload.NONE, Payload.FINISH):
            kind = "none"
        else:
            kind = "bytes"
        props = {
            "sender": record.sender,
            "payload": kind,
            "dtype": record.dtype,
            "shape": json.dumps(list(record.shape)),
            "compression": record.compression,
        }
        described = b"".join(_key(k) + _value(v) for k, v in props.items())
        form = _Form(self._head + described, record.payload in (Payload.ARRAY, Payload.BYTES))
        key = (record.sender, record.payload, record.dtype, record.shape, record.compression)
        self._forms[key] = form
        return form


class _Form:
    """The constant parts of one kind of message and the struct that packs the rest.

    Packed: the publish entry header (publishing id, message length), the
    application-properties section's header (descriptor, map32, its size and 26
    items), the properties that do not change (``prefix``), the five numbers with
    their keys, and the meta's key and string header; then come the meta text, the
    data section's header and the body.
    """

    __slots__ = ("body", "long", "short")

    def __init__(self, prefix: bytes, body: bool) -> None:
        self.body = body
        self.short = self._struct(prefix, "B", b"\xa1")  # meta of < 256 bytes: str8
        self.long = self._struct(prefix, "I", b"\xb1")  # str32

    @staticmethod
    def _struct(prefix: bytes, meta_length: str, meta_code: bytes) -> tuple:
        # the constants go in as arguments: one pack call a message
        parts = (
            _APP_PROPERTIES + b"\xd1",
            _U32.pack(2 * 13) + prefix + _INDEX + b"\x81",
            _SEQ + b"\x81",
            _CREATED + b"\x82",
            _STORED + b"\x82",
            _NBYTES + b"\x81",
            _META_KEY + meta_code,
        )
        fmt = ">QI{}sI{}sq{}sq{}sd{}sd{}sq{}s{}".format(*map(len, parts), meta_length)
        packer = struct.Struct(fmt)
        # message length without meta, data section and body; the map's size field
        # counts from its item count on: packer.size - 12 - 4 - 4, i.e. fixed - 8
        return (packer.pack, *parts, packer.size - ENTRY_HEADER.size)


def encode_end(stream: str, length: int) -> bytes:
    """The last message of a finished stream of ``length`` frames."""
    props = {"hidra_stream": stream, "hidra_index": length, FINISHED: True, "payload": "none"}
    return _encode(props, b"")


def _encode(props: dict[str, Any], body: bytes) -> bytes:
    # Encoded here rather than with rstream's AMQPMessage, whose pure-Python
    # encoder took ~400 us a message (the bridge's limit for small frames). The
    # body is one data section, also when empty (AMQP 1.0 readers expect one),
    # and a large body is copied once. rstream's decoder reads it back (tests).
    return b"".join((_APP_PROPERTIES, _map(props), _section(len(body)), body))


def _value(value: Any) -> bytes:
    """One AMQP 1.0 simple value: string, long, double or boolean."""
    if value is True:
        return b"\x41"
    if value is False:
        return b"\x42"
    if isinstance(value, int):
        return b"\x81" + _LONG.pack(value)
    if isinstance(value, float):
        return b"\x82" + _DOUBLE.pack(value)
    raw = value.encode()
    if len(raw) < 256:
        return b"\xa1" + bytes((len(raw),)) + raw
    return b"\xb1" + _U32.pack(len(raw)) + raw


def _map(props: dict[str, Any]) -> bytes:
    """A map32 of string keys to simple values."""
    items = b"".join(_key(k) + _value(v) for k, v in props.items())
    return b"\xd1" + _U32.pack(len(items) + 4) + _U32.pack(2 * len(props)) + items


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _KEYS[key] = _value(key)
    return encoded


def _section(size: int) -> bytes:
    """The header of a data section of ``size`` bytes (vbin8 or vbin32)."""
    if size < 256:
        section = _DATA_SECTION + b"\xa0" + bytes((size,))
    else:
        section = _DATA_SECTION + b"\xb0" + _U32.pack(size)
    if len(_SECTIONS) < 4096:
        _SECTIONS[size] = section
    return section


_SECTIONS: dict[int, bytes] = {}
_META_KEY = _key("meta")
_INDEX, _SEQ, _CREATED, _STORED, _NBYTES = map(_key, ("hidra_index", "seq", "created", "stored",
                                                    "nbytes"))  # fmt: skip
