"""Profile the ingest figures with cProfile, on the producer side and in the receiver process.

    .venv/bin/python perf/profile_ingest.py [--frames 256] [--messages 50000] [--top 18]

Runs ``ingest_4mib`` and ``ingest_1kib`` once each, exactly as perf/run.py does,
with every thread of this process (the caller's and the producer's link thread)
and of the receiver process (ingest, api and main thread) under cProfile. Writes
one .prof per thread to perf/profiles/ (open with ``python -m pstats``) and
prints, per thread, the functions with the most own time. cProfile slows
Python-heavy code down (per-message paths more than per-byte ones): read the
shares, not the absolute rates. What the profiles say is in perf/NOTES.md.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
from dataclasses import replace
from pathlib import Path

import figures
import threadprof
from harness import PERF_DIR, QUICK, Round, progress

from hidra_ng.localrun import ReceiverProcess

OUT_DIR = PERF_DIR / "profiles"


class ProfiledReceiver(ReceiverProcess):
    """A receiver process whose threads all run under cProfile (perf/threadprof.py)."""

    label = "receiver"

    def command(self) -> list[str]:
        cmd = super().command()
        module_at = cmd.index("-m") + 1  # [python, -m, hidra_ng, receiver, ...]
        script = str(PERF_DIR / "threadprof.py")
        return [cmd[0], script, str(OUT_DIR), self.label, *cmd[module_at:]]


def profile(figure, scale, label: str) -> dict:
    ProfiledReceiver.label = f"{label}-receiver"
    figures.receiver_factory = ProfiledReceiver
    threadprof.install()
    rnd = Round()
    try:
        run = figure(scale, rnd)
    finally:
        rnd.close()  # stops the receiver, which writes its profiles as it exits
        threadprof.dump(OUT_DIR, f"{label}-producer")
        figures.receiver_factory = ReceiverProcess
    return {"value": run.samples[label][0], **run.detail}


def summary(path: Path, top: int) -> str:
    stats = pstats.Stats(str(path))
    if stats.total_tt < 0.05:  # an idle helper thread
        return ""
    buf = io.StringIO()
    stats.stream = buf
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    body = [line for line in lines if "function calls" in line or line.lstrip()[:1].isdigit()]
    header = next((line for line in lines if "ncalls" in line), "")
    return "\n".join([f"== {path.name}: {stats.total_tt:.2f} s profiled", header, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=256, help="4 MiB frames")
    ap.add_argument("--messages", type=int, default=50_000, help="1 KiB messages")
    ap.add_argument("--top", type=int, default=18, help="functions shown per thread")
    args = ap.parse_args(argv)
    scale = replace(QUICK, rounds=1, frames_4mib=args.frames, messages_1kib=args.messages)
    for old in OUT_DIR.glob("*.prof"):
        old.unlink()
    results = {}
    for label in ("ingest_4mib", "ingest_1kib"):
        figure = getattr(figures, label)
        progress(f"profiling {label} ...")
        results[label] = profile(figure, scale, label)
    report = []
    for label, result in results.items():
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
        report.append(f"#### {label} under cProfile: {shown}")
        for path in sorted(OUT_DIR.glob(f"{label}-*.prof")):
            text = summary(path, args.top)
            if text:
                report.append(text)
    text = "\n\n".join(report) + "\n"
    (OUT_DIR / "summary.txt").write_text(text)
    print(text)
    progress(f"profiles and summary.txt in {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
