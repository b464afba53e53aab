"""The record and fingerprints that keep a split series' calls exactly once (sender/split.py)."""

from __future__ import annotations

import struct

import numpy as np

from hidra_ng.sender.split import SeriesRecord, fingerprint
from hidra_ng.wire.compression import Encoded

META = 64 * 1024


def test_a_fingerprint_tells_data_dtype_shape_and_meta_apart() -> None:
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    base = fingerprint(image, {"k": 1}, META)
    assert len(base) == 8
    assert fingerprint(image.copy(), {"k": 1}, META) == base  # the same message again
    assert fingerprint(np.asfortranarray(image), {"k": 1}, META) == base  # same values
    others = [
        fingerprint(image, {"k": 2}, META),
        fingerprint(image, None, META),
        fingerprint(image.reshape(4, 3), {"k": 1}, META),
        fingerprint(image.astype(np.int16), {"k": 1}, META),
        fingerprint(image.tobytes(), {"k": 1}, META),
        fingerprint(image + 1, {"k": 1}, META),
        fingerprint(Encoded(image.tobytes(), "<u2", (3, 4), "lz4"), {"k": 1}, META),
    ]
    assert len({base, *others}) == 1 + len(others)
    assert fingerprint(None, None, META) == fingerprint(None, {}, META)  # meta {} as sent


def test_a_record_round_trips_and_reads_the_former_count() -> None:
    record = SeriesRecord(42, 7, [b"12345678", b"abcdefgh"])
    assert SeriesRecord.decode(record.encode()) == record
    assert SeriesRecord.decode(struct.pack(">Q", 25)) == SeriesRecord(25, 0, [])
    newer = SeriesRecord(42, 8)
    assert max([record, newer, SeriesRecord(41, 99)], key=lambda r: r.order) == newer
