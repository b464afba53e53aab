"""A full disk pauses the flow and loses nothing (SPEC §8).

Each test runs on a real small filesystem (a tmpfs mounted by the test, which
needs root) where it can, else on an LMDB map capped at its current size; the
test reports which one ran (``-rA`` shows it; it is also a test property).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from hidra_ng import Consumer, Producer, SpoolFull
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.sender.spool import Spool
from tests.helpers import digest, wait_for

pytestmark = pytest.mark.slow

MiB = 1 << 20


@contextlib.contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[bool]:
    """Mount a tmpfs of ``size_mib`` at ``path``; yields False if that is not possible."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def payloads(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(MiB) for _ in range(n)]


def test_receiver_with_a_full_disk_stops_acking_serves_reads_and_resumes(
    tmp_path, receiver_config, record_property
):
    fs = tmp_path / "small"
    with small_filesystem(fs, 96) as mounted:
        filler = fs / "filler"
        config = msgspec.structs.replace(receiver_config, data_dir=str(fs / "store"))
        rx = Receiver(config)
        if mounted:
            filler.write_bytes(bytes(56 * MiB))  # leaves ~40 MiB for 60 MiB of frames
        else:
            rx.store.env.max_map_bytes = rx.store.env.map_bytes  # the map may not grow
        record_property("filesystem", "tmpfs 96 MiB" if mounted else "capped LMDB map")
        print("disk full simulated with", "a tmpfs" if mounted else "a capped LMDB map")
        rx.start()
        sent = payloads(60, seed=1)
        ep = rx.endpoints
        try:
            with (
                Producer(ep["ingest"], ep["api"], tmp_path / "spool", "full") as p,
                Consumer(ep["api"]) as c,
            ):
                for i, data in enumerate(sent):
                    p.send("d", data, {"i": i})
                wait_for(lambda: rx.metrics.commit_failures._value.get() >= 1, timeout=30,
                         what="a failing commit")  # fmt: skip
                stored = c.info("d").count
                assert 0 < stored < len(sent)
                assert c.get("d", 0).data == sent[0]  # reads go on while writes fail
                assert p.spool_messages >= len(sent) - stored  # the rest waits, spooled
                if mounted:
                    filler.unlink()
                else:
                    rx.store.env.max_map_bytes = 1 << 40
                p.flush(60)
                info = c.info("d")
                assert (info.first, info.count) == (0, len(sent))
                got = [digest(f.data) for f in c.replay("d")]
                assert got == [digest(d) for d in sent]  # none lost, none twice, in order
        finally:
            rx.stop()


def test_spool_on_a_full_disk_raises_spool_full_and_keeps_what_it_took(
    tmp_path, receiver_config, record_property, absent_endpoints
):
    spool_dir = tmp_path / "small" / "spool"
    sent = payloads(40, seed=2)
    taken = 0
    with small_filesystem(tmp_path / "small", 24) as mounted:
        record_property("filesystem", "tmpfs 24 MiB" if mounted else "capped LMDB map")
        print("spool disk full simulated with", "a tmpfs" if mounted else "a capped LMDB map")
        # no receiver yet: everything stays in the spool
        p = Producer(*absent_endpoints, spool_dir, "spooly", send_timeout=1.0)
        if not mounted:
            p._spool.env.max_map_bytes = p._spool.env.map_bytes
        try:
            with pytest.raises(SpoolFull, match="cannot take"):
                for data in sent:
                    p.send("s", data)
                    taken += 1
        finally:
            p.close()
        assert 0 < taken < len(sent)
        spool = Spool(spool_dir, "spooly")
        try:
            assert spool.count == taken  # nothing half-written, nothing lost
        finally:
            spool.close()
        ingest, api = absent_endpoints  # the receiver comes up there now
        config = msgspec.structs.replace(receiver_config, ingest=ingest, api=api)
        with (
            Receiver(config) as rx,
            Producer(ingest, api, spool_dir, "spooly") as p,
            Consumer(api) as c,
        ):
            p.flush(60)
            assert [digest(f.data) for f in c.replay("s")] == [digest(d) for d in sent[:taken]]
            assert rx.store.info("s").count == taken
