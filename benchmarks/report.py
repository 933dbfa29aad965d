"""Benchmark results on disk: one JSON file and one Markdown file per benchmark, PNG plots when matplotlib
is installed (the ``bench`` extra), and the machine the numbers were measured on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


@dataclass
class Table:
    """One Markdown table: a title, column headers and rows of already-formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: row has {len(cells)} cells, table has {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def to_markdown(self) -> str:
        lines = [f"#### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: cores, CPU model, memory, kernel, Python, load at the start."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _clean(value: Any) -> Any:
    # JSON has no NaN: write null so the files parse everywhere.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_results(out_dir: Path, name: str, data: dict[str, Any], tables: list[Table]) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (``data`` + machine + tables) and ``<name>.md``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), **data, "tables": [t.to_markdown() for t in tables]}
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    md_path = out_dir / f"{name}.md"
    md_path.write_text(f"### {name}\n\n" + "\n".join(t.to_markdown() for t in tables))
    return json_path, md_path


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display on a server), or None."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, path: Path) -> Path:
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(path: Path, title: str, ylabel: str, groups: list[str], series: dict[str, list[float]],
              log: bool = False) -> Path | None:
    """A grouped bar chart (one group per x label, one bar per series); ``None`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [0 if v is None or math.isnan(v) else v for v in values], width, label=label)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    return _save(plt, fig, ax, path)


def plot_lines(path: Path, title: str, xlabel: str, ylabel: str, xs: list[float],
               series: dict[str, list[float]], logx: bool = False, logy: bool = False) -> Path | None:
    """A line chart with one line per series; ``None`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    return _save(plt, fig, ax, path)
