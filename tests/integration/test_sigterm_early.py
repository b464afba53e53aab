"""SIGTERM while a daemon's constructor runs (SPEC §8): a clean stop, exit code 0.

The constructors bind sockets, open the store or the spool, take the state
directory's lock and (the bridge) the broker lease before ``service.run``
installs its handlers; the daemon commands catch SIGTERM before them, so a stop
requested then is the same clean stop as later: exit code 0, ``stop()`` run
(the lease released, the spool closed), not death by the signal (-15).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hidra_ng.sender.spool import Spool
from hidra_ng.testing import ReceiverProcess
from tests.ops_helpers import clean_env

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "sigterm_early.py"


def run_signalled(target: str, args: list[str], log: Path) -> int:
    """Run ``hidra-ng -v ARGS`` whose ``target`` constructor ends with a SIGTERM; its exit code."""
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), target, "-v", *args],
            stdout=out,
            stderr=out,
            env=clean_env(),
            timeout=120,
        )
    return proc.returncode


def assert_clean_stop(code: int, log: Path) -> None:
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "constructed; sending SIGTERM" in text
    assert "SIGTERM received, stopping" in text, text


def test_receiver_signalled_in_its_constructor_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "store"
    args = [
        "receiver", "--data-dir", str(data), "--ingest", "tcp://127.0.0.1:*",
        "--api", "tcp://127.0.0.1:*", "--publish", "tcp://127.0.0.1:*", "--metrics-port", "0",
    ]  # fmt: skip
    log = tmp_path / "receiver.log"
    assert_clean_stop(run_signalled("hidra_ng.receiver.daemon:Receiver", args, log), log)
    # the store was closed: a receiver opens it again and stops cleanly
    assert ReceiverProcess(data).start().terminate() == 0


def test_sender_signalled_in_its_constructor_stops_cleanly(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    args = [
        "sender", "--ingest", "tcp://127.0.0.1:9", "--api", "tcp://127.0.0.1:9",
        "--spool-dir", str(spool), "--sender-id", "early", "--metrics-port", "0",
        "--source", "simulate:?shape=4x4&dtype=uint16&rate=0&count=3&stream=early/sim",
    ]  # fmt: skip
    log = tmp_path / "sender.log"
    assert_clean_stop(run_signalled("hidra_ng.sender.daemon:SenderDaemon", args, log), log)
    Spool(spool, "early").close()  # closed cleanly: it opens again, as that sender's


def test_writer_signalled_in_its_constructor_stops_cleanly(tmp_path: Path, receiver) -> None:
    args = [
        "write", "--api", receiver.endpoints["api"], "--dir", str(tmp_path / "out"),
        "--metrics-port", "0",
    ]  # fmt: skip
    log = tmp_path / "writer.log"
    assert_clean_stop(run_signalled("hidra_ng.writer.daemon:WriterDaemon", args, log), log)


def test_bridge_signalled_in_its_constructor_stops_cleanly(
    tmp_path: Path, rabbitmq, receiver
) -> None:
    args = [
        "bridge", "--api", receiver.endpoints["api"], "--rabbitmq", rabbitmq.stream_uri,
        "--state-dir", str(tmp_path / "b"), "--metrics-port", "0", "--prefix", "t-early",
    ]  # fmt: skip
    log = tmp_path / "bridge.log"
    assert_clean_stop(run_signalled("hidra_ng.bridge:Bridge", args, log), log)
    # the next bridge of the prefix takes the lease at once, and stops as cleanly
    log2 = tmp_path / "bridge2.log"
    assert_clean_stop(run_signalled("hidra_ng.bridge:Bridge", args, log2), log2)
    second = log2.read_text(errors="replace")
    assert "holding the broker lease" in second
    assert "for it to renew" not in second
