"""A sender daemon stops promptly even while a source waits for room in a full spool."""

from __future__ import annotations

import threading

from hidra_ng.config import SenderConfig
from hidra_ng.sender.daemon import SenderDaemon
from hidra_ng.sender.sources import parse
from hidra_ng.sender.spool import Spool
from tests.helpers import wait_for


def test_stop_does_not_wait_for_the_send_timeout(tmp_path, absent_endpoints):
    ingest, api = absent_endpoints  # no receiver: the spool only fills
    config = SenderConfig(
        ingest=ingest,
        api=api,
        spool_dir=str(tmp_path / "spool"),
        sender_id="stopper",
        max_spool_bytes=1 << 20,
        send_timeout_seconds=60.0,
        metrics_port=0,
    )
    source = parse("simulate:?shape=128x128&dtype=uint16&count=100&rate=0&stream=s")  # 32 KiB
    daemon = SenderDaemon(config, [source])
    daemon.start()
    wait_for(  # the source is blocked: the spool is full and stays as it is
        lambda: daemon.producer._space_waiters > 0,
        what="the source to wait for room in the full spool",
    )
    spooled = daemon.producer.spool_messages
    stopper = threading.Thread(target=daemon.stop)
    stopper.start()
    stopper.join(20)  # far less than the 60 s send timeout
    assert not stopper.is_alive(), "stop() waited for the source's send timeout"
    # the source really stopped: it was woken, not abandoned by a join timeout
    assert not any(t.is_alive() for t in daemon._threads)
    spool = Spool(tmp_path / "spool", "stopper")
    try:
        assert spool.count == spooled  # what was spooled stays for the next start
    finally:
        spool.close()
