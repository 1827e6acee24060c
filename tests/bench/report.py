"""Turn samples into medians and ratios: a markdown report, PNG charts, raw JSON, a console table."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tests.support.seaweed import find_weed

from .core import REGISTRY, SYNCD, Sample
from .peers import Peer
from .proc import run_timed


@dataclass
class Row:
    """All repetitions of one tool on one metric of one scenario."""

    scenario: str
    metric: str
    unit: str
    tool: str
    higher_is_better: bool
    target: float | None = None
    values: list[float] = field(default_factory=list)     # of the verified runs only
    reps: int = 0
    failures: list[str] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    ratio: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.values)

    def extra_median(self, key: str) -> float | None:
        values = self.extras.get(key)
        return statistics.median(values) if values else None


def aggregate(samples: Iterable[Sample]) -> list[Row]:
    """One row per (scenario, metric, tool), in first-seen order; ratio = median / syncd's median."""
    rows: dict[tuple[str, str, str], Row] = {}
    for s in samples:
        row = rows.setdefault((s.scenario, s.metric, s.tool),
                              Row(s.scenario, s.metric, s.unit, s.tool, s.higher_is_better, s.target))
        row.reps += 1
        if not s.ok or s.value is None:
            row.failures.append(f"rep {s.rep}: {s.detail or 'no value'}")
            continue
        row.values.append(s.value)
        for key, value in s.extra.items():
            row.extras.setdefault(key, []).append(value)
    for row in rows.values():
        base = rows.get((row.scenario, row.metric, SYNCD))
        if base is not None and base.median and row.median is not None:
            row.ratio = row.median / base.median
    return list(rows.values())


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _verdict(row: Row) -> str:
    if row.ok:
        return "OK"
    return f"FAILED {len(row.failures)}/{row.reps}: {row.failures[0][:160]}" if row.failures else "no data"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    return f"; target {'≥' if row.higher_is_better else '≤'} {fmt(row.target)}"


def main_table(rows: list[Row]) -> list[list[str]]:
    header = ["scenario", "metric", "tool", "median", "min–max", "ratio vs syncd", "reps", "verified"]
    body = [[r.scenario, f"{r.metric} [{r.unit}{_target(r)}]", r.tool, fmt(r.median),
             f"{fmt(min(r.values))}–{fmt(max(r.values))}" if r.values else "–",
             f"{r.ratio:.2f}×" if r.ratio is not None else "–", f"{len(r.values)}/{r.reps}", _verdict(r)]
            for r in rows]
    return [header, *body]


def detail_tables(rows: list[Row]) -> dict[str, list[list[str]]]:
    """Per scenario, the medians of every extra figure (request counts, RSS, ...) per tool."""
    out: dict[str, list[list[str]]] = {}
    for scenario in dict.fromkeys(r.scenario for r in rows):
        mine = [r for r in rows if r.scenario == scenario and r.extras]
        keys = list(dict.fromkeys(k for r in mine for k in r.extras))
        if keys:
            out[scenario] = [["metric", "tool", *keys],
                             *[[r.metric, r.tool, *[fmt(r.extra_median(k)) for k in keys]] for r in mine]]
    return out


def markdown(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in table[1:]]
    return "\n".join(lines)


def console(table: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table)


# ---------------------------------------------------------------------- machine facts

def _first_line(cmd: list[str]) -> str:
    result = run_timed(cmd, timeout=30)
    text = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return text[0] if result.ok and text else f"unavailable ({result.problem()})"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_facts(peers: dict[str, Peer], problems: dict[str, str]) -> dict[str, str]:
    """What a reader needs to judge the numbers: hardware, load, and every tool's version."""
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus (nproc)": f"{os.cpu_count()} × {cpu}",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "load average (1/5/15 min) at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": sys.version.split()[0],
        "syncd": _package("syncd"),
        "boto3 / botocore": f"{_package('boto3')} / {_package('botocore')}",
        "seaweedfs": _first_line([find_weed(), "version"]),
    }
    for name in ("aws", "rclone", "s5cmd"):
        facts[name] = peers[name].version if name in peers else f"unavailable: {problems.get(name, 'not selected')}"
    facts["awscli (PyPI)"] = _package("awscli")
    return facts


# ---------------------------------------------------------------------- charts

def write_charts(rows: list[Row], outdir: Path) -> list[Path]:
    """One PNG per scenario (median bars with min–max whiskers per metric), plus one of the S3
    request counts for scenarios that counted them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for scenario in dict.fromkeys(r.scenario for r in rows):
        mine = [r for r in rows if r.scenario == scenario]
        metrics = list(dict.fromkeys(r.metric for r in mine))
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            group = [r for r in mine if r.metric == metric]
            medians = [r.median or 0.0 for r in group]
            low = [m - min(r.values) if r.values else 0.0 for m, r in zip(medians, group, strict=True)]
            high = [max(r.values) - m if r.values else 0.0 for m, r in zip(medians, group, strict=True)]
            bars = ax.bar([r.tool for r in group], medians, yerr=[low, high], capsize=4,
                          color=["tab:green" if r.tool.startswith(SYNCD) else "tab:blue" for r in group])
            for bar, r in zip(bars, group, strict=True):
                label = fmt(r.median) if r.ok else "FAILED"
                ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
            if group[0].target is not None:
                ax.axhline(group[0].target, color="tab:red", linestyle="--", linewidth=1,
                           label=f"target {fmt(group[0].target)}")
                ax.legend(fontsize=8)
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)  # best rows have long labels
            ax.set_title(metric, fontsize=9)
            ax.set_ylabel(f"{group[0].unit} ({'higher' if group[0].higher_is_better else 'lower'} is better)")
        title = f"{scenario}: {REGISTRY[scenario].summary}" if scenario in REGISTRY else scenario
        fig.suptitle(textwrap.fill(title, width=int(10 * 5.5 * len(metrics))), fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, outdir / f"{scenario}.png"))
        plt.close(fig)
        written += _request_chart(plt, scenario, mine, outdir)
    return written


def _request_chart(plt: Any, scenario: str, rows: list[Row], outdir: Path) -> list[Path]:
    keys = [k for k in ("req PUT", "req HEAD", "req GET", "req LIST") if any(k in r.extras for r in rows)]
    counted = [r for r in rows if any(k in r.extras for k in keys)]
    if not keys or not counted:
        return []
    metrics = list(dict.fromkeys(r.metric for r in counted))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        group = [r for r in counted if r.metric == metric]
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            xs = [j + i * width for j in range(len(group))]
            # +1 so that zero requests still shows on the log scale.
            ax.bar(xs, [(r.extra_median(key) or 0.0) + 1 for r in group], width, label=key.removeprefix("req "))
        ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(group))], [r.tool for r in group])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("requests + 1 (median, log scale)")
        ax.set_title(metric, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{scenario}: S3 requests per run (counted by the proxy)", fontsize=10)
    fig.tight_layout()
    path = _save(fig, outdir / f"{scenario}-requests.png")
    plt.close(fig)
    return [path]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------- the report

def write_report(samples: list[Sample], facts: dict[str, str], settings: dict[str, str], outdir: Path,
                 quick: bool) -> tuple[Path, list[Row]]:
    """results.md, the charts and raw/results-<time>.json under ``outdir``; returns the markdown's path.

    The report replaces the one in ``outdir``: the old charts are removed first, so a run of
    fewer scenarios leaves no chart of an older run beside it (history lives in git)."""
    rows = aggregate(samples)
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.png"):
        old.unlink()
    charts = write_charts(rows, outdir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    raw = outdir / "raw" / f"results-{stamp}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"facts": facts, "settings": settings,
                               "samples": [dataclasses.asdict(s) for s in samples]}, indent=1))
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    parts = ["# syncd benchmarks", ""]
    if quick:
        parts += ["> **Quick run** (`--quick`: one repetition, small datasets). A smoke test of the harness; "
                  "the numbers are not representative.", ""]
    parts += ["Produced by `scripts/bench.sh` (`python -m tests.bench.run`); see tests/bench/README.md. "
              "Every tool runs on the same data in the same run against the same local SeaweedFS, in rotating "
              "order; each timed run writes into a fresh bucket (no-change runs: the tool's own synced bucket) "
              "and is followed by a check that the bucket holds exactly the dataset's keys and sizes (and "
              "matching bytes for 20 sampled objects). A run that fails that check is reported as FAILED, "
              "not as a number. Ratio = the tool's median ÷ syncd's median for the same metric (for times, "
              "above 1 means slower than syncd).", "", "## Scenarios", ""]
    parts += [f"- **{name}**: {REGISTRY[name].summary}" for name in scenarios if name in REGISTRY]
    parts += ["", "## Results", "", markdown(main_table(rows)), ""]
    for scenario, table in detail_tables(rows).items():
        parts += [f"### {scenario}: details (medians)", "", markdown(table), ""]
    if charts:
        parts += ["## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts] + [""]
    parts += ["## How each tool was run", "", markdown([["tool", "settings"], *map(list, settings.items())]), "",
              "## Machine", "", markdown([["fact", "value"], *map(list, facts.items())]), "",
              f"Raw samples: `{raw.relative_to(outdir)}` beside this report (not committed: git ignores "
              "`docs/benchmarks/**/raw/`).", ""]
    path = outdir / "results.md"
    path.write_text("\n".join(parts))
    return path, rows
