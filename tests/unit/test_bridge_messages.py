"""The bridge's AMQP 1.0 messages (SPEC §13), decoded by rstream's own decoder."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from rstream.amqp import amqp_decoder

from hidra_ng import Frame
from hidra_ng.bridge.messages import RecordEncoder, encode_end, encode_frame
from hidra_ng.wire.frames import frame_from_record
from hidra_ng.wire.protocol import Payload, Record, encode_meta

TEXT = st.text(max_size=300)
META = st.dictionaries(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1) | TEXT, max_size=5)


def _decode(data: bytes) -> tuple[dict, bytes]:
    msg = amqp_decoder(data)
    props = {
        k.decode(): v.decode() if isinstance(v, bytes) else v
        for k, v in msg.application_properties.items()
    }
    return props, msg.body


@given(
    index=st.integers(0, 2**62),
    seq=st.integers(0, 2**62),
    sender=st.text(min_size=1, max_size=100),
    meta=META,
    body=st.binary(max_size=600),
    created=st.floats(allow_nan=False, allow_infinity=False),
)
def test_every_property_reads_back(index, seq, sender, meta, body, created) -> None:
    frame = Frame(
        "p11/scan", index, body, meta, sender, seq, created, 2.5, "lz4", 77, "<f4", (3, 2)
    )
    props, got = _decode(encode_frame(frame, full=True))
    assert props == {
        "hidra_stream": "p11/scan",
        "hidra_index": index,
        "hidra_finished": False,
        "sender": sender,
        "seq": seq,
        "created": created,
        "stored": 2.5,
        "payload": "array",
        "dtype": "<f4",
        "shape": "[3, 2]",
        "compression": "lz4",
        "nbytes": 77,
        "meta": json.dumps(meta, separators=(",", ":"), ensure_ascii=False),
    }
    assert got == body


def test_record_mode_and_kinds_have_an_empty_body() -> None:
    frame = Frame("s", 0, b"payload", {}, "d", 0, 1.0, 1.0, "none", 7)
    props, body = _decode(encode_frame(frame, full=False))
    assert body == b"" and props["payload"] == "bytes" and props["nbytes"] == 7
    none = Frame("s", 1, None, {}, "d", 1, 1.0, 1.0)
    props, body = _decode(encode_frame(none, full=True))
    assert body == b"" and props["payload"] == "none" and props["shape"] == "[]"


def test_the_end_message() -> None:
    props, body = _decode(encode_end("p11/scan", 42))
    assert props == {
        "hidra_stream": "p11/scan",
        "hidra_index": 42,
        "hidra_finished": True,
        "payload": "none",
    }
    assert body == b""


@given(
    index=st.integers(0, 2**62),
    seq=st.integers(0, 2**62),
    sender=st.text(min_size=1, max_size=100),
    meta=META,
    body=st.binary(max_size=600),
    kind=st.sampled_from(["array", "bytes", "none"]),
)
def test_the_record_encoder_reads_back_as_encode_frame(index, seq, sender, meta, body, kind):
    """The bridge's per-frame path (from the stored Record) and encode_frame agree."""
    payload = {"array": Payload.ARRAY, "bytes": Payload.BYTES, "none": Payload.NONE}[kind]
    dtype, shape = ("<u2", (2, 3)) if kind == "array" else ("", ())
    data = b"" if kind == "none" else body
    record = Record(sender, seq, payload, dtype, shape, "none", encode_meta(meta), 1.5, 2.5,
                    len(data))  # fmt: skip
    frame = frame_from_record("p11/scan", index, record, data, decode=False)
    encoder = RecordEncoder("p11/scan")
    for full in (True, False):
        want_props, want_body = _decode(encode_frame(frame, full=full))
        got_props, got_body = _decode(encoder.encode(index, record, data, full))
        assert json.loads(got_props.pop("meta")) == json.loads(want_props.pop("meta"))
        assert got_props == want_props and got_body == want_body
