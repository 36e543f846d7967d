"""What every benchmark script shares: its command line and how figures are printed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from labkit.device import pick_device
from labkit.reference import save_results


def print_table(results: dict[str, Any], prefix: str = "") -> None:
    """One line per figure, nested sections flattened to dotted names."""
    for key, value in results.items():
        if isinstance(value, dict):
            print_table(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            print(f"  {prefix + key:55s} {value:12.3f}")
        elif isinstance(value, (int, str)) and len(str(value)) < 60:
            print(f"  {prefix + key:55s} {value:>12}")


def cli(run: Callable[[torch.device], dict[str, Any]], *, name: str, doc: str | None) -> None:
    """``--device`` to choose where, ``--save`` to record under bench/results/ with the card's name."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save", action="store_true", help="write the figures under bench/results/")
    args = parser.parse_args()
    device = pick_device(args.device)
    results = run(device)
    print_table(results)
    if args.save:
        print("saved", save_results(results, device, source=f"bench/{name}.py", suffix=name))
