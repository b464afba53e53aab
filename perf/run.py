"""Measure hidra_ng against raw pyzmq and LMDB on this machine (SPEC §12).

    .venv/bin/python perf/run.py            # make perf: a few minutes
    .venv/bin/python perf/run.py --quick    # make perf-quick: under a minute

Runs every baseline (perf/baselines.py), every figure (perf/figures.py) and
every scaling figure (perf/scaling.py) once per round, for several rounds,
interleaved so that drift of the machine (a busy disk, say) hits baselines and
figures alike; a probe marked ``once`` runs in the first round only. A
throughput is the median over rounds; a latency is a percentile over the
samples of all rounds. Each figure's ratio is its value divided by its
baseline's value (for latencies: ours / raw, so lower is better there).

Prints tables on stdout (progress goes to stderr) and writes perf/results.json
(the shape SPEC §12 fixes, plus "baselines", "scaling" and details) and
perf/RESULTS.md (the tables to paste into the README). Exit code 1 if any
measurement failed; the others are still reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    FULL,
    PERF_DIR,
    QUICK,
    Measurement,
    Probe,
    Round,
    Run,
    Scale,
    machine,
    peak_rss_bytes,
    per_run,
    progress,
    rerun_at,
    summarize,
    text_table,
)

RESULTS_JSON = PERF_DIR / "results.json"
RESULTS_MD = PERF_DIR / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.at:
        return rerun_at(args.at, Path(__file__), argv if argv is not None else sys.argv[1:])
    # imported only here: with --at, this process must not import the working tree's hidra_ng
    from baselines import BASELINES
    from figures import FIGURES, PLANNED
    from scaling import SCALING

    if args.list:
        for p in BASELINES + FIGURES + SCALING:
            names = ", ".join(f"{m.name} [{m.unit}]" for m in p.metrics)
            base = {m.baseline for m in p.metrics if m.baseline}
            once = " (once per run)" if p.once else ""
            print(f"{names}{' / ' + ', '.join(sorted(base)) if base else ''}{once}\n    {p.doc}")
        for name, base in PLANNED.items():
            if not any(m.name == name for p in FIGURES for m in p.metrics):
                print(f"{name}: not measured yet (baseline {base})")
        return 0
    scale = QUICK if args.quick else FULL
    if args.rounds:
        scale = replace(scale, rounds=args.rounds)
    probes = _selection(BASELINES, FIGURES + SCALING, args.only)
    started = time.perf_counter()
    load_before = os.getloadavg()
    machine_line, machine_info = machine()
    progress(f"perf {scale.name}: {scale.rounds} rounds on {machine_line}")

    runs: dict[int, list[Run]] = {id(p): [] for p in probes}
    errors: dict[str, str] = {}
    for r in range(1, scale.rounds + 1):
        rnd = Round()
        try:
            _round(r, scale, rnd, probes, runs, errors)
        finally:
            rnd.close()

    registered = {m.name for p in FIGURES for m in p.metrics}
    baselines = _measure(BASELINES, runs)
    figures = _figures(FIGURES, BASELINES, runs, baselines)
    results: dict[str, Any] = {
        "machine": machine_line,
        "figures": figures,
        "baselines": {name: m.to_json() for name, m in baselines.items()},
        # not SPEC §12's figures: how they scale with producers, frame size, stream length
        "scaling": _figures(SCALING, BASELINES, runs, baselines),
        "not_measured_yet": {
            name: {"baseline": base} for name, base in PLANNED.items() if name not in registered
        },
        "errors": errors,
        "mode": scale.name,
        "scale": scale.__dict__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": peak_rss_bytes(),
        # other work on the machine during the run: 1-minute load averages (2 cores here)
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "machine_detail": machine_info,
    }
    _write_json(args.output, results)
    markdown = render_markdown(results)
    if args.output == RESULTS_JSON:
        RESULTS_MD.write_text(markdown)
    print(render_text(results, baselines))
    if args.markdown:
        print(markdown)
    progress(f"wrote {args.output} in {results['seconds']} s")
    return 1 if errors else 0


def _round(
    r: int,
    scale: Scale,
    rnd: Round,
    probes: list[Probe],
    runs: dict[int, list[Run]],
    errors: dict[str, str],
) -> None:
    """One run of every probe; a probe that failed once is not run again."""
    for p in probes:
        label = p.metrics[0].name
        if label in errors or (p.once and r > 1):
            continue
        t0 = time.perf_counter()
        try:
            run = p.run(scale, rnd)
        except Exception as err:
            errors[label] = f"{type(err).__name__}: {err}"
            progress(f"[round {r}/{scale.rounds}] {label} FAILED:\n{traceback.format_exc()}")
            continue
        runs[id(p)].append(run)
        shown = ", ".join(f"{m.name} {per_run(m, run):,.1f} {m.unit}" for m in p.metrics)
        progress(f"[round {r}/{scale.rounds}] {shown} ({time.perf_counter() - t0:.1f} s)")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="under a minute (make perf-quick)")
    ap.add_argument("--markdown", action="store_true", help="also print RESULTS.md")
    ap.add_argument("--list", action="store_true", help="list baselines and figures, run nothing")
    ap.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    ap.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="only probes whose metric names contain NAME (repeatable), with their baselines",
    )  # fmt: skip
    ap.add_argument("--output", type=Path, default=RESULTS_JSON, help="results file")
    ap.add_argument(
        "--at", metavar="REV",
        help="measure hidra_ng as committed at git revision REV (in a temporary worktree),"
        " not the working tree; for before/after comparisons and a tree others are editing",
    )  # fmt: skip
    return ap.parse_args(argv)


def _selected(p: Probe, only: list[str]) -> bool:
    return not only or any(word in m.name for m in p.metrics for word in only)


def _selection(baselines: list[Probe], figures: list[Probe], only: list[str]) -> list[Probe]:
    """The probes ``--only`` selects, plus the baselines the selected figures are divided by."""
    chosen = [p for p in figures if _selected(p, only)]
    needed = {m.baseline for p in chosen for m in p.metrics}
    return [
        p for p in baselines if _selected(p, only) or any(m.name in needed for m in p.metrics)
    ] + chosen


# -------------------------------------------------------------------- results


def _measure(probes: list[Probe], runs: dict[int, list[Run]]) -> dict[str, Measurement]:
    out = {}
    for p in probes:
        if runs.get(id(p)):
            for metric in p.metrics:
                out[metric.name] = summarize(metric, runs[id(p)])
    return out


def _figures(
    probes: list[Probe],
    baseline_probes: list[Probe],
    runs: dict[int, list[Run]],
    baselines: dict[str, Measurement],
) -> dict[str, dict[str, Any]]:
    baseline_runs = {
        m.name: (m, runs[id(p)]) for p in baseline_probes for m in p.metrics if id(p) in runs
    }
    out: dict[str, dict[str, Any]] = {}
    for p in probes:
        if not runs.get(id(p)):
            continue
        for metric in p.metrics:
            m = summarize(metric, runs[id(p)])
            base = baselines.get(metric.baseline)
            entry: dict[str, Any] = {
                "value": _num(m.value),
                "unit": m.unit,
                "baseline": metric.baseline,
                "baseline_value": _num(base.value) if base else None,
                "ratio": round(m.value / base.value, 3) if base and base.value else None,
            }
            if base is not None:
                if base.unit != m.unit:
                    raise ValueError(f"{m.name} is in {m.unit} but {base.name} in {base.unit}")
                bmetric, bruns = baseline_runs[metric.baseline]
                pairs = zip(runs[id(p)], bruns, strict=False)
                entry["ratio_per_round"] = [
                    round(per_run(metric, a) / per_run(bmetric, b), 3) for a, b in pairs
                ]
            entry.update(stat=m.stat, samples=m.samples, detail=m.detail)
            if runs[id(p)][-1].work:
                entry["work"] = runs[id(p)][-1].work
            out[metric.name] = entry
    return out


def _num(x: float) -> float:
    return round(x, 3) if abs(x) < 100 else round(x, 1)


def _write_json(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------- rendering


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _spread(samples: list[float]) -> str:
    return f"{_fmt(min(samples))} .. {_fmt(max(samples))}" if samples else ""


def render_text(results: dict[str, Any], baselines: dict[str, Measurement]) -> str:
    load = results["load_average_1min"]
    out = [
        f"machine: {results['machine']}",
        f"mode: {results['mode']}, {results['date']}, {results['seconds']} s;"
        f" load average {load['start']:.2f} at start, {load['end']:.2f} at end",
        "",
    ]
    out.append("raw baselines")
    rows = [
        [name, _fmt(m.value), m.unit, m.stat, _spread(m.samples or m.detail.get("per_run", []))]
        for name, m in baselines.items()
    ]
    out.append(text_table(["baseline", "value", "unit", "stat", "runs min .. max"], rows))
    rows = [_figure_row(name, f) for name, f in results["figures"].items()]
    rows += [
        [name, "not measured yet", "", entry["baseline"], "", "", ""]
        for name, entry in results["not_measured_yet"].items()
    ]
    header = ["figure", "value", "unit", "baseline", "baseline value", "ratio", "ratio per round"]
    if rows:
        out += ["", "hidra_ng figures (ratio = figure / baseline)", text_table(header, rows)]
    if results["scaling"]:
        out += ["", "Scaling (ratio = figure / baseline of the same frame size or count)"]
        rows = [
            [*_figure_row(name, f), f"{f.get('work', '')}; {f['stat']}"]
            for name, f in results["scaling"].items()
        ]
        out.append(text_table([*header, "one run; stat"], rows))
    for name, err in results["errors"].items():
        out.append(f"FAILED {name}: {err}")
    return "\n".join(out)


def _figure_row(name: str, f: dict[str, Any]) -> list[str]:
    return [
        name,
        _fmt(f["value"]),
        f["unit"],
        f["baseline"] or "-",
        _fmt(f["baseline_value"]),
        _fmt(f["ratio"]),
        _spread(f.get("ratio_per_round", [])),
    ]


def render_markdown(results: dict[str, Any]) -> str:
    load = results["load_average_1min"]
    lines = [
        "# hidra_ng performance",
        "",
        f"`make perf{'-quick' if results['mode'] == 'quick' else ''}`, {results['date']},"
        f" {results['scale']['rounds']} rounds in {results['seconds']} s"
        f" (1-minute load average {load['start']:.2f} at start, {load['end']:.2f} at end).",
        "",
        f"Machine: {results['machine']}",
        "",
        "| figure | value | baseline | baseline value | ratio | ratio per round |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, f in results["figures"].items():
        lines.append(
            f"| `{name}` | {_fmt(f['value'])} {f['unit']} | `{f['baseline']}` |"
            f" {_fmt(f['baseline_value'])} {f['unit']} | {_fmt(f['ratio'])} |"
            f" {_spread(f.get('ratio_per_round', []))} |"
        )
    for name, entry in results["not_measured_yet"].items():
        lines.append(f"| `{name}` | not measured yet | `{entry['baseline']}` | | | |")
    if results["scaling"]:
        lines += [
            "",
            "How the figures scale (perf/scaling.py; not SPEC §12's figures):",
            "",
            "| scaling figure | value | baseline | baseline value | ratio | ratio per round"
            " | one run | stat |",
            "|---|---:|---|---:|---:|---:|---|---|",
        ]
        for name, f in results["scaling"].items():
            lines.append(
                f"| `{name}` | {_fmt(f['value'])} {f['unit']} | `{f['baseline']}` |"
                f" {_fmt(f['baseline_value'])} {f['unit']} | {_fmt(f['ratio'])} |"
                f" {_spread(f.get('ratio_per_round', []))} | {f.get('work', '')} |"
                f" {f['stat']} |"
            )
    lines += ["", "| raw baseline | value | how |", "|---|---:|---|"]
    for name, b in results["baselines"].items():
        lines.append(f"| `{name}` | {_fmt(b['value'])} {b['unit']} | {b['stat']} |")
    lines += [
        "",
        "ratio = figure / baseline, measured in the same run (for the latencies lower is"
        " better). Throughputs are medians over rounds, latencies percentiles over all"
        " samples; each round runs every baseline and figure once (those of one run:"
        " the first round only). Definitions: perf/baselines.py, perf/figures.py,"
        " perf/scaling.py; where the time goes: perf/NOTES.md.",
        "",
    ]
    for name, err in results["errors"].items():
        lines.insert(-1, f"FAILED `{name}`: {err.splitlines()[0]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
