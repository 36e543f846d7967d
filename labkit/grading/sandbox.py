"""The grader's end of a sandboxed grading: a zygote process per job slot (labkit.grading.supervisor),
restarted if it ever fails, and one call per (submission, question) that always returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from labkit.grading.channel import Closed, LineReader, TooLong, send

__all__ = ["Sandbox"]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MARGIN_S = 30.0  # beyond a question's own limit: the supervisor's start, its judging and its cleanup


class Sandbox:
    """One job slot. `grade` sends a request, waits for the supervisor to be ready, hands it the
    hidden cases, and returns its outcome, or an outcome that says why there is none."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, "-m", "labkit.grading.supervisor"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, start_new_session=True, bufsize=0)
        self.reader = LineReader(self.process.stdout.fileno(), 8 << 20)
        return self.process

    def grade(self, notebook: Path, question: str, hidden: list, *, timeout_s: float, memory_mb: int) -> dict[str, Any]:
        process = self.process if self.process and self.process.poll() is None else self._start()
        deadline = time.monotonic() + timeout_s + MARGIN_S + 60  # the zygote's first start imports torch
        try:
            send(process.stdin.fileno(), {"notebook": str(notebook.resolve()), "question": question,
                                          "timeout_s": timeout_s, "memory_mb": memory_mb})
            ready = self.reader.message(deadline)
            if ready is not None and ready.get("ready"):
                send(process.stdin.fileno(), {"hidden": hidden})
                outcome = self.reader.message(deadline)
            else:
                outcome = ready
            if outcome is None:
                raise TimeoutError
            if "grader_error" in outcome:
                return {"question": question, "points": 0.0, "notes": [f"the grader failed: {outcome['grader_error']}"],
                        "grader_error": outcome["grader_error"]}
            return outcome
        except (TimeoutError, Closed, TooLong, ValueError, OSError) as e:
            self.close()
            why = "did not answer in time" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            return {"question": question, "points": 0.0, "notes": [f"the grader failed: its supervisor {why}"],
                    "grader_error": why}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass
            self.process.wait()
        if self.process is not None:
            for pipe in (self.process.stdin, self.process.stdout):
                pipe.close()
        self.process = None
