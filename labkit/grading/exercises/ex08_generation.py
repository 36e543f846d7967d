"""Exercise 08: the iteration-level scheduler step (who joins, who is preempted, given the free
blocks), graded by replay against labkit's `schedule` and by its throughput in simulated device
time against request-level static batching.

Both questions run a simulated engine (`Engine`: no model, no torch): a trace of requests
(arrival, prompt tokens, output tokens) and a paged cache of ``kv_blocks`` blocks. At every step
boundary finished sequences have left; the scheduler gets the running sequences as
``[[seq_id, held, pending], ...]`` (admission order) and the queue as ``[[seq_id, prompt,
generated], ...]`` (front first) and returns ``{"work": [[seq_id, tokens, new_blocks], ...],
"joined": [...], "preempted": [...]}``. The engine checks the plan is legal, applies it (every
sequence fed produces one token; one that has all its output tokens leaves) and moves on.

The probe drives the answer through the engine in the submission's process; the judges replay
the plans it returned through their own engine, so the state each plan is checked on, and the
simulated time, are the grader's own. `08.schedule` wants each plan equal to labkit's
(`labkit.generation.scheduler.schedule`, ``token_budget=None``) and names the first step that
differs, with the state in and both plans. `08.schedule_speed` wants only legal plans, and
scores the tokens per simulated second they reach against `static_schedule`.

Simulated time: a step costs ``C0_MS + C1_MS * tokens fed``. Decode is overhead-bound: the small
GPT's `forward_step` measured 1.38 ms for one sequence and about 7 ms for 32 on the CI CPU, so a
step's cost grows far slower than its batch (1.2 ms + 0.18 ms per token fits both). The clock is
simulated so that the grade is the same on any machine, loaded or not, with or without a GPU.
"""

from __future__ import annotations

import json
import math
import random
import traceback
from collections.abc import Callable
from typing import Any

from labkit.grading import trials
from labkit.grading.exercises.sim_engine import (
    C0_MS,
    C1_MS,
    Engine,
    Illegal,
    blocks,
    is_int,
    labkit_schedule,
    max_steps,
    run,
    short,
    static_schedule,
)
from labkit.grading.plain import describe, to_plain
from labkit.grading.trials import Question, Trial, calls, speed_credit

__all__ = ["speed_trace"]


# -- the plans, across the grader's pipe --------------------------------------------------------------
# A plan crosses as [work flattened, joined, preempted]: long replays stay far below the size limit.


def _encode(out: Any) -> list:
    plain = to_plain(out)
    if type(plain) is dict and all(type(plain.get(k)) is list for k in ("work", "joined", "preempted")):
        work = plain["work"]
        if all(type(w) is list and len(w) == 3 and all(map(is_int, w)) for w in work) and \
                all(map(is_int, plain["joined"] + plain["preempted"])):
            return [[x for w in work for x in w], plain["joined"], plain["preempted"]]
    return ["malformed", describe(plain)[:300]]


def _decode(sent: Any) -> dict:
    """The plan of one step as sent (`Illegal` for a malformed one)."""
    if type(sent) is list and len(sent) == 2 and sent[0] == "malformed":
        raise Illegal(f"it is not a dict {{'work': [[seq_id, tokens, new_blocks], ...], 'joined': [seq_id, ...], "
                      f"'preempted': [seq_id, ...]}} of ints: {sent[1]}")
    flat, joined, preempted = sent
    if not (type(flat) is list and len(flat) % 3 == 0 and all(map(is_int, flat + joined + preempted))):
        raise ValueError("a malformed plan on the channel")
    return {"work": [flat[i : i + 3] for i in range(0, len(flat), 3)], "joined": joined, "preempted": preempted}


def _where(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith("<code cell")]
    return f" (line {frames[-1].lineno} of {frames[-1].filename})" if frames else ""


def _replay_probe(answer: Callable, inputs: dict, oracle: trials.Oracle) -> tuple[Any, dict]:
    """The answer as the scheduler of the case's engine (its step cost as the judge counts it, so
    that requests arrive at the same steps), step after step, until every request has finished, a
    plan cannot be applied, the answer raises or ``max_steps`` steps have run."""
    engine = Engine(inputs["case"], tuple(inputs["cost"]))
    plans: list = []
    while not engine.done and len(plans) < inputs["max_steps"]:
        running, waiting = engine.state()
        try:
            out = answer(running, waiting, engine.free, engine.block_size, engine.max_batch_size)
        except NotImplementedError:
            raise
        except Exception as e:  # feedback names the step and the state it raised on
            return {"plans": plans, "raised": f"{type(e).__name__}: {e}"[:300] + _where(e)}, {}
        plans.append(_encode(out))
        try:
            engine.apply(_decode(plans[-1]))
        except Illegal:
            break
    return {"plans": plans}, {}


# -- feedback -----------------------------------------------------------------------------------------



def _call(engine: Engine, step: int) -> str:
    running, waiting = engine.state()
    return (f"step {step}: schedule(running={short(running)}, waiting={short(waiting)}, free_blocks={engine.free}, "
            f"block_size={engine.block_size}, max_batch_size={engine.max_batch_size})")


def _plan_text(plan: dict, first: str) -> str:
    """The plan, the part that differs first and the rest in brackets."""
    rest = ", ".join(f"{k}={short(plan[k])}" for k in ("work", "joined", "preempted") if k != first)
    return f"{first}={short(plan[first])} ({rest})"


_HINTS = {
    "preempted": "preempt only while the work needs more blocks than are free: the most recently admitted first, "
                 "recounting after each",
    "joined+": "lookahead: what a joiner leaves must cover the next token of every sequence whose blocks this step "
               "fills exactly, itself included (unless it runs alone)",
    "joined-": "admit from the front of the queue while a slot is free and the head's prompt fits with one step of "
               "lookahead; stop at the first that does not",
    "work": "work lists the running sequences in admission order, then the joiners in queue order",
}


def _differs(call: str, want: dict, got: dict) -> trials.Mismatch:
    """What labkit's plan and the answer's differ in first, with the rule that decides it."""
    if got["preempted"] != want["preempted"]:
        key, part = "preempted", "preempted"
    elif got["joined"] != want["joined"]:
        key, part = ("joined+" if len(got["joined"]) > len(want["joined"]) else "joined-"), "joined"
    else:
        key, part = "work", "work"
    return trials.Mismatch(call, _plan_text(want, part), _plan_text(got, part), _HINTS[key])


def _replayed(seen: trials.Observation, case: dict, cost: tuple[float, float], compare: bool, label: str,
              hint: str, max_steps: int) -> Engine:
    """The grader's own replay of the answer's plans: `Mismatch` at the first step that is
    illegal, differs from labkit's (``compare``) or raised, named by its step and the state that
    went in; the engine at the end otherwise."""
    out = seen.output
    if type(out) is not dict or type(out.get("plans")) is not list:
        raise trials.Mismatch(label, "the replay's plans", describe(out), hint)
    engine = Engine(case, cost)
    for step, sent in enumerate(out["plans"]):
        if engine.done:
            raise ValueError("plans past the end of the replay")
        try:
            plan = _decode(sent)
            want = engine.labkit_plan() if compare else None
            engine.check(plan)
        except Illegal as e:
            raise trials.Mismatch(_call(engine, step), "a legal plan", f"an illegal one: {e}", hint) from None
        if compare and plan != want:
            raise _differs(_call(engine, step), want, plan)
        engine.apply(plan)
    if "raised" in out:
        raise trials.Mismatch(_call(engine, len(out["plans"])), "a plan", f"it raised {out['raised']}", hint)
    if not engine.done:
        if len(out["plans"]) >= max_steps:
            raise trials.Mismatch(label, f"every request finished within {max_steps} steps",
                           f"did not finish in {max_steps} steps ({sum(engine.generated)} of {sum(engine.output)} "
                           f"tokens generated)", hint or "make progress every step: the oldest running sequence "
                           "always fits, and an empty batch admits the head of the queue")
        raise ValueError("the replay stopped early")
    return engine


# -- 08.schedule: replay -------------------------------------------------------------------------------


def _valid(case: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if not (is_int(case.get(key)) and case[key] >= 1):
            raise ValueError(f"{key} must be an int >= 1, got {case.get(key)!r}")
    requests = case.get("requests")
    if type(requests) is not list or not requests:
        raise ValueError("requests must be a non-empty list of [arrival, prompt, output]")
    for r in requests:
        if not (type(r) is list and len(r) == 3 and type(r[0]) in (int, float) and r[0] >= 0
                and is_int(r[1]) and is_int(r[2]) and r[1] >= 1 and r[2] >= 1):
            raise ValueError(f"a request is [arrival >= 0, prompt >= 1, output >= 1], got {r!r}")
        if blocks(r[1] + r[2] - 1, case["block_size"]) > case["kv_blocks"]:
            raise ValueError(f"request {r!r} cannot fit the whole cache alone")


def _plain_case(case: dict) -> dict:
    return json.loads(json.dumps(to_plain(case)))  # as it crosses the pipe: tuples become lists


def _schedule(case: dict, hint: str = "") -> Trial:
    """(case {kv_blocks, block_size, max_batch_size, requests: [[arrival step, prompt, output], ...]}, hint)"""
    case = _plain_case(case)
    _valid(case, ("kv_blocks", "block_size", "max_batch_size"))
    cap = max_steps(case)
    steps = run(case, labkit_schedule, (1.0, 0.0), step_cap=cap).steps
    label = (f"replay of {len(case['requests'])} requests ({case['kv_blocks']} blocks of {case['block_size']}, "
             f"max_batch_size {case['max_batch_size']}, {steps} steps)")

    def judge(seen: trials.Observation) -> None:
        _replayed(seen, case, (1.0, 0.0), True, label, hint, cap)

    return Trial(label, "schedule_replay", {"case": case, "cost": [1.0, 0.0], "max_steps": cap}, judge, hint)


def _case(kv_blocks: int, block_size: int, max_batch_size: int, requests: list) -> dict:
    return {"kv_blocks": kv_blocks, "block_size": block_size, "max_batch_size": max_batch_size,
            "requests": [list(r) for r in requests]}


# -- 08.schedule_speed: tokens per simulated second ------------------------------------------------------


def speed_trace(n: int = 60, seed: int = 0, gap_ms: float = 1.0, prompt: tuple[int, int] = (8, 32),
                output: tuple[int, int] = (4, 128)) -> list[list]:
    """``n`` requests as ``[arrival_ms, prompt, output]``: Poisson arrivals ``gap_ms`` apart on
    average, prompts uniform and outputs log-uniform in their ranges (inclusive), as lesson 08's
    `poisson_trace`; from `random.random` alone, so the same on every Python."""
    rng = random.Random(seed)
    t, out = 0.0, []
    lo, hi = math.log(output[0]), math.log(output[1] + 1)
    for _ in range(n):
        t += -gap_ms * math.log(1.0 - rng.random())
        p = prompt[0] + int(rng.random() * (prompt[1] - prompt[0] + 1))
        o = min(int(math.exp(lo + rng.random() * (hi - lo))), output[1])
        out.append([round(t, 3), p, o])
    return out


def _speed(case: dict, hint: str = "") -> Trial:
    """(case {kv_blocks, block_size, max_batch_size, max_len, requests: [[arrival_ms, prompt, output], ...]
    or trace: {n, seed, gap_ms, prompt: [lo, hi], output: [lo, hi]}}, hint)"""
    case = _plain_case(case)
    if "requests" not in case and type(case.get("trace")) is dict:
        spec = case["trace"]
        case["requests"] = speed_trace(spec["n"], spec["seed"], spec["gap_ms"], tuple(spec["prompt"]),
                                       tuple(spec["output"]))
    _valid(case, ("kv_blocks", "block_size", "max_batch_size", "max_len"))
    case = {k: case[k] for k in ("kv_blocks", "block_size", "max_batch_size", "max_len", "requests")}
    max_len, cap = case["max_len"], max_steps(case)
    if any(p + o > max_len for _, p, o in case["requests"]) or case["kv_blocks"] * case["block_size"] < max_len:
        raise ValueError(f"max_len {max_len} must hold every request and fit the cache")
    static, labkit = run(case, static_schedule(max_len), step_cap=cap), run(case, labkit_schedule, step_cap=cap)
    full = static.clock / labkit.clock
    if full < 1.1:
        raise ValueError(f"labkit's scheduler reaches only {full:.2f}x static here: nothing to grade")
    tokens = static.tokens_generated
    static_rate = tokens / static.clock * 1e3
    label = (f"schedule on {len(case['requests'])} requests ({case['kv_blocks']} blocks of {case['block_size']}, "
             f"max_batch_size {case['max_batch_size']}) against static batching ({max_len} tokens reserved each)")

    def judge(seen: trials.Observation) -> None:
        engine = _replayed(seen, case, (C0_MS, C1_MS), False, label, hint, cap)
        rate = tokens / engine.clock * 1e3
        ratio = rate / static_rate
        credit = speed_credit(ratio, naive=1.0, full=full)
        if credit < 1:
            raise trials.Partial(f"{label}: tokens per simulated second", f"{full:.2f}x static or more (labkit's scheduler "
                          f"on this trace: {full * static_rate:,.0f} tokens/s; static {static_rate:,.0f})",
                          f"{ratio:.2f}x ({rate:,.0f} tokens/s in {engine.steps} steps)",
                          hint or "admit at every step, not only when the batch has emptied: a finished sequence's "
                          "slot and blocks serve the queue at once", credit=credit)

    return Trial(label, "schedule_replay", {"case": case, "cost": [C0_MS, C1_MS], "max_steps": cap}, judge, hint)


SPEED_CASE = {"kv_blocks": 80, "block_size": 8, "max_batch_size": 16, "max_len": 160,
              "trace": {"n": 60, "seed": 0, "gap_ms": 1.0, "prompt": [8, 32], "output": [4, 128]}}

QUESTIONS = [
    Question("08.blocks_needed", "New blocks a sequence needs to grow by n tokens", 2, calls("blocks_needed"), (
        ((0, 5, 4), 2, "an empty sequence: ceil(5 / 4) blocks"),
        ((4, 1, 4), 1, "4 tokens fill their block exactly: the 5th needs a new one"),
        ((5, 3, 4), 0, "tokens 6 to 8 fit in the block token 5 opened"),
        ((6, 7, 4), 2, "from 2 blocks to 4"),
        ((9, 3, 1), 3, "block_size 1: a block per token"),
    ), minutes=5),
    Question("08.schedule", "The iteration-level scheduler step, replayed against labkit's", 5, _schedule, (
        (_case(32, 4, 4, [[0, 5, 3], [0, 7, 4], [2, 3, 2]]), "no pressure: everyone joins at once and leaves when done"),
        (_case(64, 4, 2, [[0, 4, 3], [0, 6, 5], [0, 3, 2], [1, 5, 2]]),
         "max_batch_size binds: the rest wait, and join as slots free up"),
        (_case(6, 4, 4, [[0, 6, 8], [0, 5, 9], [0, 4, 7], [0, 3, 6]]),
         "block pressure: the newest is preempted and later recomputes its prompt and what it generated"),
        (_case(3, 4, 4, [[0, 3, 3], [1, 4, 2], [1, 2, 2]]),
         "lookahead: a joiner must leave a block for the next token of sequences whose blocks fill exactly"),
        (_case(8, 4, 4, [[0, 10, 8], [0, 21, 2], [0, 2, 2], [1, 2, 2]]),
         "a long prompt at the head waits until it fits; nobody overtakes it"),
        (_case(12, 1, 3, [[0, 3, 4], [0, 2, 5], [0, 4, 3], [3, 1, 2]]), "block_size 1: every token needs a block"),
        (_case(16, 4, 4, [[0, 3, 2], [9, 4, 3]]), "the queue empties, the engine idles until the next request"),
    ), minutes=60),
    Question("08.schedule_speed", "Its tokens per simulated second against static batching", 3, _speed, (
        (SPEED_CASE, ""),
    ), kind="speed", minutes=10, budget_s=5.0, answer="schedule"),  # ~0.2 s, ~2 s importing labkit.generation cold
]
PROBES = {"schedule_replay": _replay_probe}
