"""The simulated generation engine exercise 08 is graded on: a trace of requests (arrival, prompt
tokens, output tokens), a paged cache of ``kv_blocks`` blocks, and a scheduler called at every step
boundary whose plan is checked for legality and applied. No model, no torch: a step costs
``C0_MS + C1_MS * tokens fed`` of simulated time, so a grade is the same on any machine.

Decode is overhead-bound: the small GPT's `forward_step` measured 1.38 ms for one sequence and
about 7 ms for 32 on the CI CPU, so a step's cost grows far slower than its batch (1.2 ms +
0.18 ms per token fits both).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["C0_MS", "C1_MS", "Engine", "Illegal", "labkit_schedule", "blocks", "is_int", "max_steps", "run", "short", "static_schedule"]

SHOW = 6  # entries of a list shown in feedback before "... N more"
C0_MS, C1_MS = 1.2, 0.18  # a step's simulated cost: fixed, and per token fed (see the module docstring)


def blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


class Illegal(Exception):
    """A plan the engine cannot apply, or that breaks a rule every schedule must keep."""


def is_int(x: Any) -> bool:
    return type(x) is int


def short(items: list) -> str:
    """A list as feedback shows it: its first ``SHOW`` entries, then how many more."""
    shown = json.dumps(items[:SHOW])
    return shown if len(items) <= SHOW else f"{shown[:-1]}, ... {len(items) - SHOW} more]"


class Engine:
    """The simulated engine of a case ``{kv_blocks, block_size, max_batch_size, requests: [[arrival,
    prompt, output], ...]}``; ``cost=(c0, c1)``: a step takes ``c0 + c1 * tokens fed`` time units
    (``(1, 0)``: arrivals count steps)."""

    def __init__(self, case: dict, cost: tuple[float, float] = (1.0, 0.0)) -> None:
        self.kv_blocks, self.block_size = int(case["kv_blocks"]), int(case["block_size"])
        self.max_batch_size = int(case["max_batch_size"])
        requests = case["requests"]
        self.arrival = [float(a) for a, _, _ in requests]
        self.prompt = [int(p) for _, p, _ in requests]
        self.output = [int(o) for _, _, o in requests]
        self.generated = [0] * len(requests)
        self.c0, self.c1 = cost
        self._future = deque(sorted(range(len(requests)), key=lambda i: (self.arrival[i], i)))
        self.held: dict[int, int] = {}  # running sequences in admission order -> tokens in the cache
        self.waiting: deque[int] = deque()
        self.free = self.kv_blocks
        self.clock = 0.0
        self.steps = 0
        self._advance()

    # -- the state a scheduler sees -------------------------------------------------------------
    def tokens(self, s: int) -> int:
        """Every token sequence ``s`` knows: its prompt and what it generated."""
        return self.prompt[s] + self.generated[s]

    def state(self) -> tuple[list, list]:
        """(running [[seq_id, held, pending], ...] oldest admission first, waiting [[seq_id,
        prompt, generated], ...] front first), fresh lists every time."""
        return ([[s, h, self.tokens(s) - h] for s, h in self.held.items()],
                [[s, self.prompt[s], self.generated[s]] for s in self.waiting])

    @property
    def done(self) -> bool:
        return not (self._future or self.waiting or self.held)

    @property
    def tokens_generated(self) -> int:
        return sum(self.generated)

    def _advance(self) -> None:
        """To the next step boundary: arrivals join the queue; an idle engine waits for the next."""
        if not self.held and not self.waiting and self._future:
            self.clock = max(self.clock, self.arrival[self._future[0]])
        while self._future and self.arrival[self._future[0]] <= self.clock:
            self.waiting.append(self._future.popleft())

    # -- a plan ---------------------------------------------------------------------------------
    def check(self, plan: dict) -> None:
        """Raise `Illegal` (saying which rule) unless ``plan`` is one this engine can apply."""
        work, joined, preempted = plan["work"], plan["joined"], plan["preempted"]
        running, queue, k = list(self.held), list(self.waiting), len(preempted)
        if preempted != running[::-1][:k]:
            strangers = [s for s in preempted if s not in self.held]
            if strangers:
                raise Illegal(f"it preempts {strangers[0]!r}, which is not running")
            raise Illegal(f"it preempts {preempted}: preempt the most recently admitted first, listed newest "
                          f"first (the {k} newest are {running[::-1][:k]})")
        if preempted and joined:
            raise Illegal("it preempts and admits in the same step: a step that preempts admits nobody")
        if joined != queue[: len(joined)]:
            raise Illegal(f"it admits {short(joined)}, not the front of the queue in order (FIFO: "
                          f"{short(queue[: len(joined)])})")
        after = len(running) - k + len(joined)
        if after > self.max_batch_size:
            raise Illegal(f"{after} sequences would run, max_batch_size is {self.max_batch_size}")
        want = {s: self.tokens(s) - self.held[s] for s in running[: len(running) - k]}
        want.update({s: self.tokens(s) for s in joined})
        fed: set[int] = set()
        for s, n, b in work:
            if s not in want:
                what = "was preempted" if s in preempted else "is neither running nor admitted this step"
                raise Illegal(f"it feeds {s!r}, which {what}")
            if s in fed:
                raise Illegal(f"it feeds {s} twice")
            fed.add(s)
            if n != want[s]:
                if s in self.held:
                    raise Illegal(f"it feeds {s} {n} tokens: a running sequence feeds its pending tokens, {want[s]}")
                if self.generated[s]:
                    raise Illegal(f"it feeds {s} {n} tokens: {s} rejoins after a preemption and recomputes its "
                                  f"prompt ({self.prompt[s]}) and the {self.generated[s]} tokens it had generated, "
                                  f"{want[s]} in all")
                raise Illegal(f"it feeds {s} {n} tokens: a joiner feeds its whole prompt, {want[s]}")
            held = self.held.get(s, 0) if s not in joined else 0
            need = blocks(held + n, self.block_size) - blocks(held, self.block_size)
            if b != need:
                raise Illegal(f"it gives {s} {b} new blocks: from {held} to {held + n} tokens it needs "
                              f"{need} (blocks_for({held + n}) - blocks_for({held}))")
        for s in want:
            if s not in fed:
                raise Illegal(f"{s} is neither fed nor preempted" if s in self.held else f"it admits {s} and feeds it nothing")
        needed = sum(b for _, _, b in work)
        free = self.free + sum(blocks(self.held[s], self.block_size) for s in preempted)
        if needed > free:
            raise Illegal(f"its work needs {needed} new blocks and {free} are free"
                          + (" once the preempted give theirs back" if k else ""))

    def apply(self, plan: dict) -> None:
        """Check ``plan``, run the step it describes and move to the next step boundary."""
        self.check(plan)
        for s in plan["preempted"]:  # newest first: each goes to the front, so they end in admission order
            self.free += blocks(self.held.pop(s), self.block_size)
            self.waiting.appendleft(s)
        for s in plan["joined"]:
            self.waiting.popleft()
            self.held[s] = 0
        fed = 0
        for s, n, b in plan["work"]:
            self.held[s] += n
            self.free -= b
            fed += n
        for s, _, _ in plan["work"]:  # every sequence fed all it knew: one new token each
            self.generated[s] += 1
            if self.generated[s] == self.output[s]:
                self.free += blocks(self.held.pop(s), self.block_size)
        self.clock += self.c0 + self.c1 * fed
        self.steps += 1
        self._advance()

    def labkit_plan(self) -> dict:
        """What labkit's `schedule` plans on this state (``token_budget=None``)."""
        from labkit.generation.scheduler import Running, Waiting, schedule

        running, waiting = self.state()
        plan = schedule([Running(*r) for r in running], [Waiting(s, p + g) for s, p, g in waiting],
                        free_blocks=self.free, block_size=self.block_size, max_batch_size=self.max_batch_size)
        return {"work": [[w.seq_id, w.tokens, w.new_blocks] for w in plan.work], "joined": list(plan.joined),
                "preempted": list(plan.preempted)}


# -- schedulers as the grader runs them -------------------------------------------------------------


def labkit_schedule(engine: Engine) -> dict:
    return engine.labkit_plan()


def static_schedule(max_len: int) -> Callable[[Engine], dict]:
    """Request-level static batching, `StaticBatcher`'s policy, as a scheduler of this engine: a
    batch joins only once the last one has wholly finished, and at most as many as the cache holds
    at ``max_len`` tokens reserved each (and ``max_batch_size``); nobody joins a running batch."""
    def plan(engine: Engine) -> dict:
        bs = engine.block_size
        if engine.held:
            return {"work": [[s, 1, blocks(h + 1, bs) - blocks(h, bs)] for s, h in engine.held.items()],
                    "joined": [], "preempted": []}
        room = min(engine.max_batch_size, engine.kv_blocks * bs // max_len)
        joined = list(engine.waiting)[:room]
        return {"work": [[s, engine.tokens(s), blocks(engine.tokens(s), bs)] for s in joined],
                "joined": joined, "preempted": []}
    return plan


def run(case: dict, scheduler: Callable[[Engine], dict], cost: tuple[float, float] = (C0_MS, C1_MS),
        step_cap: int | None = None) -> Engine:
    """``case`` served to the end by ``scheduler(engine) -> plan``; `Illegal` on a bad plan,
    `RuntimeError` past ``max_steps``."""
    engine = Engine(case, cost)
    cap = step_cap or max_steps(case)
    while not engine.done:
        if engine.steps >= cap:
            raise RuntimeError(f"did not finish in {cap} steps")
        engine.apply(scheduler(engine))
    return engine


def max_steps(case: dict) -> int:
    """Far more steps than any scheduler that makes progress needs: one sequence at a time takes
    one step per output token."""
    return 2 * sum(int(o) for _, _, o in case["requests"]) + 100
