"""Fault: a producer process is killed with SIGKILL mid-transfer; a new one finishes the job.

G2: whatever the killed process spooled (its send() returned, or its commit
was durable even though send() had not returned yet) arrives exactly once,
delivered from the spool by the new process, which resumes the job exactly
after the last spooled message. ``spool_sync="batch"`` must survive a crash
of the process (not of the machine) just the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hidra_ng import Consumer, NotYetAvailable
from hidra_ng.sender.spool import Spool
from hidra_ng.testing import ReceiverProcess
from tests.faults.workload import (
    assert_each_exactly_once,
    read_finished_stream,
)
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("producer_job.py")
CHECKPOINT = "producer_job"  # the name producer_job.py saves its position under
MESSAGES = 600
SEED = 2
STREAM = "faults/producer-kill"
SENDER = "kill-producer"
#: kill the producer once the receiver stored this many messages
KILL_AFTER_STORED = 150


def start_job(receiver: ReceiverProcess, spool_dir: Path, spool_sync: str) -> subprocess.Popen:
    args = [receiver.ingest, receiver.api, str(spool_dir), SENDER, STREAM, str(SEED)]
    return subprocess.Popen(
        [sys.executable, str(JOB), *args, str(MESSAGES), spool_sync],
        stdout=subprocess.PIPE,
        text=True,
    )


def stored(consumer: Consumer) -> int:
    try:
        return consumer.info(STREAM).count
    except NotYetAvailable:
        return 0


@pytest.mark.parametrize("spool_sync", ["always", "batch"])
def test_killed_producer_is_finished_by_a_new_process(
    tmp_path: Path, receiver_process: ReceiverProcess, spool_sync: str
) -> None:
    spool_dir = tmp_path / "spool"
    first = start_job(receiver_process, spool_dir, spool_sync)
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
            stored_after_kill = stored(consumer)
    finally:
        first.kill()
        first.wait()
        first.stdout.close()
    assert stored_after_kill < MESSAGES, "the kill must come before the transfer is done"

    # What the killed process spooled: its checkpoint counts the messages, and the
    # spool numbered them 0, 1, ... (one seq per message; the finish comes last).
    spool = Spool(spool_dir, SENDER)
    try:
        spooled = int(spool.checkpoint(CHECKPOINT))
        assert spool.next_seq in (spooled, spooled + 1)
    finally:
        spool.close()
    assert KILL_AFTER_STORED <= spooled <= MESSAGES

    second = start_job(receiver_process, spool_dir, spool_sync)
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        second.kill()
    assert second.returncode == 0
    assert out == f"resuming at {spooled}\n"

    frames = read_finished_stream(receiver_process.api, STREAM)
    assert_each_exactly_once(frames, SEED, MESSAGES, SENDER)
    # the new process continued the numbering of the spool
    assert [f.seq for f in frames] == list(range(MESSAGES))
