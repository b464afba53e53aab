"""Send frames of one size at a fixed rate, in a process of its own (perf/bridge.py's lag).

    python perf/paced_send.py INGEST API SPOOL STREAM SIZE RATE COUNT

The first frame is sent and flushed before the paced ones (the stream exists);
prints one JSON line: the rate reached and when the last frame was stored. A
producer of its own keeps its CPU (spool copies, fsyncs) off the measured
process's GIL.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from hidra_ng import Producer


def main(argv: list[str]) -> int:
    ingest, api, spool, stream, size, rate, count = argv
    size_b, hz, n = int(size), float(rate), int(count)
    payload = np.random.default_rng(2).bytes(size_b)
    with Producer(ingest, api, Path(spool), "perf-paced") as p:
        p.send(stream, payload)
        p.flush(timeout=60)
        print(json.dumps({"ready": True}), flush=True)
        t0 = time.perf_counter()
        for i in range(1, n):
            delay = t0 + i / hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            p.send(stream, payload)
        sent = time.perf_counter() - t0
        p.finish(stream)
        p.flush(timeout=600)
        stored = time.perf_counter() - t0
    print(json.dumps({"send_hz": (n - 1) / sent, "stored_hz": (n - 1) / stored,
                      "stored_s": stored}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
