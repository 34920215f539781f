"""The result table: one markdown row per case/shape, values formatted by unit."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Formatter = Callable[[float], str]


def rate(value: float) -> str:
    return f"{value:,.0f} pts/s"


def seconds(value: float) -> str:
    return f"{value:.3f} s"


def millis(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def micros(value: float) -> str:
    return f"{value * 1e6:.3f} µs"


def mebibytes(kb: float) -> str:
    return f"{kb / 1024:,.0f} MiB"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Row:
    """One line of the table. Values are medians; `text` overrides a formatted value."""

    case: str
    fmt: Formatter
    stepstream: float | None = None
    noop: float | None = None
    mlflow: float | None = None
    target: str = "—"
    met: bool | None = None
    stepstream_text: str | None = None
    noop_text: str | None = None
    mlflow_text: str | None = None
    notes: list[str] = field(default_factory=list)
    trackio: float | None = None
    trackio_text: str | None = None

    def cells(self) -> list[str]:
        def show(value: float | None, text: str | None) -> str:
            if text is not None:
                return text
            return "—" if value is None else self.fmt(value)

        def ratio(a: float | None, b: float | None) -> str:
            if a is None or b is None or b == 0:
                return "—"
            r = a / b
            if r >= 100:
                return f"{r:,.0f}x"
            return f"{r:.2f}x" if r >= 0.1 else f"1/{1 / r:,.0f}x"

        met = {None: "—", True: "met", False: "**not met**"}[self.met]
        return [
            self.case,
            show(self.stepstream, self.stepstream_text),
            show(self.noop, self.noop_text),
            ratio(self.stepstream, self.noop),
            show(self.mlflow, self.mlflow_text),
            ratio(self.stepstream, self.mlflow),
            show(self.trackio, self.trackio_text),
            ratio(self.stepstream, self.trackio),
            self.target,
            met,
        ]


HEADER = [
    "case",
    "stepstream",
    "no-op sink",
    "stepstream / no-op",
    "MLflow",
    "stepstream / MLflow",
    "Trackio",
    "stepstream / Trackio",
    "target",
    "met?",
]


def render(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        cells = [cell.replace("|", "\\|") for cell in row.cells()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}; "
        f"Python {platform.python_version()} ({sys.executable}); {platform.platform()}"
    )


def report(command: str, header: Sequence[str], rows: Sequence[Row], notes: Sequence[str]) -> str:
    parts = [
        "# stepstream benchmark",
        "",
        f"command: `{command}`",
        "",
        machine(),
        "",
        *header,
        "",
        render(rows),
    ]
    all_notes = list(notes)
    for row in rows:
        for note in row.notes:
            line = f"{row.case}: {note}"
            if note and line not in all_notes:
                all_notes.append(line)
    if all_notes:
        parts += ["", "Notes:", "", *(f"- {note}" for note in all_notes)]
    return "\n".join(parts) + "\n"
