"""Live view figures (SPEC §16), measured in real browsers: Debian's chromium via selenium.

    .venv/bin/python perf/view.py            # ~2 minutes
    .venv/bin/python perf/view.py --quick    # ~40 s

One run, one machine: a receiver process (free loopback ports, temp dir), a
``hidra-ng view`` process, and this process as the detector (a Producer with
``spool_sync="batch"``, so the figures are the receiver's and the view's, not
the detector PC's fsync of every 8 MiB frame).

1. **One browser at 100 Hz**: 2048x2048 uint16 frames sent at 100 Hz; the page's
   own log (index, commit time ``stored``, time drawn) gives the frames drawn per
   second and the update latency from the receiver's commit to the frame drawn
   in the browser (p50, p90). Both clocks are this machine's.
2. **Ingest with five browsers against none**: the same frames sent as fast as
   the Producer can (until all acknowledged), in interleaved rounds with no
   browser and with five browsers watching the stream; median frames per second.

Writes perf/view.json and prints a table. Not a test: no thresholds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from browser import chromium, require_chromium, wait_js  # noqa: E402

from hidra_ng import Producer  # noqa: E402
from hidra_ng.testing import ReceiverProcess  # noqa: E402

STREAM = "perf/view"
SHAPE = (2048, 2048)


class ViewProcess:
    """``hidra-ng view`` as a child process on a port it chose (``--port 0``), read back
    from the line it prints at start (``hidra-ng view: open http://...``)."""

    def __init__(self, api: str, publish: str, log: Path) -> None:
        cmd = [sys.executable, "-m", "hidra_ng", "view", "--api", api, "--publish", publish,
               "--port", "0"]  # fmt: skip
        self._log = log.open("ab")
        start = self._log.tell()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while (found := re.search(rb"open (http://\S+/)", log.read_bytes()[start:])) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"hidra-ng view did not start; see {log}")
            time.sleep(0.1)
        self.url = found.group(1).decode()
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "api/status", timeout=2).read()
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"hidra-ng view did not start; see {log}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def frames(n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.poisson(2, SHAPE).astype(np.uint16) for _ in range(n)]


def paced(producer: Producer, pool: list[np.ndarray], seconds: float, rate: float) -> int:
    """Send at ``rate`` Hz for ``seconds``; the number sent."""
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + sent / rate
        if due > now:
            time.sleep(due - now)
        producer.send(STREAM, pool[sent % len(pool)], meta={"n": sent})
        sent += 1
    producer.flush(timeout=120)
    return sent


def ingest(producer: Producer, pool: list[np.ndarray], count: int) -> float:
    """Frames per second from the first send to the last acknowledgement."""
    start = time.perf_counter()
    for i in range(count):
        producer.send(STREAM, pool[i % len(pool)], meta={"n": i})
    producer.flush(timeout=300)
    return count / (time.perf_counter() - start)


def open_page(driver, url: str) -> None:
    driver.get(url + "#stream=" + STREAM)
    wait_js(driver, "return window.hidraView && window.hidraView.shown()", 60, "a frame")


def one_browser(producer, pool, view_url: str, seconds: float) -> dict:
    with chromium(1280, 900) as driver:
        open_page(driver, view_url)
        driver.execute_script("window.hidraView.state.log.length = 0")
        t0 = time.time()
        sent = paced(producer, pool, seconds, 100.0)
        t1 = time.time()
        time.sleep(0.5)  # the last frames reach the page
        log = driver.execute_script("return window.hidraView.state.log")
    drawn = [row for row in log if t0 <= row[1] <= t1]  # index, stored, received, drawn, ms
    latency = sorted(at - stored for _, stored, _, at, _ in drawn)

    def p50(values) -> float | None:
        return round(1000 * statistics.median(values), 1) if values else None

    return {
        "sent": sent,
        "ingest_hz": sent / (t1 - t0),
        "drawn": len(drawn),
        "drawn_per_second": len(drawn) / (t1 - t0),
        "latency_p50_ms": p50(latency),
        "latency_p90_ms": 1000 * latency[int(0.9 * (len(latency) - 1))] if latency else None,
        "commit_to_received_p50_ms": p50([recv - stored for _, stored, recv, _, _ in drawn]),
        "received_to_drawn_p50_ms": p50([at - recv for _, _, recv, at, _ in drawn]),
        "render_p50_ms": p50([ms / 1000 for *_, ms in drawn]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (~40 s)")
    args = ap.parse_args()
    seconds, count, rounds = (4.0, 60, 2) if args.quick else (15.0, 200, 3)
    try:
        require_chromium()
    except BaseException as err:  # pytest's skip or fail, outside pytest: say it, stop
        sys.exit(f"perf/view.py: {err}")
    pool = frames()
    result: dict = {"mode": "quick" if args.quick else "full", "shape": list(SHAPE),
                    "dtype": "uint16", "machine": f"{platform.node()} {os.cpu_count()} cpus,"
                    f" load {os.getloadavg()[0]:.1f} at start"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hidra-ng-perf-view-") as tmp:
        root = Path(tmp)
        with ReceiverProcess(root / "store") as rx:
            view = ViewProcess(rx.api, rx.publish, root / "view.log")
            try:
                with Producer(
                    rx.ingest, rx.api, root / "spool", "perf-view", spool_sync="batch"
                ) as producer:
                    producer.send(STREAM, pool[0])
                    producer.flush(60)
                    result["one_browser_100hz"] = one_browser(producer, pool, view.url, seconds)
                    none, five = [], []
                    for _ in range(rounds):
                        none.append(ingest(producer, pool, count))
                        with contextlib.ExitStack() as stack:
                            drivers = [stack.enter_context(chromium(1024, 768)) for _ in range(5)]
                            for d in drivers:
                                open_page(d, view.url)
                            five.append(ingest(producer, pool, count))
                            shown = [d.execute_script("return window.hidraView.state.drawn")
                                     for d in drivers]  # fmt: skip
                    result["ingest_no_browser_hz"] = none
                    result["ingest_five_browsers_hz"] = five
                    result["five_browsers_frames_drawn_last_round"] = shown
            finally:
                view.stop()
    result["load_at_end"] = round(os.getloadavg()[0], 1)
    out = REPO / "perf" / "view.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    one = result["one_browser_100hz"]
    print(f"live view, 2048x2048 uint16, {result['mode']} run; {result['machine']}")
    print(f"  one browser, 100 Hz ingest ({one['ingest_hz']:.0f} Hz achieved):"
          f" {one['drawn_per_second']:.1f} frames drawn/s,"
          f" commit -> drawn p50 {one['latency_p50_ms']:.0f} ms,"
          f" p90 {one['latency_p90_ms']:.0f} ms")  # fmt: skip
    print(f"    of which commit -> received by the page p50 {one['commit_to_received_p50_ms']} ms,"
          f" received -> drawn p50 {one['received_to_drawn_p50_ms']} ms"
          f" (decode + statistics + colouring p50 {one['render_p50_ms']} ms)")  # fmt: skip
    print(
        f"  ingest, no browser:    median {statistics.median(none):.0f} frames/s"
        f"  (rounds {', '.join(f'{x:.0f}' for x in none)})"
    )
    print(
        f"  ingest, five browsers: median {statistics.median(five):.0f} frames/s"
        f"  (rounds {', '.join(f'{x:.0f}' for x in five)})"
    )
    print(f"written {out}")


if __name__ == "__main__":
    main()
