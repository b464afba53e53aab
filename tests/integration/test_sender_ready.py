"""``hidra-ng sender --ready-file``: the daemon says what it bound, like the receiver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zmq

from hidra_ng import Consumer
from hidra_ng.testing import ReceiverProcess
from tests.helpers import wait_for
from tests.ops_helpers import DaemonProcess, sender_args


def test_sender_reports_the_endpoint_its_source_bound(
    receiver_process: ReceiverProcess, tmp_path: Path
) -> None:
    rx = receiver_process
    source = "zmq:tcp://127.0.0.1:*?stream=ready"
    ready = tmp_path / "ready.json"
    args = sender_args(
        rx.ingest, rx.api, tmp_path / "spool", [source], extra=("--ready-file", str(ready))
    )
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        with DaemonProcess(args, tmp_path / "sender.log") as sender:
            bound = sender.ready(ready)
            assert bound["metrics_port"] == 0  # off
            endpoint = bound["sources"][source]
            assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
            push.connect(endpoint)
            frame = np.arange(16, dtype=np.uint16)
            header = b'{"stream": "ready", "dtype": "uint16", "shape": [16]}'
            push.send_multipart([header, frame.tobytes()])
            with Consumer(rx.api) as c:
                got = wait_for(lambda: _first(c), timeout=30, what="the frame pushed")
            assert np.array_equal(got.data, frame)
            assert sender.terminate() == 0
    finally:
        push.close(linger=0)
        ctx.term()


def _first(c: Consumer):
    try:
        return c.get("ready", 0, timeout=0.5)
    except Exception:
        return None
