"""Which messages retention removes, read in one transaction (no writes here).

Messages go oldest first, per stream in the order the streams were created:
by age, every message stored before a cutoff; by size, the oldest until the
stored payload bytes fit. A message kept alone goes with its keys; a block
goes once all its messages are removed. A block only partly removed stays
whole on disk until then (at most ``BLOCK_MAX_BYTES`` of payload per stream),
while the stream's ``first`` index already moved past the removed part, so
those indices read as ``Gone`` at once (ADR 0004).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from hidra_ng.receiver import layout
from hidra_ng.wire.protocol import Record

if TYPE_CHECKING:
    from hidra_ng.receiver.store import StreamMeta


@dataclass
class RetentionPlan:
    removed: int = 0  # messages
    alone: list[bytes] = field(default_factory=list)  # keys in records and payloads
    blocks: list[bytes] = field(default_factory=list)  # keys in blocks
    touched: set[str] = field(default_factory=set)  # streams whose first index moved


def plan_retention(
    txn,
    dbs: dict,
    metas: dict[str, StreamMeta],
    total: int,
    max_bytes: int,
    cutoff: float,
    max_delete: int,
) -> RetentionPlan:
    """Plan the removal of at most ``max_delete`` messages; updates ``metas`` to match.

    ``metas`` (copies, in stream creation order) get their new ``first`` and
    ``bytes``; ``total`` is the sum of their bytes; a ``cutoff`` of 0 or a
    ``max_bytes`` of 0 means no such limit.
    """
    dec = msgspec.msgpack.Decoder(Record)
    plan = RetentionPlan()
    for name, meta in metas.items():
        partial: bytes | None = None  # the block the stream's first index is now inside
        for index, value, _, block in layout.scan(txn, dbs, meta.id, meta.first, payloads=False):
            if plan.removed >= max_delete:
                break
            record = dec.decode(value)
            if not ((cutoff and record.stored < cutoff) or (max_bytes and total > max_bytes)):
                break
            if block is None:
                plan.alone.append(layout.frame_key(meta.id, index))
            elif block != partial:
                if partial is not None:
                    plan.blocks.append(partial)  # every message of it is removed now
                partial = block
            meta.first = index + 1
            meta.bytes -= record.nbytes
            total -= record.nbytes
            plan.removed += 1
            plan.touched.add(name)
        if partial is not None and layout.KEY.unpack(partial)[1] < meta.first:
            plan.blocks.append(partial)
        if plan.removed >= max_delete:
            break
    return plan
