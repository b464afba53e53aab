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
from typing import Any

from hidra_ng.wire.frames import Frame
from hidra_ng.wire.protocol import Payload, Record

__all__ = ["FINISHED", "RecordEncoder", "encode_end", "encode_frame", "properties"]

FINISHED = "hidra_finished"
# AMQP 1.0 section headers: descriptor 0x00, smallulong 0x53, the section code
_APP_PROPERTIES = b"\x00\x53\x74"  # amqp:application-properties:map
_DATA_SECTION = b"\x00\x53\x75"  # amqp:data:binary
_LONG = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_U32 = struct.Struct(">I")


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

    The bridge's path for every frame: what is the same from frame to frame (the
    stream, the sender, the array's kind, dtype, shape and codec) is encoded once
    and kept; the numbers go in with one ``struct`` call; the meta is the stored
    JSON text as it is (not decoded and encoded again). The properties read back
    as :func:`encode_frame`'s do.
    """

    # key, type code, value; each key is an AMQP str8 (0xa1, length, text)
    _NUMBERS = struct.Struct(">13sBq5sBq9sBd8sBd8sBq")

    def __init__(self, stream: str) -> None:
        self._head = _key("hidra_stream") + _value(stream) + _key(FINISHED) + _value(False)
        self._described: dict[tuple, bytes] = {}

    def encode(self, index: int, record: Record, payload: bytes | memoryview, full: bool) -> bytes:
        described = self._described.get(
            key := (record.sender, record.payload, record.dtype, record.shape, record.compression)
        )
        if described is None:
            if len(self._described) > 64:
                self._described.clear()
            described = self._described[key] = self._describe(record)
        numbers = self._NUMBERS.pack(
            _INDEX, 0x81, index,
            _SEQ, 0x81, record.seq,
            _CREATED, 0x82, float(record.created),
            _STORED, 0x82, float(record.stored),
            _NBYTES, 0x81, record.nbytes,
        )  # fmt: skip
        meta = record.meta
        size = len(meta)
        meta_value = (b"\xa1" + bytes((size,))) if size < 256 else b"\xb1" + _U32.pack(size)
        items = (self._head, described, numbers, _META_KEY, meta_value, meta)
        length = sum(map(len, items))
        body = payload if full and record.payload in (Payload.ARRAY, Payload.BYTES) else b""
        size = len(body)
        if size < 256:
            section = _DATA_SECTION + b"\xa0" + bytes((size,))
        else:
            section = _DATA_SECTION + b"\xb0" + _U32.pack(size)
        return b"".join(
            (_APP_PROPERTIES, b"\xd1", _U32.pack(length + 4), _U32.pack(2 * 13), *items, section,
             body)
        )  # fmt: skip

    @staticmethod
    def _describe(record: Record) -> bytes:
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
        return b"".join(_key(k) + _value(v) for k, v in props.items())


def encode_end(stream: str, length: int) -> bytes:
    """The last message of a finished stream of ``length`` frames."""
    props = {"hidra_stream": stream, "hidra_index": length, FINISHED: True, "payload": "none"}
    return _encode(props, b"")


def _encode(props: dict[str, Any], body: bytes) -> bytes:
    # Encoded here rather than with rstream's AMQPMessage, whose pure-Python
    # encoder took ~400 us a message (the bridge's limit for small frames). The
    # body is one data section, also when empty (AMQP 1.0 readers expect one),
    # and a large body is copied once. rstream's decoder reads it back (tests).
    head = _APP_PROPERTIES + _map(props)
    size = len(body)
    if size < 256:
        section = _DATA_SECTION + b"\xa0" + bytes((size,))
    else:
        section = _DATA_SECTION + b"\xb0" + struct.pack(">I", size)
    return b"".join((head, section, body))


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


_META_KEY = _key("meta")
_INDEX, _SEQ, _CREATED, _STORED, _NBYTES = map(_key, ("hidra_index", "seq", "created", "stored",
                                                    "nbytes"))  # fmt: skip
