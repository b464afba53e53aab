"""The receiver's admission decision, without I/O: which messages of a batch to store.

Ordering and exactly-once follow go-back-N per sender incarnation (SPEC G3-G5,
docs/adr/0001-ack-path.md): a message is stored only if its seq is the next one
expected from its incarnation; an older seq is a duplicate (acknowledged again,
stored nothing); a newer one means something was lost in transit, and the
sender is asked to resend from the expected seq (a gap). The envelope's
``floor`` (the sender's first unacknowledged seq) lets a store that lost
acknowledged messages (restored from an older copy) take the sender's word
for what it already holds.

:func:`admit` decides for a whole batch (one group commit) from the last
committed seq of each incarnation; :class:`~hidra_ng.receiver.store.Store`
writes what it accepted and commits the new last seqs in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hidra_ng.wire.protocol import Envelope

#: (sender id, incarnation)
Incarnation = tuple[str, int]


@dataclass(slots=True)
class Plan:
    """What to do with one batch."""

    #: positions in the batch of the messages to store, in order
    accepted: list[int] = field(default_factory=list)
    #: the last seq of each incarnation once the batch is committed (to store with it)
    last_seqs: dict[Incarnation, int] = field(default_factory=dict)
    #: the cumulative ack to send each incarnation heard from after the commit
    acks: dict[Incarnation, int] = field(default_factory=dict)
    #: incarnation -> (expected seq, newest epoch seen): ask for a resend from there
    gaps: dict[Incarnation, tuple[int, int]] = field(default_factory=dict)
    duplicates: int = 0
    #: (sender, first, last): seqs the sender says were acknowledged but the store lacks
    behind: list[tuple[str, int, int]] = field(default_factory=list)


def admit(
    batch: Iterable[tuple[Envelope, int]],
    committed: Callable[[Incarnation], int | None],
) -> Plan:
    """Decide for each ``(envelope, seq)`` of a batch: accept, duplicate or gap.

    ``committed(incarnation)`` is the last seq stored for it, None if none.
    """
    plan = Plan()
    last_seqs, acks, accepted = plan.last_seqs, plan.acks, plan.accepted
    run_env, run_seq, who = None, -2, ("", 0)  # the envelope and seq last accepted
    for position, (env, seq) in enumerate(batch):
        if env is run_env and seq == run_seq + 1 and seq >= env.floor:
            # the next seq of the same sender message: what the steps below decide
            last_seqs[who] = acks[who] = run_seq = seq
            accepted.append(position)
            continue
        run_env = None
        who = (env.sender, env.incarnation)
        last = last_seqs.get(who)
        if last is None:
            last = committed(who)
        if last is None or last + 1 < env.floor:
            if last is not None:
                plan.behind.append((env.sender, last + 1, env.floor - 1))
            last = env.floor - 1
        expected = last + 1
        if seq < expected:
            plan.duplicates += 1
            plan.acks[who] = last
            continue
        if seq > expected:
            # report the newest epoch: the sender ignores gaps of epochs it left
            seen = plan.gaps.get(who)
            plan.gaps[who] = (expected, max(env.epoch, seen[1]) if seen else env.epoch)
            continue
        last_seqs[who] = seq
        acks[who] = seq
        accepted.append(position)
        run_env, run_seq = env, seq
    return plan
