"""Fault: a producer process is killed with SIGKILL mid-transfer; a new one finishes the job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for
from workload import assert_sender_order, check, expected_digests, read_finished_stream

from hidra_ng import Consumer, NotYetAvailable
from hidra_ng.localrun import ReceiverProcess
from hidra_ng.spool import Spool

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("producer_job.py")
MESSAGES = 600
SEED = 2
STREAM = "faults/producer-kill"
SENDER = "kill-producer"
#: kill the producer once the receiver stored this many messages
KILL_AFTER_STORED = 150


def start_job(receiver: ReceiverProcess, spool_dir: Path) -> subprocess.Popen:
    args = [receiver.ingest, receiver.api, str(spool_dir), SENDER, STREAM, str(SEED)]
    return subprocess.Popen(
        [sys.executable, str(JOB), *args, str(MESSAGES)],
        stdout=subprocess.PIPE,
        text=True,
    )


def stored(consumer: Consumer) -> int:
    try:
        return consumer.info(STREAM).count
    except NotYetAvailable:
        return 0


def test_killed_producer_is_finished_by_a_new_process(
    tmp_path: Path, receiver_process: ReceiverProcess
) -> None:
    spool_dir = tmp_path / "spool"
    first = start_job(receiver_process, spool_dir)
    try:
        assert first.stdout.readline() == "resuming at 0\n"
        with Consumer(receiver_process.api) as consumer:
            wait_for(
                lambda: stored(consumer) >= KILL_AFTER_STORED or first.poll() is not None,
                timeout=60,
                what=f"{KILL_AFTER_STORED} messages stored",
            )
        first.kill()
        assert first.wait() == -9
    finally:
        first.kill()
        first.wait()
        first.stdout.close()

    # What the killed process spooled: its checkpoint counts the messages, and the
    # spool numbered them 0, 1, ... (one seq per message, no finish yet).
    spool = Spool(spool_dir, SENDER)
    try:
        spooled = int(spool.checkpoint("producer_job"))
        assert spool.next_seq == spooled
        unacknowledged = spool.count
    finally:
        spool.close()
    assert KILL_AFTER_STORED <= spooled < MESSAGES, "the kill must come mid-transfer"

    second = start_job(receiver_process, spool_dir)
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        second.kill()
    assert second.returncode == 0
    assert out == f"resuming at {spooled}\n"

    frames = read_finished_stream(receiver_process.api, STREAM)
    expected = expected_digests(SEED, range(MESSAGES))
    verdict = check(frames, expected, required=range(MESSAGES))
    assert verdict.ok, f"{verdict.summary()} ({unacknowledged} spooled at the kill)"
    assert len(frames) == MESSAGES
    assert_sender_order(frames, expected, SENDER)
    assert verdict.present == list(range(MESSAGES))
    # the new process continued the numbering of the spool
    assert [f.seq for f in frames] == list(range(MESSAGES))
