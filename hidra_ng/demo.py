"""``hidra-ng demo``: the whole path on one machine, with nothing set up beforehand.

A receiver runs as its own process on free loopback ports and a temporary
data directory; a simulated detector (Poisson frames) sends through a durable
spool; a live subscriber watches; every frame is read back by index and
compared with what was sent; a summary says what happened and where the data lies.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hidra_ng.client.consumer import Consumer
from hidra_ng.client.subscriber import Subscriber
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources.simulate import SimulateSource
from hidra_ng.testing import ReceiverProcess
from hidra_ng.wire.protocol import StreamInfo

STREAM = "demo/scan_0001"


def run_demo(
    frames: int = 100,
    keep: bool = False,
    shape: tuple[int, int] = (2048, 1024),
    say: Callable[[str], object] = print,
) -> bool:
    """Run the demo, telling what happens line by line through ``say``; True if all went well."""
    root = Path(tempfile.mkdtemp(prefix="hidra-ng-demo-"))
    echo = say
    try:
        echo(f"hidra-ng demo: data under {root}")
        with ReceiverProcess(root / "store") as rx:
            pid = rx.proc.pid if rx.proc is not None else "?"  # started: never "?"
            echo(f"receiver up (pid {pid}): ingest {rx.ingest}, api {rx.api}, publish {rx.publish}")
            live = _LiveCounter(rx.publish)
            live.start()
            digests, nbytes = _send(rx, root, frames, shape, echo)
            replayed, mismatches, info = _read_back(rx, digests, nbytes, echo)
            live.stop()
            echo(
                f"live subscriber saw {live.count} frames as the receiver took them in, before"
                f" their fsync (it may skip frames when slow; it never slows ingest)"
            )
            echo(
                f"stream {STREAM}: indices {info.first}..{info.last}, {info.bytes} bytes,"
                f" finished={info.finished}"
            )
            code = rx.terminate()
            echo(f"receiver stopped with exit code {code}")
        echo(f"the data lay in {root / 'store'} (LMDB), the sender's spool in {root / 'spool'}")
        echo(
            "to watch frames live in a browser: start a receiver and a sender as in the"
            " README's quick start, then run `hidra-ng view` and open http://127.0.0.1:8080/"
        )
        return not (mismatches or replayed != frames or info.count != frames or code != 0)
    finally:
        if keep:
            echo(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            echo("temporary data removed (use --keep to keep it)")


def _send(
    rx: ReceiverProcess,
    root: Path,
    frames: int,
    shape: tuple[int, int],
    echo: Callable[[str], object],
) -> tuple[list[str], int]:
    """Simulated frames through a Producer until all are acked; their sha256s and bytes."""
    source = SimulateSource(name="demo", stream=STREAM, shape=shape, count=frames, rate=0)
    pool = source.frames()
    digests = [
        hashlib.sha256(pool[i % len(pool)]).hexdigest()  # type: ignore[arg-type]
        for i in range(frames)
    ]
    nbytes = pool[0].nbytes * frames

    with Producer(rx.ingest, rx.api, root / "spool", "demo-detector") as producer:
        started = time.perf_counter()
        stop = threading.Event()
        source.run(producer, stop)
        producer.finish(STREAM)
        spooled = time.perf_counter() - started
        producer.flush(timeout=120)
        acked = time.perf_counter() - started
    echo(
        f"sent {frames} frames of {shape[0]}x{shape[1]} uint16"
        f" ({nbytes / 1e6:.0f} MB): spooled in {spooled:.2f} s,"
        f" all acknowledged (durable at the receiver) after {acked:.2f} s"
        f" = {nbytes / acked / 1e9:.2f} GB/s"
    )
    return digests, nbytes


def _read_back(
    rx: ReceiverProcess, digests: list[str], nbytes: int, echo: Callable[[str], object]
) -> tuple[int, int, StreamInfo]:
    """Replay the stream and compare each frame with what was sent: (replayed, mismatches,
    the stream's info)."""
    with Consumer(rx.api) as consumer:
        info = consumer.info(STREAM)
        started = time.perf_counter()
        mismatches = replayed = 0
        for frame in consumer.replay(STREAM):
            replayed += 1
            digest = hashlib.sha256(frame.data).hexdigest()  # type: ignore[arg-type]
            if digest != digests[frame.meta["frame"]]:
                mismatches += 1
        read = time.perf_counter() - started
        middle = consumer.get(STREAM, info.count // 2)
    echo(
        f"replayed and checked (sha256) {replayed} frames in {read:.2f} s"
        f" = {nbytes / read / 1e9:.2f} GB/s;"
        f" {mismatches} differ from what was sent; get({info.count // 2}) returns"
        f" frame {middle.meta['frame']}"
    )
    return replayed, mismatches, info


class _LiveCounter(threading.Thread):
    def __init__(self, publish: str) -> None:
        super().__init__(daemon=True)
        self.count = 0
        self._stop_event = threading.Event()
        self._sub = Subscriber(publish, [STREAM])

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                if self._sub.receive(timeout=0.1) is not None:
                    self.count += 1
        finally:
            self._sub.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
