"""Figures, goals, the printed table and the JSON results file shared by every benchmark."""

from __future__ import annotations

import json
import os
import platform
import sys
import timeit
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

#: Where results are written; the folder is git-ignored.
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Goal:
    """A bound on a figure: its ``ratio`` to the baseline, or its ``value`` itself."""

    on: Literal["ratio", "value"]
    bound: Literal["at most", "at least"]
    limit: float

    def met_by(self, figure: Figure) -> bool | None:
        """Whether ``figure`` meets the goal; None when the figure has no ratio to judge."""
        measured = figure.ratio if self.on == "ratio" else figure.value
        if measured is None:
            return None
        return measured <= self.limit if self.bound == "at most" else measured >= self.limit

    def __str__(self) -> str:
        sign = "<=" if self.bound == "at most" else ">="
        return f"{self.on} {sign} {self.limit:g}"


@dataclass(frozen=True)
class Figure:
    """One measured number, with the baseline it is compared to in the same run.

    ``ratio`` is ``value / baseline_value``: for times lower is better, for rates higher is.
    ``details`` holds secondary numbers (latency percentiles, request counts) for the JSON file.
    """

    benchmark: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    goal: Goal | None = None
    details: dict[str, float | str] = field(default_factory=dict[str, float | str])

    @property
    def ratio(self) -> float | None:
        """``value / baseline_value``, or None without a baseline."""
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return self.value / self.baseline_value

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None without a goal."""
        return None if self.goal is None else self.goal.met_by(self)


def per_call(
    function: Callable[..., object],
    *arguments: object,
    smoke: bool,
    min_seconds: float = 0.2,
) -> float:
    """Seconds per call of ``function(*arguments)``: the best of five auto-ranged loops.

    The call is compiled into timeit's loop, not wrapped in a lambda, so that the time is the
    function's own. The minimum is the least noisy estimate on a shared machine: noise only
    ever adds time. ``smoke`` runs one short loop, to check that the benchmark still works.
    """
    names = [f"a{index}" for index in range(len(arguments))]
    timer = timeit.Timer(
        f"function({', '.join(names)})",
        globals={"function": function, **dict(zip(names, arguments, strict=True))},
    )
    if smoke:
        return timer.timeit(10) / 10
    number = 1
    while timer.timeit(number) < min_seconds / 5:
        number *= 2
    return min(timer.repeat(repeat=5, number=number)) / number


def machine() -> dict[str, str | int]:
    """The machine the figures were measured on, as the README's table shows it."""
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model or platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
    }


def _format_number(number: float) -> str:
    if number >= 1000:
        return f"{number:,.0f}"
    if number >= 10:
        return f"{number:.1f}"
    return f"{number:.3g}"


def table(figures: Iterable[Figure]) -> str:
    """The figures as one Markdown table, the form bench/README.md keeps."""
    lines = [
        "| Benchmark | Figure | Value | Baseline | Ratio | Goal | Met |",
        "|---|---|---:|---|---:|---|:---:|",
    ]
    for figure in figures:
        baseline = (
            f"{figure.baseline} {_format_number(figure.baseline_value)}"
            if figure.baseline is not None and figure.baseline_value is not None
            else ""
        )
        ratio = "" if figure.ratio is None else f"{figure.ratio:.2f}"
        met = {None: "", True: "yes", False: "**no**"}[figure.met]
        lines.append(
            f"| {figure.benchmark} | {figure.name} | {_format_number(figure.value)} {figure.unit}"
            f" | {baseline} | {ratio} | {figure.goal or ''} | {met} |"
        )
    return "\n".join(lines)


def write_results(figures: list[Figure], *, smoke: bool, folder: Path = RESULTS) -> Path:
    """Write the figures and the machine as JSON into ``folder``; return the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    document = {
        "date": now.isoformat(timespec="seconds"),
        "smoke": smoke,
        "machine": machine(),
        "figures": [
            {
                **asdict(figure),
                "goal": str(figure.goal or ""),
                "ratio": figure.ratio,
                "met": figure.met,
            }
            for figure in figures
        ],
    }
    path = folder / f"bench-{now:%Y%m%dT%H%M%SZ}{'-smoke' if smoke else ''}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
