"""Profile figures with cProfile, in this process (producer, consumers) and in the receiver.

    .venv/bin/python perf/profile_figures.py [FIGURE ...] [--frames 256] [--messages 50000]
                                             [--top 18] [--at REV]

Runs each figure (default: ingest_4mib and ingest_1kib) once, exactly as
perf/run.py does, with every thread of this process (the caller's, the
producer's link thread, consumer threads) and of the receiver process (ingest,
api and main thread) under cProfile. Writes one .prof per thread to
perf/profiles/ (open with ``python -m pstats``), and prints per thread the
functions with the most own time and how much of the thread's time was not
spent blocked (in poll, lock waits, sleeps). cProfile slows Python-heavy code
(per-message paths more than per-byte ones): read the shares, not the absolute
rates. What the profiles say is in perf/NOTES.md.
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
from harness import PERF_DIR, QUICK, Probe, Round, Scale, machine, per_run, progress, rerun_at
from payloads import frames_4mib, messages_1kib

from hidra_ng.testing import ReceiverProcess

OUT_DIR = PERF_DIR / "profiles"


class ProfiledReceiver(ReceiverProcess):
    """A receiver process whose threads all run under cProfile (perf/threadprof.py)."""

    label = "receiver"

    def command(self) -> list[str]:
        cmd = super().command()
        module_at = cmd.index("-m") + 1  # [python, -m, hidra_ng, receiver, ...]
        script = str(PERF_DIR / "threadprof.py")
        return [cmd[0], script, str(OUT_DIR), self.label, *cmd[module_at:]]


def profile(probe: Probe, scale: Scale, label: str) -> dict:
    """One run of ``probe`` with this process and its receiver under cProfile."""
    ProfiledReceiver.label = f"{label}-receiver"
    figures.receiver_factory = ProfiledReceiver
    threadprof.install()
    rnd = Round()
    try:
        run = probe.run(scale, rnd)
    finally:
        rnd.close()  # stops the receiver, which writes its profiles as it exits
        threadprof.dump(OUT_DIR, f"{label}-client")
        figures.receiver_factory = ReceiverProcess
    values = {m.name: per_run(m, run) for m in probe.metrics}
    return {**values, **run.detail}


WAITING = ("poll", "acquire", "sleep", "wait", "select", "recv")  # blocked, not working


def summary(path: Path, top: int) -> str:
    """The functions with the most own time in one thread's profile ('' for an idle thread)."""
    stats = pstats.Stats(str(path))
    waiting = sum(
        tottime
        for (_, _, name), (_, _, tottime, _, _) in stats.stats.items()
        if any(word in name for word in WAITING)
    )
    busy = stats.total_tt - waiting
    if busy < 0.05:
        return ""
    buf = io.StringIO()
    stats.stream = buf
    stats.sort_stats("tottime").print_stats(top)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    body = [line for line in lines if line.lstrip()[:1].isdigit() and "function calls" not in line]
    header = next((line for line in lines if "ncalls" in line), "")
    title = f"== {path.name}: {stats.total_tt:.2f} s profiled, {busy:.2f} s not blocked"
    return "\n".join([title, header, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "figures",
        nargs="*",
        default=["ingest_4mib", "ingest_1kib"],
        help="figure functions of perf/figures.py (default: the ingest ones)",
    )
    ap.add_argument("--frames", type=int, default=256, help="4 MiB frames per run")
    ap.add_argument("--messages", type=int, default=50_000, help="1 KiB messages per run")
    ap.add_argument("--top", type=int, default=18, help="functions shown per thread")
    ap.add_argument("--at", metavar="REV", help="profile hidra_ng as committed at REV")
    args = ap.parse_args(argv)
    if args.at:
        return rerun_at(args.at, Path(__file__), argv if argv is not None else sys.argv[1:])
    known = {p.run.__name__: p for p in figures.FIGURES}
    unknown = [name for name in args.figures if name not in known]
    if unknown:
        ap.error(f"unknown figures {unknown}; expected some of {sorted(known)}")
    scale = replace(QUICK, rounds=1, frames_4mib=args.frames, messages_1kib=args.messages,
                    group_messages_1kib=args.messages // 10)  # fmt: skip
    frames_4mib(), messages_1kib()  # made before profiling starts
    OUT_DIR.mkdir(exist_ok=True)
    for old in OUT_DIR.glob("*.prof"):
        old.unlink()
    results = {}
    for label in args.figures:
        progress(f"profiling {label} ...")
        results[label] = profile(known[label], scale, label)
    report = [f"hidra_ng {machine()[1]['versions']['hidra_ng']}"]
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
