"""check_headers (a batch of packed messages) decides and words exactly as check_header does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hidra_ng.errors import InvalidInput, ProtocolError
from hidra_ng.wire import protocol as proto
from tests.unit.test_protocol import header

#: (overrides, payload size): valid ones, several alike, and one of each kind of fault
GOOD = [
    ({}, 64),
    ({"seq": 8}, 64),
    ({"stream": "p11/other"}, 64),
    ({"meta": b"{}"}, 64),
    ({"meta": b'{"i": 1}'}, 64),
    ({"payload": proto.Payload.BYTES, "dtype": "", "shape": ()}, 5),
    ({"payload": proto.Payload.BYTES, "dtype": "", "shape": ()}, 1000),
    ({"compression": "lz4"}, 17),
    ({"payload": proto.Payload.FINISH, "dtype": "", "shape": ()}, 0),
]
BAD = [
    ({"stream": "bad name"}, 64),
    ({"seq": -1}, 64),
    ({"compression": "gzip"}, 64),
    ({"created": float("nan")}, 64),
    ({"meta": b"{oops"}, 64),
    ({"meta": b"[1]"}, 64),
    ({}, 63),  # an array one byte short
    ({"payload": proto.Payload.BYTES, "dtype": "", "shape": ()}, 101),  # over the maximum
    ({"payload": proto.Payload.FINISH, "dtype": "", "shape": ()}, 3),
    ({"meta": b"[1]", "seq": -1}, 63),  # several faults: the first check_header makes counts
]


def one_by_one(headers, sizes, **limits):
    for i, (h, size) in enumerate(zip(headers, sizes, strict=True)):
        try:
            proto.check_header(h, size, **limits)
        except (InvalidInput, ProtocolError) as err:
            return i, err
    return len(headers), None


@given(st.lists(st.sampled_from(GOOD + BAD), min_size=1, max_size=12))
@settings(max_examples=400)
def test_a_batch_check_gives_what_checking_one_by_one_gives(entries):
    headers = [header(**overrides) for overrides, _ in entries]
    sizes = [size for _, size in entries]
    limits = {"max_data_bytes": 100 if any(s == 101 for s in sizes) else 1000}
    valid, error = proto.check_headers(headers, sizes, **limits)
    expected_valid, expected = one_by_one(headers, sizes, **limits)
    assert valid == expected_valid
    assert (type(error), str(error)) == (type(expected), str(expected))


def test_a_batch_of_alike_messages_passes_and_a_late_fault_is_found():
    headers = [header(seq=k) for k in range(1000)]
    assert proto.check_headers(headers, [64] * 1000) == (1000, None)
    valid, error = proto.check_headers([*headers, header(meta=b"{oops")], [64] * 1001)
    assert valid == 1000 and "not valid JSON" in str(error)
