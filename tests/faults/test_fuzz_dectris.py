"""Garbage from a detector: mutated Stream V2 and V1 messages through the DECTRIS sources.

Every mutated message must be either used or refused with a StreamV2Error /
StreamV1Error / HidraError naming what is wrong (never another exception, never
a crash), and every compressed payload a source accepted must either decode to
the declared size or be refused with InvalidFrame when read: the C decoders of
dectris-compression are fed payloads whose headers passed our checks.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
from stream_v1_emitter import ENCODINGS, header_parts, image_parts
from stream_v2_emitter import CHANNELS, COMPRESSIONS, encode, image_message, start_message

from hidra_ng.errors import HidraError, InvalidFrame
from hidra_ng.sender.sources.dectris import DectrisSource, StreamV2Error, decode_message
from hidra_ng.sender.sources.dectris1 import Dectris1Source, StreamV1Error
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded, decompress

PRODUCER = SimpleNamespace(max_message_bytes=1 << 24, max_meta_bytes=64 << 10)


def mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7 and data:
            cut = rng.randrange(len(data))
            del data[cut : cut + rng.randint(1, 64)]
        elif choice < 0.85:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            data = data[: rng.randrange(len(data) + 1)]
    return bytes(data)


def read_back(data: Encoded) -> str:
    """'ok' or 'refused' for how a consumer would read an accepted payload."""
    payload = data.check()
    record = proto.Record(
        "s", 0, proto.Payload.ARRAY, data.dtype, data.shape, data.compression, b"{}", 0, 0, 0
    )
    try:
        out = decompress(payload, record)
    except InvalidFrame:
        return "refused"
    assert len(out) == np.dtype(data.dtype).itemsize * int(np.prod(data.shape))
    return "ok"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_mutated_stream_v2_messages_are_used_or_refused(compression):
    rng = random.Random(compression)
    frames = {c: np.random.default_rng(1).poisson(2, (24, 40)).astype("<u2") for c in CHANNELS}
    originals = [
        encode(image_message(1, "u", 0, frames, compression)),
        encode(start_message(1, "u", CHANNELS, shape=(24, 40), tables=True)),
    ]
    outcomes: dict[str, int] = {}
    for i in range(400):
        raw = mutate(rng, originals[i % 2])
        source = DectrisSource("dectris:x", "tcp://x:1")
        try:
            items = source.translate(decode_message(raw), PRODUCER)
        except (StreamV2Error, HidraError) as err:
            assert str(err), "a refusal names what is wrong"
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            continue
        for _, data, _ in items:
            if isinstance(data, Encoded):
                result = read_back(data)
                outcomes[f"read {result}"] = outcomes.get(f"read {result}", 0) + 1
        outcomes["used"] = outcomes.get("used", 0) + 1
    assert outcomes.get("refused", 0) > 0 and outcomes.get("used", 0) > 0, outcomes


def test_mutated_stream_v1_messages_are_used_or_refused():
    rng = random.Random(1)
    array = np.random.default_rng(2).poisson(2, (20, 30)).astype("<u4")
    tables = {
        "flatfield": np.ones((20, 30), "<f4"),
        "pixel_mask": np.zeros((20, 30), "<u4"),
        "countrate": np.ones((100, 2), "<f4"),
    }
    originals = [header_parts(1, "all", {"a": 1}, tables)]
    for encoding in ENCODINGS:
        if encoding.startswith("bs"):
            bits = int(encoding[2:-5])
            originals.append(image_parts(1, 0, array.astype(f"<u{bits // 8}"), encoding))
        else:
            originals.append(image_parts(1, 0, array, encoding))
    refused = used = 0
    for i in range(600):
        parts = [bytes(p) for p in originals[i % len(originals)]]
        k = rng.randrange(len(parts))
        parts[k] = mutate(rng, parts[k])
        if rng.random() < 0.1:
            del parts[rng.randrange(len(parts))]
        source = Dectris1Source("dectris1:x", "tcp://x:1")
        try:
            items = source.translate_parts([SimpleNamespace(buffer=p) for p in parts], PRODUCER)
        except (StreamV1Error, HidraError) as err:
            assert str(err)
            refused += 1
            continue
        used += 1
        for _, data, _ in items:
            if isinstance(data, Encoded):
                read_back(data)
    assert refused > 0 and used > 0 and refused + used == 600
