"""The grader's processes: a zygote per job slot, a supervisor per (submission, question), and the
submission's sandboxed child.

``python -m labkit.grading.supervisor`` is the zygote. It imports what submissions commonly need
(torch, numpy) once, then for each request it reads on stdin forks a supervisor, so a question
costs a fork, not an interpreter and a torch import. The supervisor forks the child *before* it
learns the trials, so the child's memory never held an expected value; it then reads the trials
from the grader, drives the child one probe at a time, serves its oracle calls, judges, kills
every process the submission started and prints one outcome line. Both zygote and supervisor are
subreapers: a grandchild that daemonised itself is still theirs to kill.

The child confines itself before the submission's first line (labkit.grading.landlock): it can
read the Python installation and labkit, write its working directory and nothing else, and cannot
signal, ptrace or read the memory of these processes.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from labkit.grading import landlock
from labkit.grading.channel import Closed, LineReader, TooLong, send
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import Observation, Trial, run_rounds, score

__all__ = ["kill_descendants", "main", "readable_paths"]

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
MAX_RESULT = 256 * 1024  # bytes of one answer's output as data
SETUP_S = 30.0  # the child's own start: forking, limits, confinement
MAX_PROCESSES = 256  # a submission may start this many (a fork bomb is stopped here)


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def kill_descendants(group: int | None = None, patience_s: float = 10.0) -> int:
    """SIGKILL ``group`` (a process group) and every child of this process until none is left;
    a subreaper's children include every orphaned descendant. Returns how many were killed."""
    killed, deadline = 0, time.monotonic() + patience_s
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
    while time.monotonic() < deadline:
        children = [child.pid for child in psutil.Process().children()]
        if not children:
            break
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return killed


def _user_processes() -> int:
    uid = os.getuid()
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def readable_paths() -> list[Path]:
    """What a submission may read: the Python installation, installed packages, labkit itself and
    the system's libraries. Not the project (tests, solutions, other notebooks live there)."""
    paths = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr", "/lib", "/lib64", "/bin",
                                "/etc", "/proc", "/sys", "/dev/urandom", "/dev/random", "/dev/zero")}
    paths |= {Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) or ".zip" in p}
    paths.add(Path(__file__).resolve().parents[1])  # labkit/
    return sorted(paths)


def _become_child(work: Path, memory_mb: int, to_grader: int, from_grader: int) -> int:
    """In the forked child, before any submission code: its own session, no descriptor of the
    grader's but its channel, its limits and its confinement. Returns the Landlock ABI used."""
    os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    null = os.open(os.devnull, os.O_RDONLY)
    output = os.open(work / "output.txt", os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    keep = sorted({0, 1, 2, to_grader, from_grader})
    for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
        os.closerange(low + 1, high)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, now /dev/null
    os.chdir(work)
    os.environ.update(HOME=str(work), TMPDIR=str(work), MPLBACKEND="Agg", MPLCONFIGDIR=str(work))
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # soft and hard: it cannot raise them
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts the user's processes everywhere: leave room for everyone else's
    processes, hard = _user_processes() + MAX_PROCESSES, resource.getrlimit(resource.RLIMIT_NPROC)[1]
    processes = processes if hard == resource.RLIM_INFINITY else min(processes, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    return landlock.restrict(readable_paths(), [work, Path(os.devnull)])


def supervise(request: dict, grader_in: LineReader) -> dict:
    """One (submission, question): fork the child, then judge it. Returns the outcome."""
    q = QUESTIONS[request["question"]]
    timeout_s, started = float(request["timeout_s"]), time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="labkit-grade-"))
    try:
        shutil.copyfile(request["notebook"], work / "submission.ipynb")
        return _supervise(q, request, work, grader_in, started, timeout_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _supervise(q, request: dict, work: Path, grader_in: LineReader, started: float, timeout_s: float) -> dict:
    from_child, to_supervisor = os.pipe()
    from_supervisor, to_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(from_child)
            os.close(to_child)
            abi = _become_child(work, int(request["memory_mb"]), to_supervisor, from_supervisor)
            send(to_supervisor, {"hello": abi})
        except BaseException as e:  # the child could not even start: say so, never run its code
            send(to_supervisor, {"failed_setup": f"{type(e).__name__}: {e}"})
            os._exit(1)
        try:
            from labkit.grading.child import serve

            serve(work / "submission.ipynb", q.name, to_supervisor, from_supervisor)
        finally:
            os._exit(1)  # never back into the supervisor's code
    os.close(to_supervisor)
    os.close(from_supervisor)
    _prctl(PR_SET_DUMPABLE, 0)  # from here on this process knows the answers: no ptrace, no /proc/mem
    pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    child = LineReader(from_child, MAX_RESULT, pidfd)
    log: list[str] = []
    try:
        hello = child.message(time.monotonic() + SETUP_S)
        if not hello or "hello" not in hello:
            raise RuntimeError(f"the grading child did not start: {hello}")
        log.append(f"sandbox: Landlock ABI {hello['hello']}" if hello["hello"] else
                   "sandbox: no Landlock on this kernel (files, signals and ptrace are not confined)")
        send(1, {"ready": True})
        secret = grader_in.message(time.monotonic() + SETUP_S)
        trials = q.trials(secret["hidden"])
        return _drive(q, trials, child, to_child, pid, started + timeout_s, timeout_s, log)
    finally:
        kill_descendants(pid)
        for fd in (from_child, to_child, pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _ended(pid: int) -> str:
    """Why the child is gone, once it is: its exit code or the signal that killed it."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return "the grading process ended before a result"
    if not done:
        return "the grading process closed its channel before a result"
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return f"the grading process was killed by {sig} before a result: a crash, or the memory limit"
    return (f"the grading process ended (exit code {os.WEXITSTATUS(status)}) before a result: "
            "os._exit, a crash, or the memory limit")


class _ProbeChannel:
    """One trial's probe runs over the child's channel: send the inputs, answer the oracle calls the
    answer makes on the way, return the result. Runs are numbered so a stale reply is refused."""

    def __init__(self, child: LineReader, to_child: int, deadline: float):
        self.child, self.to_child, self.deadline = child, to_child, deadline
        self.runs = -1  # probe runs sent so far, less one: a speed trial sends one per round

    def run_once(self, trial: Trial, inputs: Any) -> Observation:
        self.runs += 1
        start = time.monotonic()
        send(self.to_child, {"run": self.runs, "probe": trial.probe, "inputs": inputs})
        calls: list[tuple[str, list]] = []
        while True:
            message = self.child.message(self.deadline)
            if message is None:
                raise TimeoutError
            if "oracle" in message and message["oracle"] in trial.oracles:
                calls.append((message["oracle"], message["args"]))
                send(self.to_child, _serve(trial.oracles[message["oracle"]], message["args"]))
                continue
            if message.get("result") != self.runs:
                raise ValueError(f"an unexpected message on the grader's channel: {str(message)[:200]}")
            return Observation(message["output"], message["error"], tuple(calls),
                               time.monotonic() - start, message["extra"] or {})


def _drive(q, trials, child: LineReader, to_child: int, pid: int, deadline: float, timeout_s: float,
           log: list[str]) -> dict:
    """Read the notebook's cell report, run each trial, and turn every way the child can fail into
    the one outcome that says what went wrong."""
    seen: list[Observation | None] = [None] * len(trials)
    notes: list[str] = []
    missing = "not run"
    begun = time.monotonic()
    try:
        cells = child.message(deadline)
        if cells is None:
            raise TimeoutError
        if "unreadable" in cells:
            return _outcome(q, trials, seen, [], cells["unreadable"], log, error=cells["unreadable"])
        notes = [str(n) for n in cells["notes"]][:50]
        if cells["failed"] > len(notes):
            notes.append(f"... and {cells['failed'] - len(notes)} more cells raised")
        log.append(f"cells: {cells['cells']} run, {cells['failed']} raised, in {time.monotonic() - begun:.2f} s")
        if not cells["defined"]:
            missing = f"no definition named {q.name!r} in the notebook"
            return _outcome(q, trials, seen, notes, missing, log)
        channel = _ProbeChannel(child, to_child, deadline)
        for number, trial in enumerate(trials):
            seen[number] = run_rounds(trial, functools.partial(channel.run_once, trial))
            speed = f", {seen[number].speedup:.2f}x the reference over {len(seen[number].rounds)} rounds" if seen[number].rounds else ""
            log.append(f"trial {number + 1} ({trial.call}): {seen[number].seconds:.3f} s{speed}")
        send(to_child, {"exit": True})
    except TimeoutError:
        missing = f"did not finish within {timeout_s:g} s (an endless loop?)"
    except (Closed, BrokenPipeError):
        missing = _ended(pid)
    except TooLong as e:
        missing = f"the answer's result is too large to grade ({e})"
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON that is not ours
        missing = f"the grader's channel carried something that is not a result ({type(e).__name__}: {e})"
    return _outcome(q, trials, seen, notes, missing, log)


def _serve(oracle, args: Any) -> dict:
    try:
        return {"value": oracle(*args)}
    except Exception as e:  # a malformed call is the answer's mistake: it gets the error back
        return {"error": f"{type(e).__name__}: {e}"}


def _outcome(q, trials, seen, notes: list[str], missing: str, log: list[str], error: str | None = None) -> dict:
    result = score(q.id, trials, seen, q.points, missing=missing)
    run_notes = list(notes)
    if any(s is None for s in seen) and missing != "not run":
        run_notes.append(missing)
    return {"question": q.id, "points": result.points, "out_of": q.points, "passed": result.passed,
            "total": result.total, "feedback": result.feedback, "details": result.details,
            "notes": run_notes, "log": log, "error": error}


def main() -> None:
    """The zygote: a request per line on stdin, its supervisor's lines on stdout."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    for module in ("numpy", "torch"):  # what the course's notebooks import, loaded once for every fork
        if importlib.util.find_spec(module):
            __import__(module)
    grader_in = LineReader(0)
    while True:
        try:
            request = grader_in.message(float("inf"))
        except Closed:
            return
        pid = os.fork()
        if pid == 0:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            try:
                outcome = supervise(request, grader_in)
            except BaseException as e:  # the grader's own failure: reported, never a hang
                outcome = {"question": request.get("question"), "grader_error": f"{type(e).__name__}: {e}"}
            send(1, outcome)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        kill_descendants()
        if status:
            send(1, {"question": request.get("question"),
                     "grader_error": f"the supervisor ended abnormally (wait status {status})"})


if __name__ == "__main__":
    main()
