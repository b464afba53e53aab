"""Tables of ``make perf-peers``' results: plain text for the terminal, Markdown for the README.

Both take the dict perf/peers.py writes to perf/peers.json.
"""

from __future__ import annotations

from typing import Any

from harness import text_table

TITLES = {
    "hidra_ng": "hidra_ng",
    "hidra_ng_without_fsync": "hidra_ng, fsyncs off",
    "rabbitmq_streams": "RabbitMQ streams",
    "nats_jetstream": "NATS JetStream",
    "nats_jetstream_sync_always": "NATS JetStream, sync always",
}


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _value(unit: str, summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "failed"
    if unit == "ms":
        return f"{_fmt(summary['p50_ms'])} / {_fmt(summary['p99_ms'])}"
    return _fmt(summary["value"])


def _cpu(summary: dict[str, Any] | None) -> str:
    if summary is None or "cpu_s_per_gb" not in summary:
        return "-"
    cpu = summary["cpu_s_per_gb"]
    return f"{_fmt(cpu['client'])} + {_fmt(cpu['server'])} = {_fmt(cpu['total'])}"


def _ratio(name: str, ratios: dict[str, float | None] | None) -> str:
    if not ratios:
        return "-"
    if "p99" in ratios:
        return f"{_fmt(ratios[name])} / {_fmt(ratios['p99'])}"
    return _fmt(ratios[name])


def _when(results: dict[str, Any]) -> str:
    load = results["load_average_1min"]
    return (
        f"mode {results['mode']} ({results['scale']['rounds']} rounds), {results['date']},"
        f" {results['seconds']} s; 1-minute load average {load['start']:.2f} at start,"
        f" {load['end']:.2f} at end"
    )


def render_text(results: dict[str, Any]) -> str:
    out = [f"machine: {results['machine']}", _when(results), ""]
    out.append("durability at the settings measured:")
    for name, system in results["systems"].items():
        out.append(f"  {name}: {system['durability']}")
    for name, why in results["not_run"].items():
        out.append(f"  not run, {name}: {why}")
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    out += [f"  versions: {versions}", ""]
    header = [
        "workload", "system", "value", "unit", "stat",
        "CPU s/GB client + server = total", "hidra_ng / peer", "CPU hidra_ng / peer",
    ]  # fmt: skip
    rows = []
    for workload, entry in results["workloads"].items():
        unit = "ms p50 / p99" if entry["unit"] == "ms" else entry["unit"]
        for name, summary in entry["systems"].items():
            ratios = entry["hidra_ng_over_peer"].get(name)
            cpu_ratio = _fmt(ratios.get("cpu_s_per_gb")) if ratios else "-"
            rows.append(
                [workload, name, _value(entry["unit"], summary), unit, summary["stat"],
                 _cpu(summary), _ratio(workload, ratios), cpu_ratio]
            )  # fmt: skip
    out.append(text_table(header, rows))
    out.append(
        "hidra_ng / peer: above 1 is better for hidra_ng in throughput, below 1 in latency"
        " and CPU per GB"
    )
    out += _without_fsync_lines(results)
    for key, err in results["errors"].items():
        out.append(f"FAILED {key}: {err}")
    return "\n".join(out)


def _without_fsync_lines(results: dict[str, Any]) -> list[str]:
    """hidra_ng with its fsyncs off / each peer: the comparison at the peers' durability."""
    lines = []
    for workload, entry in results["workloads"].items():
        for peer, ratios in entry.get("without_fsync_over_peer", {}).items():
            cpu = ratios.get("cpu_s_per_gb")
            lines.append(
                f"  {workload} / {TITLES.get(peer, peer)}: {_ratio(workload, ratios)}"
                + (f", CPU per GB {_fmt(cpu)}" if cpu is not None else "")
            )
    if lines:
        lines.insert(0, "hidra_ng with its fsyncs off / peer (both confirm from the page cache):")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The README's "Against peers" table: one column per system, then the ratios."""
    names = list(results["systems"])
    peers = [n for n in names if n != "hidra_ng"]
    header = (
        "| workload | "
        + " | ".join(TITLES.get(n, n) for n in names)
        + " | "
        + " | ".join(f"hidra_ng / {TITLES.get(p, p)}" for p in peers)
        + " |"
    )
    lines = [header, "|---|" + "---:|" * (len(names) + len(peers))]
    for workload, entry in results["workloads"].items():
        systems, ratios = entry["systems"], entry["hidra_ng_over_peer"]
        unit = "p50 / p99 ms" if entry["unit"] == "ms" else entry["unit"]
        cells = [_value(entry["unit"], systems.get(n)) for n in names]
        cells += [_ratio(workload, ratios.get(p)) for p in peers]
        lines.append(f"| `{workload}` ({unit}) | " + " | ".join(cells) + " |")
        if any("cpu_s_per_gb" in s for s in systems.values()):
            cells = [_cpu(systems.get(n)) for n in names]
            cells += [_fmt((ratios.get(p) or {}).get("cpu_s_per_gb")) for p in peers]
            lines.append("| CPU s/GB, client + server | " + " | ".join(cells) + " |")
    extra = _without_fsync_lines(results)
    if extra:
        lines.append("")
        lines += [extra[0]] + [f"- {line.strip()}" for line in extra[1:]]
    for key, err in results["errors"].items():
        lines.append(f"\nFAILED `{key}`: {err.splitlines()[0]}")
    return "\n".join(lines) + "\n"
