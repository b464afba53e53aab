"""Fault: the receiver is absent for several seconds while a producer sends, then starts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hidra_ng import Producer
from hidra_ng.testing import ReceiverProcess
from tests.faults.workload import (
    MiB,
    assert_each_exactly_once,
    message,
    read_finished_stream,
)
from tests.helpers import finish_transfer, wait_for

pytestmark = pytest.mark.slow

MESSAGES = 600
SEED = 3
STREAM = "faults/receiver-absent"
SENDER = "absent-receiver"
#: smaller than the workload, so send() blocks on a full spool while the receiver is away
MAX_SPOOL_BYTES = 48 * MiB
#: how long the receiver stays away once the producer is blocked (the fault, not a wait)
ABSENT_SECONDS = 4.0


def send_all(producer: Producer, returned: list[int], errors: list[BaseException]) -> None:
    try:
        for k in range(MESSAGES):
            data, meta = message(SEED, k)
            assert producer.send(STREAM, data, meta) == k
            returned.append(k)
    except BaseException as err:  # reported by the test thread
        errors.append(err)


def test_receiver_absent_then_started_gets_everything_once(tmp_path: Path) -> None:
    # the producer needs the endpoints before the receiver runs: ports chosen now
    receiver = ReceiverProcess(tmp_path / "store", choose_ports=True)
    try:
        with Producer(
            receiver.ingest,
            receiver.api,
            tmp_path / "spool",
            SENDER,
            max_spool_bytes=MAX_SPOOL_BYTES,
            send_timeout=120,
        ) as producer:
            returned: list[int] = []
            errors: list[BaseException] = []
            sender = threading.Thread(target=send_all, args=(producer, returned, errors))
            sender.start()
            wait_for(
                lambda: producer._space_waiters > 0 or errors,
                timeout=60,
                what="send() blocked on the full spool",
            )
            assert not errors, errors
            time.sleep(ABSENT_SECONDS)
            blocked_at = len(returned)
            assert 0 < blocked_at < MESSAGES
            assert producer.stats["acked"] == 0
            assert not producer.receiver_up
            assert producer.spool_messages == blocked_at

            receiver.start()
            finish_transfer(producer, STREAM, sender, errors)

        frames = read_finished_stream(receiver.api, STREAM)
    finally:
        receiver.kill()

    assert_each_exactly_once(frames, SEED, MESSAGES, SENDER)
