"""The wire codec with bytes alone: round trips and every refusal, by name."""

from __future__ import annotations

import contextlib
import re

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hidra_ng.errors import (
    InvalidFrame,
    InvalidInput,
    InvalidStreamName,
    MessageTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import describe, frame_from_record

segment = st.text(alphabet=st.sampled_from("abcXYZ019._-"), min_size=1, max_size=20)
stream_names = (
    st.lists(segment, min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda s: len(s) <= proto.MAX_STREAM_NAME)
)


def header(**overrides) -> proto.Header:
    fields = dict(
        stream="p11/scan_0001",
        seq=7,
        payload=proto.Payload.ARRAY,
        dtype="<u2",
        shape=(4, 8),
        compression="none",
        meta=b'{"exposure_s": 0.01}',
        created=1.5,
    )
    fields.update(overrides)
    return proto.Header(**fields)


@given(
    stream=stream_names,
    seq=st.integers(0, proto.SEQ_LIMIT - 1),
    shape=st.lists(st.integers(0, 64), min_size=0, max_size=4).map(tuple),
    meta=st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=5),
    created=st.floats(allow_nan=False, allow_infinity=False),
)
@settings(max_examples=300)
def test_header_round_trip(stream, seq, shape, meta, created):
    h = header(stream=stream, seq=seq, shape=shape, meta=proto.encode_meta(meta), created=created)
    decoded = proto.decode_body(proto.Header, proto.encode_body(h))
    assert decoded == h
    nbytes = int(np.prod(shape, dtype=np.int64)) * 2
    proto.check_header(decoded, nbytes)
    assert proto.decode_meta(decoded.meta) == meta


def test_first_frame_round_trip_and_kind_check():
    env = proto.Envelope("eiger-p11", 2**62, 10, 3)
    frame = proto.encode(proto.Kind.DATA, env)
    assert frame[:4] == b"HN\x01\x01"
    assert proto.decode(proto.Kind.DATA, proto.Envelope, frame) == env
    with pytest.raises(ProtocolError, match="expected a HELLO message, got DATA"):
        proto.decode(proto.Kind.HELLO, proto.Hello, frame)


@pytest.mark.parametrize(
    ("frame", "error", "message"),
    [
        (b"", ProtocolError, "does not start with the hidra_ng preamble"),
        (b"XX\x01\x01", ProtocolError, "preamble"),
        (b"HN\x02\x01\x90", UnsupportedVersion, "version 2; this build speaks version 1"),
        (b"HN\x01\x63", ProtocolError, "unknown message kind 99"),
        (b"HN\x01\x01\xff\xff", ProtocolError, "malformed Envelope"),
        (b"HN\x01\x01" + msgspec.msgpack.encode(["a", 1]), ProtocolError, "malformed Envelope"),
    ],
)
def test_bad_first_frames_are_refused_by_name(frame, error, message):
    with pytest.raises(error, match=message):
        proto.decode(proto.Kind.DATA, proto.Envelope, frame)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a b", "has a space"),
        ("", "has 0 characters"),
        ("x" * 201, "has 201 characters"),
        ("/abs", "empty segment"),
        ("a//b", "empty segment"),
        ("trailing/", "empty segment"),
        ("a\\b", "the character '\\\\\\\\'"),
        ("caf\u00e9", "the character"),
        ("a\x00b", "the character"),
    ],
)
def test_invalid_stream_names_are_named(name, message):
    with pytest.raises(InvalidStreamName, match=message) as err:
        proto.check_stream_name(name)
    if name and len(name) < 40:
        assert repr(name)[1:-1][:10] in str(err.value)


@given(stream_names)
def test_valid_stream_names_pass(name):
    assert proto.check_stream_name(name) == name


def test_stream_name_must_be_str():
    with pytest.raises(InvalidStreamName, match="is a bytes; expected str"):
        proto.check_stream_name(b"abc")


@pytest.mark.parametrize(
    ("overrides", "size", "error", "message"),
    [
        ({"stream": "bad name"}, 64, InvalidStreamName, "space"),
        ({"seq": -1}, 64, InvalidFrame, "seq -1 is out of range"),
        ({"compression": "gzip"}, 64, InvalidFrame, "compression 'gzip' is unknown"),
        ({"created": float("nan")}, 64, InvalidFrame, "not a finite number"),
        ({"meta": b"[1, 2]"}, 64, InvalidFrame, "is not a JSON object"),
        ({"meta": b"{oops"}, 64, InvalidFrame, "not valid JSON"),
        ({"meta": b'{"a":' * 3000 + b"1" + b"}" * 3000}, 64, InvalidFrame, "nests too deeply"),
        ({"meta": b'{"a": "' + b"x" * 70000 + b'"}'}, 64, MessageTooLarge, "meta is 70009 bytes"),
        ({}, 63, InvalidFrame, "needs 64 bytes but the payload has 63"),
        ({"dtype": "object"}, 64, InvalidFrame, "dtype 'object' is not supported"),
        ({"dtype": "<M8"}, 64, InvalidFrame, "not supported"),
        ({"shape": (-1, 8)}, 64, InvalidFrame, "expected integers >= 0"),
        ({"shape": (1,) * 33}, 2, InvalidFrame, "33 dimensions"),
        ({"shape": (2**40, 2**40)}, 64, MessageTooLarge, "the maximum is"),
        ({"payload": proto.Payload.NONE}, 0, InvalidFrame, "carries a payload, dtype, shape"),
        ({"payload": proto.Payload.BYTES}, 64, InvalidFrame, "expected neither"),
    ],
)
def test_bad_headers_are_refused_by_name(overrides, size, error, message):
    with pytest.raises(error, match=message):
        proto.check_header(header(**overrides), size)


@pytest.mark.parametrize(
    ("op", "fields", "message"),
    [
        ("get", {"timeout": float("nan")}, "get timeout nan is not valid"),
        ("get", {"timeout": float("inf")}, "get timeout inf is not valid"),
        ("last", {"timeout": -0.5}, "last timeout -0.5 is not valid"),
        ("nack", {"delay": 1e308}, "nack delay 1e+308 is not valid"),
        ("next", {"ack_timeout": float("-inf")}, "next ack_timeout -inf is not valid"),
        ("get", {"index": -1}, "get index -1 is not valid"),
        ("replay", {"credit_frames": -3}, "replay credit_frames -3 is not valid"),
        ("credit", {"credit_bytes": -3}, "credit credit_bytes -3 is not valid"),
        ("skipped", {"count": -1}, "skipped count -1 is not valid"),
        ("query", {"limit": 2**63}, "query limit 9223372036854775808 is not valid"),
        ("next", {"max_deliveries": -1}, "next max_deliveries -1 is not valid"),
        ("replay", {"stop": -2}, "replay stop -2 is not valid"),
        ("next", {"max_count": 10_001}, "next max_count 10001 is not valid"),
        ("next", {"max_count": -1}, "next max_count -1 is not valid"),
        ("ack", {"indices": (3, 2**63)}, "ack indices (2 of them) are not valid"),
        ("next", {"indices": tuple(range(10_001))}, "next indices (10001 of them) are not valid"),
    ],
)
def test_requests_with_numbers_out_of_range_are_refused(op, fields, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        proto.check_request(proto.make_request(1, op, **fields))
    proto.check_request(proto.GetRequest(1, timeout=5.0, index=3))
    proto.check_request(proto.ReplayRequest(1, stop=-1, credit_frames=1, credit_bytes=1))


def test_requests_are_a_tagged_union_with_one_handler_each():
    """On the wire a request is a map with its op; every op has a type and a handler."""
    from hidra_ng.receiver.requests import OPS

    assert set(OPS) == set(proto.REQUEST_TYPES.values())
    encoded = proto.encode_body(proto.GetRequest(5, stream="s", index=3))
    assert msgspec.msgpack.decode(encoded) == {"op": "get", "id": 5, "stream": "s", "index": 3}
    decoded = proto.decode_body(proto.Request, encoded)
    assert decoded == proto.GetRequest(5, stream="s", index=3) and decoded.op == "get"
    with pytest.raises(InvalidInput, match="operation 'fly' is unknown"):
        proto.make_request(1, "fly")
    with pytest.raises(InvalidInput, match="get request"):
        proto.make_request(1, "get", group="g")


def test_replay_events_travel_as_the_strings_of_before():
    assert proto.encode_body(proto.ReplayEvent.END) == msgspec.msgpack.encode("end")
    assert proto.decode_body(
        proto.FrameRef | proto.ReplayEvent, msgspec.msgpack.encode("idle")
    ) is (proto.ReplayEvent.IDLE)


def test_oversized_payload_is_refused():
    h = header(payload=proto.Payload.BYTES, dtype="", shape=())
    with pytest.raises(MessageTooLarge, match="exceeds the maximum of 100 bytes"):
        proto.check_header(h, 101, max_data_bytes=100)


def test_meta_encoding_accepts_numpy_scalars_and_refuses_the_rest():
    assert proto.decode_meta(proto.encode_meta({"e": np.float32(0.5), "n": np.arange(3)})) == {
        "e": 0.5,
        "n": [0, 1, 2],
    }
    assert proto.encode_meta(None) == b"{}"
    with pytest.raises(InvalidFrame, match="is a list; expected a dict"):
        proto.encode_meta([1, 2])
    with pytest.raises(InvalidFrame, match="cannot be encoded as JSON"):
        proto.encode_meta({"f": object()})
    with pytest.raises(MessageTooLarge, match="the maximum is 10 bytes"):
        proto.encode_meta({"long": "x" * 20}, max_meta_bytes=10)
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(InvalidFrame, match="nests too deeply"):
        proto.encode_meta(loop)


@pytest.mark.parametrize("dtype", ["<u1", "<u2", ">u2", "<i4", "<u4", "<f4", ">f8", "<c8", "|b1"])
def test_arrays_survive_describe_and_rebuild_without_copies(dtype):
    array = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    kind, dt, shape, buf = describe(array)
    assert (kind, shape) == (proto.Payload.ARRAY, (2, 3, 4))
    assert np.shares_memory(np.frombuffer(buf, np.uint8), array)
    record = proto.Record("s", 0, kind, dt, shape, "none", b"{}", 0.0, 0.0, len(buf))
    frame = frame_from_record("x", 3, record, bytes(buf))
    assert frame.data.dtype == array.dtype
    assert np.array_equal(frame.data, array)


def test_describe_bytes_none_and_refusals():
    assert describe(b"abc")[:3] == (proto.Payload.BYTES, "", ())
    assert describe(None) == (proto.Payload.NONE, "", (), b"")
    with pytest.raises(InvalidFrame, match="type str cannot be sent"):
        describe("text")
    with pytest.raises(InvalidFrame, match="dtype object is not supported"):
        describe(np.array([object()]))
    fortran = np.asfortranarray(np.arange(6, dtype="<u2").reshape(2, 3))
    _, _, shape, buf = describe(fortran)
    assert shape == (2, 3) and bytes(buf) == np.ascontiguousarray(fortran).tobytes()


@pytest.mark.parametrize("count", [1, 15, 16, 65_535, 65_536])
def test_packed_frames_round_trip_with_every_array_prefix(count):
    headers = [header(seq=i, shape=(i % 3,)) for i in range(count)]
    sizes = [(i % 3) * 2 for i in range(count)]
    frame = proto.encode_packed([proto.encode_body(h) for h in headers], sizes)
    packed = proto.decode_body(proto.Packed, frame)
    assert packed.headers == headers and packed.sizes == sizes
    joined = memoryview(b"".join(bytes([i % 256]) * n for i, n in enumerate(sizes)))
    views = proto.unpack_payloads(packed, joined)
    assert [bytes(v) for v in views[:4]] == [b"", b"\x01\x01", b"\x02" * 4, b""][: len(views)]
    assert sum(map(len, views)) == len(joined)


@pytest.mark.parametrize(
    ("sizes", "joined", "message"),
    [
        ([1, 0], b"ab", r"sizes add up to 1 \(smallest 0\) but the payload frame has 2 bytes"),
        ([3, -1], b"ab", r"sizes add up to 2 \(smallest -1\)"),
        ([1, 1, 0], b"ab", "packed message has 2 entries and 3 payload sizes"),
        ([], b"", "packed message has 2 entries and 0 payload sizes"),
    ],
)
def test_packed_payload_sizes_are_checked(sizes, joined, message):
    two = [proto.encode_body(header()), proto.encode_body(header())]
    packed = proto.decode_body(proto.Packed, proto.encode_packed(two, sizes))
    with pytest.raises(ProtocolError, match=message):
        proto.unpack_payloads(packed, memoryview(joined))


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_random_bytes_never_crash_the_decoders(data):
    for kind, body in [
        (proto.Kind.DATA, proto.Envelope),
        (proto.Kind.DATA_PACKED, proto.Envelope),
        (proto.Kind.HELLO, proto.Hello),
        (proto.Kind.REQUEST, proto.Request),
        (proto.Kind.REPLY, proto.Reply),
    ]:
        with contextlib.suppress(ProtocolError):
            proto.decode(kind, body, data)
        with contextlib.suppress(ProtocolError):
            proto.decode(kind, body, proto.preamble(kind) + data)
    with contextlib.suppress(ProtocolError):
        proto.unpack_payloads(proto.decode_body(proto.Packed, data), memoryview(data))
    try:
        h = proto.decode_body(proto.Header, data)
    except ProtocolError:
        return
    with contextlib.suppress(InvalidFrame, InvalidStreamName, MessageTooLarge):
        proto.check_header(h, len(data))
