"""SIGTERM (SPEC §8): the receiver stops cleanly under load and a restart is a non-event;
the sender daemon keeps its unsent spool for the next start.

Outcomes are counted Jepsen style: every message sent is stored exactly once
(identified by the sha256 of its payload), nothing else is stored.
"""

from __future__ import annotations

import collections
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from hidra_ng import Consumer, Producer
from hidra_ng.receiver.store import Store
from hidra_ng.sender.spool import Spool
from hidra_ng.testing import ReceiverProcess
from tests.helpers import digest, wait_for
from tests.ops_helpers import DaemonProcess, sender_args, try_scrape

pytestmark = pytest.mark.slow

BATCH = 10
STREAM = "shutdown/load"


def payload(k: int) -> bytes:
    """Message ``k``: 4 to 64 KiB of bytes unique to k."""
    rng = np.random.default_rng([7, k])
    return rng.bytes(int(rng.integers(4, 65)) * 1024)


def read_stream(api: str, stream: str) -> list:
    with Consumer(api) as consumer:
        count = consumer.info(stream).count
        return [consumer.get(stream, i, timeout=10) for i in range(count)]


class Load(threading.Thread):
    """Sends messages 0, 1, 2, ... in batches until stopped; ``sent`` says how many."""

    def __init__(self, producer: Producer) -> None:
        super().__init__(name="load")
        self.producer = producer
        self.sent = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                ks = range(self.sent, self.sent + BATCH)
                self.producer.send_many(STREAM, [(payload(k), {"k": k}) for k in ks])
                self.sent += BATCH
        except BaseException as err:
            self.error = err


def test_sigterm_receiver_under_load_then_restart_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    receiver = ReceiverProcess(tmp_path / "store")
    receiver.start()
    try:
        with Producer(receiver.ingest, receiver.api, tmp_path / "spool", "sigterm") as producer:
            load = Load(producer)
            load.start()
            try:
                wait_for(lambda: producer.stats["acked"] >= 100, timeout=60, what="100 acks")
                assert receiver.terminate(timeout=30) == 0, receiver.read_log()
                assert "Traceback" not in receiver.read_log()

                # The store was closed cleanly, and before exiting the receiver
                # acknowledged everything it committed: the commit in flight was
                # finished and its acks sent.
                store = Store(tmp_path / "store", map_bytes=64 << 20)
                try:
                    stored = store.info(STREAM).count
                finally:
                    store.close()
                assert stored >= 100
                wait_for(
                    lambda: producer.stats["acked"] == stored,
                    timeout=10,
                    what=f"acks of the {stored} stored messages",
                )

                receiver.start()  # same ports, same store; the load goes on
                wait_for(
                    lambda: producer.stats["acked"] >= stored + 100,
                    timeout=60,
                    what="100 more acks after the restart",
                )
            finally:
                load.halt.set()
                load.join(timeout=60)
            assert not load.is_alive() and load.error is None, load.error
            producer.finish(STREAM)
            producer.flush(timeout=120)

        frames = read_stream(receiver.api, STREAM)
    finally:
        receiver.kill()

    expected = {digest(payload(k)): k for k in range(load.sent)}
    times = collections.Counter(digest(f.data) for f in frames)
    lost = [k for d, k in expected.items() if times[d] == 0]
    duplicated = {expected[d]: n for d, n in times.items() if n > 1 and d in expected}
    unexpected = [d for d in times if d not in expected]
    assert (lost, duplicated, unexpected) == ([], {}, []), (lost[:10], duplicated, unexpected)
    assert [f.index for f in frames] == list(range(load.sent))
    assert [f.meta["k"] for f in frames] == list(range(load.sent)), "send() order kept"


SIM_COUNT = 200
SIM_SOURCE = f"simulate:?count={SIM_COUNT}&rate=50&shape=64x64&stream=sim"
SENDER_ID = "sigterm-sender"
_COUNT = struct.Struct(">Q")  # the simulate source's checkpoint: frames spooled


def test_sigterm_sender_keeps_its_spool_and_resumes_exactly(tmp_path: Path) -> None:
    # No receiver yet: every frame stays spooled (its ports reserved now, for the sender).
    receiver = ReceiverProcess(tmp_path / "store", choose_ports=True)
    spool_dir = tmp_path / "spool"
    ready = tmp_path / "sender1-ready.json"
    args = sender_args(
        receiver.ingest,
        receiver.api,
        spool_dir,
        [SIM_SOURCE],
        sender_id=SENDER_ID,
        metrics_port=-1,
        extra=("--ready-file", str(ready)),
    )
    with DaemonProcess(args, tmp_path / "sender1.log") as daemon:
        metrics_port = daemon.ready(ready)["metrics_port"]

        def spooled() -> float:
            samples = try_scrape(metrics_port) or {}
            return samples.get(("hidra_ng_sender_spool_messages", ()), 0)

        wait_for(lambda: spooled() >= 20, timeout=30, what="20 frames spooled")
        assert daemon.terminate(timeout=30) == 0, daemon.read_log()
        assert "Traceback" not in daemon.read_log()

    spool = Spool(spool_dir, SENDER_ID)
    try:
        kept = spool.count
        checkpoint = spool.checkpoint(SIM_SOURCE)
    finally:
        spool.close()
    assert 20 <= kept < SIM_COUNT, "SIGTERM came mid-run and nothing was sent"
    assert checkpoint is not None and _COUNT.unpack(checkpoint)[0] == kept

    # Receiver up, sender restarted: it sends the spool, then resumes the source.
    receiver.start()
    try:
        args2 = sender_args(
            receiver.ingest, receiver.api, spool_dir, [SIM_SOURCE], sender_id=SENDER_ID
        )
        with DaemonProcess([*args2, "--exit-when-done"], tmp_path / "sender2.log") as daemon:
            assert daemon.wait(timeout=60) == 0, daemon.read_log()
        frames = read_stream(receiver.api, "sim")
    finally:
        receiver.kill()
    numbers = collections.Counter(f.meta["frame"] for f in frames)
    assert sorted(numbers) == list(range(SIM_COUNT)), "every frame number arrived"
    assert set(numbers.values()) == {1}, "and each once"
    assert [f.meta["frame"] for f in frames] == list(range(SIM_COUNT)), "in order"
