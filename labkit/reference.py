"""Recorded GPU figures from ``bench/results/``, so a CPU-only learner still sees real GPU numbers.

Each JSON there was written on one card (``make gpu-check``, or the reference runs the course was
designed from). Its file name starts with the date and the card; inside, ``card`` (or the older
``device``) names the GPU. Nothing here measures: it only reads what was measured, with its label.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["RecordedRun", "Spread", "results_dir", "recorded_runs", "lookup", "spread", "lesson_spread", "card_name", "results_path", "save_results"]

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class RecordedRun:
    """One results file: where it came from and what it holds."""

    path: Path
    card: str
    date: str
    torch: str
    data: dict[str, Any]

    @property
    def is_gpu(self) -> bool:
        return self.data.get("device_type", "cuda") == "cuda"

    @property
    def label(self) -> str:
        """How a plot or table should name these figures."""
        return f"{self.card}, recorded {self.date} (torch {self.torch})"


def results_dir() -> Path:
    """``bench/results`` of the checkout this labkit was imported from."""
    return Path(__file__).resolve().parent.parent / "bench" / "results"


def recorded_runs(directory: Path | None = None, *, gpu_only: bool = True) -> list[RecordedRun]:
    """Results files with a card named in them, oldest first (GPU runs only, unless asked)."""
    directory = directory or results_dir()
    runs: list[RecordedRun] = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            warnings.warn(f"skipping unreadable results file {path.name}: {exc}", stacklevel=2)
            continue
        card = data.get("card") or data.get("device")
        date = data.get("date") or (m.group(1) if (m := _DATE.match(path.name)) else "undated")
        if card:
            runs.append(RecordedRun(path, card, date, str(data.get("torch", "?")), data))
    return [r for r in runs if r.is_gpu or not gpu_only]


_MISSING = object()


def _at(run: RecordedRun, key_path: str) -> Any:
    node: Any = run.data.get("results", run.data)
    for part in key_path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def lookup(key_path: str, directory: Path | None = None) -> tuple[Any, RecordedRun] | None:
    """The newest recorded value at a dotted path such as ``"cuda_graph.eager_bs1_ms"``."""
    for run in reversed(recorded_runs(directory)):
        if (node := _at(run, key_path)) is not _MISSING:
            return node, run
    return None


@dataclass(frozen=True)
class Spread:
    """One quantity as recorded by several runs on one card: shown as a median and its range."""

    values: tuple[float, ...]
    runs: tuple[RecordedRun, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def card(self) -> str:
        return self.runs[0].card

    @property
    def source(self) -> str:
        """Card, dates and the runs by file name: what a claim's ``recorded`` names."""
        dates = sorted({r.date for r in self.runs})
        names = ", ".join(r.path.stem for r in self.runs)
        return f"{self.card}, {'/'.join(dates)}, {len(self.runs)} run{'s' * (len(self.runs) > 1)}: {names}"

    def text(self, fmt: str | None = None, unit: str = "") -> str:
        """"5.53 ms (median of 3 runs, 4.46–8.35)", or the one value when only one run recorded it."""
        def show(v: float) -> str:
            return fmt.format(v) if fmt else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

        unit = f" {unit}" if unit else ""
        if len(self.values) == 1:
            return f"{show(self.values[0])}{unit} (1 run)"
        return f"{show(self.median)}{unit} (median of {len(self.values)} runs, {show(self.lo)}–{show(self.hi)})"


def spread(*key_paths: str, directory: Path | None = None) -> Spread | None:
    """Every GPU run's value of one quantity, which older and newer files store under different paths.

    Each run contributes the value at the first of ``key_paths`` it has (a number), from the
    newest run's card only (`_newest_card`). None when no run has it.
    """
    found: list[tuple[float, RecordedRun]] = []
    for run in recorded_runs(directory):
        for key_path in key_paths:
            value = _at(run, key_path)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                found.append((float(value), run))
                break
    return _newest_card(found)


def lesson_spread(notebook: str, name: str, directory: Path | None = None) -> Spread | None:
    """The figure ``name`` of lesson ``notebook`` as its own full-size runs on a GPU recorded it
    (`make gpu-check` runs the report there and keeps each lesson's figures under ``lessons``).

    Looked up by name, not by dotted path: figure names may hold dots and spaces.
    """
    found = []
    for run in recorded_runs(directory):
        value = run.data.get("results", {}).get("lessons", {}).get(notebook, {}).get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((float(value), run))
    return _newest_card(found)


def _newest_card(found: list[tuple[float, RecordedRun]]) -> Spread | None:
    """The values of the newest run's card only, so figures of two cards are never mixed."""
    if not found:
        return None
    card = found[-1][1].card
    same = [(v, r) for v, r in found if r.card == card]
    return Spread(tuple(v for v, _ in same), tuple(r for _, r in same))


def card_name(device: str | torch.device) -> str:
    """The card's name for a CUDA device, ``"CPU"`` otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def results_path(device: str | torch.device, suffix: str = "", directory: Path | None = None) -> Path:
    """``<directory>/<date>-<card>[-suffix].json``, today, for ``device``'s card."""
    slug = re.sub(r"[^a-z0-9]+", "-", card_name(device).lower().removeprefix("nvidia ")).strip("-")
    return (directory or results_dir()) / f"{datetime.date.today().isoformat()}-{slug}{'-' + suffix if suffix else ''}.json"


def save_results(results: dict[str, Any], device: str | torch.device, *, source: str, suffix: str = "",
                 directory: Path | None = None, merge: bool = False) -> Path:
    """Write ``results`` as ``<date>-<card>[-suffix].json`` with the card, date and versions beside them.

    ``merge``: keep the sections of an existing file that ``results`` does not replace, so runs
    of different parts on the same card and day add up to one record.
    """
    device = torch.device(device)
    path = results_path(device, suffix, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if merge and path.exists():
        results = json.loads(path.read_text())["results"] | results
    payload = {
        "card": card_name(device),
        "device_type": device.type,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "source": source,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path
