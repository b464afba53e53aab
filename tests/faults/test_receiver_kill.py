"""Fault: the receiver is killed with SIGKILL three times during a transfer (G1, G3, G4, G5)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hidra_ng import Consumer, Producer
from hidra_ng.testing import ReceiverProcess
from tests.faults.workload import (
    assert_each_exactly_once,
    message,
    read_finished_stream,
)
from tests.helpers import finish_transfer, wait_for

pytestmark = pytest.mark.slow

MESSAGES = 1500
SEED = 1
STREAM = "faults/receiver-kill"
SENDER = "kill-receiver"
BATCH = 10
#: kill the receiver once this share of the messages is acknowledged
KILL_AT = (0.2, 0.45, 0.7)


def send_all(producer: Producer, errors: list[BaseException]) -> None:
    """Spool the workload in commits of ``BATCH``: faster than the link drains it, so
    every kill finds a full window of messages in flight."""
    try:
        for first in range(0, MESSAGES, BATCH):
            ks = range(first, min(first + BATCH, MESSAGES))
            assert producer.send_many(STREAM, [message(SEED, k) for k in ks]) == list(ks)
    except BaseException as err:  # reported by the test thread
        errors.append(err)


def stored_count(api: str) -> int:
    with Consumer(api, request_timeout=30.0) as consumer:
        return consumer.info(STREAM).count


def test_receiver_killed_three_times_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "store")
    receiver.start()
    try:
        with Producer(receiver.ingest, receiver.api, tmp_path / "spool", SENDER) as producer:
            errors: list[BaseException] = []
            sender = threading.Thread(target=send_all, args=(producer, errors))
            sender.start()
            for share in KILL_AT:
                wait_for(
                    lambda share=share: producer.stats["acked"] >= share * MESSAGES,
                    timeout=90,
                    what=f"{share:.0%} of the messages acknowledged",
                )
                acked = producer.stats["acked"]
                receiver.kill()
                assert receiver.proc.returncode == -9
                assert acked < MESSAGES, "the kill must come during the transfer"
                receiver.start()
                # G1: what was acknowledged before the kill survived it
                assert stored_count(receiver.api) >= acked
            finish_transfer(producer, STREAM, sender, errors)

        frames = read_finished_stream(receiver.api, STREAM)
    finally:
        receiver.kill()

    assert_each_exactly_once(frames, SEED, MESSAGES, SENDER)
    assert [f.seq for f in frames] == list(range(MESSAGES))
