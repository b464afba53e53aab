"""Faults with small messages packed in spool batches and store blocks (ADR 0004).

kill -9 of the receiver while batches of small messages are committed as
blocks, and of a producer process while it spools batches: every message is
stored exactly once (lost = duplicated = unexpected = 0) and every index reads.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hidra_ng import Consumer, NotYetAvailable, Producer
from hidra_ng.sender.spool import Spool
from hidra_ng.testing import ReceiverProcess
from tests.faults.packed_workload import assert_small_each_exactly_once, small_message
from tests.faults.workload import read_finished_stream
from tests.helpers import finish_transfer, wait_for

pytestmark = pytest.mark.slow

MESSAGES = 6400  # 4 phases of 8 batches
BATCH = 200
SEED = 17
JOB = Path(__file__).with_name("packed_job.py")


def stored(api: str, stream: str) -> int:
    with Consumer(api, request_timeout=30.0) as consumer:
        try:
            return consumer.info(stream).count
        except NotYetAvailable:
            return 0


PHASES = 4  # the receiver is killed in each of the first three


def send_batches(
    producer: Producer, stream: str, gates: list[threading.Event], errors: list[BaseException]
) -> None:
    """Spool the workload in batches, a quarter at a time: phase p starts once gates[p] is set,
    so each kill finds the batches of its phase spooled and in flight, not all done."""
    try:
        per_phase = MESSAGES // PHASES
        for phase in range(PHASES):
            assert gates[phase].wait(timeout=120), f"phase {phase} never released"
            for first in range(phase * per_phase, (phase + 1) * per_phase, BATCH):
                ks = range(first, first + BATCH)
                assert producer.send_many(stream, [small_message(SEED, k) for k in ks]) == list(ks)
    except BaseException as err:  # reported by the test thread
        errors.append(err)


def test_receiver_killed_while_committing_blocks_loses_and_duplicates_nothing(tmp_path):
    stream, sender = "faults/packed-receiver", "packed-rx-kill"
    receiver = ReceiverProcess(tmp_path / "store")
    receiver.start()
    per_phase = MESSAGES // PHASES
    try:
        with Producer(receiver.ingest, receiver.api, tmp_path / "spool", sender) as producer:
            errors: list[BaseException] = []
            gates = [threading.Event() for _ in range(PHASES)]
            thread = threading.Thread(target=send_batches, args=(producer, stream, gates, errors))
            thread.start()
            for phase in range(PHASES - 1):
                gates[phase].set()
                wait_for(
                    lambda phase=phase: (
                        producer.stats["acked"] >= phase * per_phase + BATCH or errors
                    ),
                    timeout=90,
                    what=f"the first batch of phase {phase} acknowledged",
                )
                assert not errors, errors
                acked = producer.stats["acked"]
                receiver.kill()
                assert receiver.proc.returncode == -9
                receiver.start()
                assert stored(receiver.api, stream) >= acked  # G1 over blocks
            gates[-1].set()
            finish_transfer(producer, stream, thread, errors)
        frames = read_finished_stream(receiver.api, stream)
    finally:
        receiver.kill()
    assert_small_each_exactly_once(frames, SEED, MESSAGES, sender)
    assert [f.seq for f in frames] == list(range(MESSAGES))


def start_job(receiver: ReceiverProcess, spool_dir: Path, stream: str, sender: str):
    args = [receiver.ingest, receiver.api, str(spool_dir), sender, stream, str(SEED)]
    return subprocess.Popen(
        [sys.executable, str(JOB), *args, str(MESSAGES), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_producer_killed_mid_batch_is_finished_by_a_new_process(tmp_path, receiver_process):
    stream, sender = "faults/packed-producer", "packed-tx-kill"
    spool_dir = tmp_path / "spool"
    first = start_job(receiver_process, spool_dir, stream, sender)
    try:
        assert first.stdout.readline() == "resuming at 0\n"
        wait_for(
            lambda: (
                stored(receiver_process.api, stream) >= MESSAGES // 4 or first.poll() is not None
            ),
            timeout=90,
            what=f"{MESSAGES // 4} messages stored",
        )
        first.kill()
        assert first.wait() == -9
        assert stored(receiver_process.api, stream) < MESSAGES, "the kill must come mid-transfer"
    finally:
        first.kill()
        first.wait()
        first.stdout.close()

    spool = Spool(spool_dir, sender)  # whole batches only: the checkpoint is in their commit
    try:
        spooled = int(spool.checkpoint("packed_job"))
        assert spool.next_seq in (spooled, spooled + 1)
        assert spooled % BATCH == 0 or spooled == MESSAGES
    finally:
        spool.close()

    second = start_job(receiver_process, spool_dir, stream, sender)
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        second.kill()
    assert second.returncode == 0
    assert out == f"resuming at {spooled}\n"
    frames = read_finished_stream(receiver_process.api, stream)
    assert_small_each_exactly_once(frames, SEED, MESSAGES, sender)
    assert [f.seq for f in frames] == list(range(MESSAGES))
