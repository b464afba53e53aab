"""Fault: the receiver takes frames but cannot commit them for a while (disk full, §8).

It stops acknowledging and the senders keep their messages spooled. A sender
cannot tell a stuck receiver from a lost tail of messages, so when acks stall
it resends, but only its first unacknowledged batch, as a probe, and it waits
twice as long before each further probe: copies of its whole window must not
pile up in the sockets' queues (G9) while the receiver is stuck. Once commits
work again, everything arrives exactly once.

The probe schedule itself (waits of 0.25, 0.5, 1, 2 s ...; one batch each) is a
rule of the sender's window, tested without I/O with a simulated clock in
tests/unit/test_gobackn.py; here the real pair shows the effect through public
counters: the producer's ``stats`` and the receiver's metrics.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from hidra_ng import Producer
from hidra_ng.config import ReceiverConfig
from hidra_ng.lmdbenv import DiskFull
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.receiver.planning import AppendResult, Planned
from tests.faults.workload import (
    MiB,
    assert_sender_order,
    check,
    payload_digest,
    read_finished_stream,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

SEED = 4
STREAM = "faults/receiver-stuck"
SENDER = "stuck-receiver"
MESSAGES = 40
#: messages of exactly 1 MiB go out one per batch, so the first window is 8 messages
WINDOW_MESSAGES = 8
RESEND_AFTER = 0.25
#: stalls to watch while the receiver is stuck (after 0.25, 0.5, 1 and 2 s)
STALLS = 4


class StuckStore:
    """Makes ``receiver.store.write`` fail like a full disk while ``stuck`` is set."""

    def __init__(self, receiver: Receiver) -> None:
        self.stuck = threading.Event()
        self._write = receiver.store.write
        receiver.store.write = self.write  # the committer thread looks it up per commit

    def write(self, planned: Planned) -> AppendResult:
        if self.stuck.is_set():
            raise DiskFull("simulated: no space left on device")
        return self._write(planned)


def payload(k: int) -> bytes:
    return np.random.default_rng([SEED, k]).bytes(MiB)


def commit_failures(receiver: Receiver) -> float:
    value = receiver.metrics.registry.get_sample_value("hidra_ng_receiver_commit_failures_total")
    return value or 0.0


def test_stuck_receiver_gets_probes_not_copies_of_the_window(
    tmp_path: Path, receiver_config: ReceiverConfig
) -> None:
    receiver = Receiver(receiver_config)
    store = StuckStore(receiver)
    store.stuck.set()
    receiver.start()
    ep = receiver.endpoints
    try:
        with Producer(
            ep["ingest"],
            ep["api"],
            tmp_path / "spool",
            SENDER,
            window_bytes=WINDOW_MESSAGES * MiB,
            resend_after_seconds=RESEND_AFTER,
        ) as producer:
            # one commit, so the link finds them all spooled and pushes its first window
            # at once, before any stall (sent one by one on a slow machine, the first stall
            # could come while the window is still filling)
            producer.send_many(STREAM, [(payload(k), {"k": k}) for k in range(MESSAGES)])
            wait_for(
                lambda: producer.stats["probes"] >= STALLS, timeout=30, what=f"{STALLS} stalls"
            )
            assert commit_failures(receiver) >= 1
            assert producer.stats["acked"] == 0
            # each resend is one batch (here one message), not the window again; the
            # probe is counted just before it is pushed
            stats = producer.stats
            wait_for(
                lambda: producer.stats["sent"] >= WINDOW_MESSAGES + stats["probes"],
                what="the resend of the last stall",
            )
            stats = producer.stats
            assert stats["sent"] <= WINDOW_MESSAGES + stats["probes"]

            store.stuck.clear()
            producer.finish(STREAM)
            producer.flush(timeout=60)
        frames = read_finished_stream(ep["api"], STREAM)
    finally:
        receiver.stop()

    expected = {payload_digest(payload(k)): k for k in range(MESSAGES)}
    verdict = check(frames, expected, required=range(MESSAGES))
    assert verdict.ok, verdict.summary()
    assert verdict.present == list(range(MESSAGES))
    assert_sender_order(frames, expected, SENDER)
