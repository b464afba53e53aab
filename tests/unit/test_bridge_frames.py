"""The bridge's shortcuts past rstream's frame codec write and read what rstream does."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from rstream import schema
from rstream.encoding import decode_frame, encode_frame, encode_publish

from hidra_ng.bridge.broker import _Connection, publish_head
from hidra_ng.bridge.messages import ENTRY_HEADER, RecordEncoder
from hidra_ng.wire.protocol import Payload, Record, encode_meta


def test_a_publish_frame_of_entries_is_what_rstream_writes() -> None:
    encoder = RecordEncoder("p11/scan")
    record = Record("det", 4, Payload.BYTES, "", (), "none", encode_meta({"i": 1}), 1.0, 2.0, 5)
    records = [(i, record, b"x" * (i * 100)) for i in range(7, 12)]
    entries, body_bytes = encoder.entries(records, full=True)
    assert body_bytes == sum(len(p) for _, _, p in records)
    messages = [
        schema.Message(publishing_id=i + 1, filter_value=None, data=encoder.encode(i, r, p, True))
        for i, r, p in records
    ]
    want = encode_publish(schema.Publish(publisher_id=9, messages=messages))
    halves = [entries[: ENTRY_HEADER.size + 40], entries[ENTRY_HEADER.size + 40 :]]
    assert publish_head(9, len(records), halves) + entries == want


class _Feed:
    """A StreamReader stand-in that hands out one encoded frame."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def at_eof(self) -> bool:
        return False


def _read_back(frame: schema.Frame) -> schema.Frame:
    conn = _Connection("localhost", 5552)
    conn._reader = _Feed(encode_frame(frame))  # type: ignore[assignment]
    return asyncio.run(conn.read_frame())


@given(pid=st.integers(0, 255), ids=st.lists(st.integers(0, 2**64 - 1), max_size=300))
def test_confirms_read_back_as_rstream_reads_them(pid: int, ids: list[int]) -> None:
    frame = schema.PublishConfirm(publisher_id=pid, publishing_ids=ids)
    got = _read_back(frame)
    assert got == frame == decode_frame(encode_frame(frame)[4:])


def test_other_frames_are_left_to_rstream() -> None:
    errors = schema.PublishError(
        publisher_id=3, errors=[schema.PublishingError(publishing_id=5, response_code=2)]
    )
    assert _read_back(errors) == errors
    assert _read_back(schema.Heartbeat()) == schema.Heartbeat()
