"""Fault: the scatter-gather example (examples/scatter_gather/) with 10,000 results and the
aggregator killed -9 mid-run and restarted: every image is counted exactly once.

Delivery is at-least-once, so the results stream may hold more than one result for an
image; the aggregate must not: exactly 10,000 distinct images, each with the count
its image has, and the running total equal to the sum of those counts.
"""

from __future__ import annotations

import importlib.util
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from hidra_ng import Consumer, StreamFinished
from hidra_ng.testing import ReceiverProcess
from tests.helpers import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scatter_gather"


def _load_example_common() -> ModuleType:
    """The example's common.py, under a name of its own (not a bare ``common``)."""
    spec = importlib.util.spec_from_file_location("scatter_gather_common", EXAMPLE / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sg = _load_example_common()

IMAGES = 10_000  # each group change is fsynced before its reply (G8): ~100 results/s here
WORKERS = 4
SHAPE = (8, 8)
LAM = 4.0
SEED = 5
KILL_AT = 0.4  # share of the images counted when the aggregator is killed


def script(name: str, *args: object) -> list[str]:
    return [sys.executable, str(EXAMPLE / name), *(str(a) for a in args)]


def counted(state: Path) -> int:
    try:
        with np.load(state) as saved:
            return int(saved["counted"])
    except (OSError, ValueError, KeyError):
        return 0  # not written yet


def wait_exit(proc: subprocess.Popen, timeout: float, what: str) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not finish within {timeout} s") from None


def test_aggregator_killed_counts_every_image_once(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "store")
    receiver.start()
    procs: list[subprocess.Popen] = []
    state = tmp_path / "spots.npz"
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *args: object, log: str) -> subprocess.Popen:
        out = (logs / log).open("a")
        proc = subprocess.Popen(script(name, *args), stdout=out, stderr=subprocess.STDOUT)
        out.close()
        procs.append(proc)
        return proc

    aggregator_args = ("--api", receiver.api, "--state", state, "--every", 200,
                       "--ack-timeout", 3.0)  # fmt: skip
    try:
        endpoints = ("--ingest", receiver.ingest, "--api", receiver.api)
        # the producer sends while the workers and the aggregator already run
        producer = start("producer.py", *endpoints, "--spool-dir", tmp_path / "spool-producer",
                         "--count", IMAGES, "--shape", "x".join(map(str, SHAPE)), "--lam", LAM,
                         "--seed", SEED, log="producer.log")  # fmt: skip
        for w in range(WORKERS):
            start("worker.py", *endpoints, "--id", w, "--spool-dir", tmp_path / f"spool-{w}",
                  "--lam", LAM, log=f"worker-{w}.log")  # fmt: skip
        first = start("aggregator.py", *aggregator_args, log="aggregator.log")

        wait_for(lambda: counted(state) >= KILL_AT * IMAGES, 240, f"{KILL_AT:.0%} counted")
        # not a wait: the kill lands at a random point after a save, while its results
        # are acked or while the next ones are counted and not yet saved
        jitter = random.uniform(0.0, 0.4)
        time.sleep(jitter)
        first.send_signal(signal.SIGKILL)
        first.wait()
        at_kill = counted(state)
        assert at_kill < IMAGES, "the aggregator kill came too late to matter"

        second = start("aggregator.py", *aggregator_args, log="aggregator.log")
        log = logs / "aggregator.log"
        assert wait_exit(second, 240, "the restarted aggregator") == 0, log.read_text()[-3000:]
        assert wait_exit(producer, 30, "the producer") == 0, (logs / "producer.log").read_text()
        for w, proc in enumerate(procs[1 : WORKERS + 1]):
            assert wait_exit(proc, 30, f"worker {w}") == 0, (logs / f"worker-{w}.log").read_text()

        # ---- check: exactly once in the aggregate
        above = sg.threshold(LAM)
        expected = np.array(
            [sg.count_spots(sg.image(SEED, k, SHAPE, LAM), above) for k in range(IMAGES)]
        )
        with np.load(state) as saved:
            counts, total, n = saved["counts"], int(saved["total"]), int(saved["counted"])
        assert n == IMAGES
        assert np.count_nonzero(counts >= 0) == IMAGES
        assert (counts[IMAGES:] == -1).all()  # no image that was never sent
        assert np.array_equal(counts[:IMAGES], expected)
        assert total == int(expected.sum())
        resumed = re.findall(r"resuming with (\d+) images counted", log.read_text())
        assert [int(r) for r in resumed] == [0, at_kill]
        summary = re.search(r"(\d+) duplicate results skipped", log.read_text())
        assert summary is not None

        # ---- and at least once in the results stream, every frame acked by the workers
        with Consumer(receiver.api) as c:
            results = c.query(sg.RESULTS, "meta.count >= 0", limit=10 * IMAGES)
            images = [f.meta["image"] for f in results]
            assert set(images) == set(range(IMAGES))
            assert len(results) == c.info(sg.RESULTS).count
            with pytest.raises(StreamFinished):
                c.next(sg.FRAMES, sg.WORKER_GROUP, timeout=5.0)
        print(
            f"\naggregator killed {jitter:.2f} s after a save, at {at_kill} counted;"
            f" {len(results) - IMAGES} duplicate"
            f" results in the stream; restarted aggregator skipped {summary.group(1)}"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        receiver.kill()
