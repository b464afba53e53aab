"""CPU per 1 KiB message of each thread of the producer and the receiver (no profiler).

    .venv/bin/python perf/thread_cpu_1kib.py [MESSAGES]      # default 100,000

Sends MESSAGES 1 KiB messages with ``Producer.send_many`` in batches of 1000 to a
receiver process (as ``ingest_1kib`` does), and prints user and system CPU per
message of every thread of both processes, read from /proc before and after,
so a step's cost shows where it runs: the producer's caller (validation, spool
append and fsync) and link threads, the receiver's ingest (decode, checks,
planning), committer (puts, commit) and api (acks) threads, zmq's I/O threads.
Threads are listed by id in creation order: the receiver starts ingest, then
committer, then api. A diagnostic: it prints, it asserts nothing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from payloads import messages_1kib

from hidra_ng import Producer
from hidra_ng.testing import ReceiverProcess

TICK = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[str, tuple[float, float]]:
    """``name:tid`` -> (user, system) CPU seconds of every thread of ``pid``."""
    out = {}
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        out[f"{name}:{tid}"] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def report(label: str, before: dict, after: dict, n: int) -> None:
    rows = []
    for key, (user, system) in after.items():
        user0, system0 = before.get(key, (0.0, 0.0))
        if user - user0 + system - system0 > 0:
            rows.append((key, (user - user0) / n * 1e6, (system - system0) / n * 1e6))
    print(f"{label}: {sum(u + s for _, u, s in rows):.1f} us per message")
    for key, user, system in rows:
        print(f"  {key:24s} user {user:5.2f}  system {system:5.2f}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    pool = messages_1kib()
    batch = [(pool[i % len(pool)], None) for i in range(1000)]
    with tempfile.TemporaryDirectory(prefix="hidra-ng-threads-") as tmp:
        rx = ReceiverProcess(Path(tmp) / "store")
        rx.start()
        try:
            with Producer(rx.ingest, rx.api, Path(tmp) / "spool", "threads") as p:
                deadline = time.monotonic() + 30
                while not p.receiver_up and time.monotonic() < deadline:
                    time.sleep(0.05)
                p.send_many("warm-up", batch)
                p.flush()
                assert rx.proc is not None
                before = thread_times(rx.proc.pid), thread_times(os.getpid())
                t0 = time.perf_counter()
                for _ in range(n // 1000):
                    p.send_many("threads", batch)
                p.flush(timeout=120)
                seconds = time.perf_counter() - t0
                after = thread_times(rx.proc.pid), thread_times(os.getpid())
        finally:
            rx.terminate()
    sent = n // 1000 * 1000
    print(f"{sent / seconds:,.0f} msg/s; load average {os.getloadavg()[0]:.2f}")
    report("producer", before[1], after[1], sent)
    report("receiver", before[0], after[0], sent)


if __name__ == "__main__":
    main()
