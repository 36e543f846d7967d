"""The submission's side of a grading: run the notebook's code cells, then run each probe the
supervisor asks for and send back what the answer gave, as plain data.

Nothing here decides a grade, and nothing secret is here: the process holds the student's code,
the probes and the inputs of the trial at hand, and no expected value, test file or key. What it
sends is treated as the answer's output, so a submission that writes to the channel itself can
only claim outputs, not points.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from labkit.grading.channel import LineReader, send
from labkit.grading.plain import text, to_plain
from labkit.grading.probes import observe

__all__ = ["code_cells", "run_cells", "serve"]

MAX_CELL_NOTES = 50


def code_cells(notebook: Path) -> list[str]:
    """The code cells' sources, read as plain JSON (nbformat's import alone costs a second per run).
    IPython-only lines (magics, shell escapes) are not Python: they are left out."""
    cells = json.loads(notebook.read_text())["cells"]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"]
    return ["\n".join(line for line in s.splitlines() if not line.lstrip().startswith(("%", "!"))) for s in sources]


def run_cells(cells: list[str]) -> tuple[dict, list[str], int]:
    """Execute the cells in one namespace, as a notebook would; a failing cell is noted, not fatal.
    Returns the namespace, the first notes and how many cells failed in all."""
    namespace: dict = {"__name__": "__main__"}
    notes, failed = [], 0
    for number, source in enumerate(cells, 1):
        try:
            exec(compile(source, f"<code cell {number}>", "exec"), namespace)
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: the next cells still run
            failed += 1
            if len(notes) < MAX_CELL_NOTES:
                where = traceback.extract_tb(e.__traceback__)[-1].lineno if e.__traceback__ else "?"
                notes.append(f"code cell {number} raised {type(e).__name__}: {text(e, 300)} (line {where})")
    return namespace, notes, failed


def serve(notebook: Path, name: str, to_grader: int, from_grader: int) -> None:
    """Run the cells, report them, then answer ``run`` requests until told to ``exit``; never returns."""
    import labkit.grading

    write = send  # bound before any submission code runs
    commands = LineReader(from_grader)
    try:
        cells = code_cells(notebook)
    except Exception as e:
        write(to_grader, {"unreadable": f"not a readable notebook: {type(e).__name__}: {text(e)}"})
        os._exit(0)
    # The notebook's own `check(...)` cells are the learner's practice runs: silenced here, so an
    # answer that hangs or crashes costs its own question only, in its own process.
    labkit.grading.check = lambda question, answer: 0.0
    namespace, notes, failed = run_cells(cells)
    write(to_grader, {"cells": len(cells), "failed": failed, "notes": notes, "defined": name in namespace})
    answer = namespace.get(name)

    def oracle(oracle_name: str, args: list) -> Any:
        write(to_grader, {"oracle": oracle_name, "args": to_plain(args)})
        reply = commands.message(float("inf"))
        if "error" in reply:
            raise TypeError(reply["error"])
        return reply["value"]

    while True:
        command = commands.message(float("inf"))
        if command.get("exit"):
            sys.stdout.flush()
            os._exit(0)  # threads the submission left running end here, with the process
        output, error, extra = observe(command["probe"], command["inputs"], answer, oracle)
        write(to_grader, {"result": command["run"], "output": output, "error": error, "extra": extra})
