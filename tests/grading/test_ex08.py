"""Exercise 08's judges: the solution earns full marks with the public and hidden cases, and each
typical mistake of a scheduler step (joining past max_batch_size, preempting the oldest, no
lookahead, overtaking a long head prompt, forgetting the generated tokens on recompute, an
illegal plan) fails at a named step, with the state that went in and what differed. The speed
question is simulated device time: deterministic, so exact figures are asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from labkit.grading.check import run_here
from labkit.grading.exercises import ex08_generation as ex
from labkit.grading.questions import QUESTIONS
from labkit.grading.trials import Observation, score

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = Path(__file__).parent / "hidden" / "hidden_08.py"
_spec = importlib.util.spec_from_file_location("hidden_08", HIDDEN)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
TESTS = json.loads(json.dumps(_module.TESTS))  # as the grader receives them: tuples become lists


def _solution() -> dict:
    """The definitions of the solution notebook (its check cells left out)."""
    namespace: dict = {}
    for cell in nbformat.read(ROOT / "solutions" / "08_generation.ipynb", as_version=4).cells:
        if cell.cell_type == "code" and "check(" not in cell.source:
            exec(cell.source, namespace)
    return namespace


SOLUTION = _solution()
schedule, blocks_needed = SOLUTION["schedule"], SOLUTION["blocks_needed"]


def _grade(question: str, answer, hidden: bool = True):
    q = QUESTIONS[question]
    trials = q.trials(TESTS.get(question, []) if hidden else [])
    result = score(q.id, trials, [run_here(t, answer) for t in trials], q.points)
    return result, trials


def _blocks(n: int, bs: int) -> int:
    return -(-n // bs)


# -- the mistakes: the solution's rules, each bent in one place ------------------------------------


def scheduler(*, cap_batch=True, newest=True, lookahead=True, fifo=True, recompute=True, preempt=True):
    def plan(running, waiting, free_blocks, block_size, max_batch_size):
        running = [list(r) for r in running]
        free, preempted = free_blocks, []
        while True:
            work = [[s, p, _blocks(h + p, block_size) - _blocks(h, block_size)] for s, h, p in running]
            need = sum(b for _, _, b in work)
            if need <= free or not preempt:
                break
            s, h, _ = running.pop() if newest else running.pop(0)
            free += _blocks(h, block_size)
            preempted.append(s)
        free -= need
        full = sum((h + p) % block_size == 0 for _, h, p in running)
        joined = []
        if not preempted:
            for s, prompt, generated in waiting:
                n = prompt + generated if recompute else prompt
                if cap_batch and len(running) + len(joined) >= max_batch_size:
                    break
                ahead = full + (n % block_size == 0) if work and lookahead else 0
                if _blocks(n, block_size) + ahead > free:
                    if fifo:
                        break
                    continue
                free -= _blocks(n, block_size)
                full += n % block_size == 0
                joined.append(s)
                work.append([s, n, _blocks(n, block_size)])
        return {"work": work, "joined": joined, "preempted": preempted}
    return plan


def static_batching(running, waiting, free_blocks, block_size, max_batch_size):
    """Request-level batching as a learner writes it: feed the batch until it has all finished,
    then admit as many as fit with 160 tokens reserved each."""
    if running:
        return {"work": [[s, 1, _blocks(h + 1, block_size) - _blocks(h, block_size)] for s, h, _ in running],
                "joined": [], "preempted": []}
    joined = waiting[: min(max_batch_size, free_blocks * block_size // 160)]
    return {"work": [[s, p + g, _blocks(p + g, block_size)] for s, p, g in joined],
            "joined": [s for s, _, _ in joined], "preempted": []}


# -- the solution ----------------------------------------------------------------------------------


@pytest.mark.parametrize("question", ["08.blocks_needed", "08.schedule", "08.schedule_speed"])
def test_the_solution_earns_full_marks_on_the_public_and_hidden_cases(question):
    answer = blocks_needed if question == "08.blocks_needed" else schedule
    result, trials = _grade(question, answer)
    assert result.points == QUESTIONS[question].points and not result.feedback, result.details
    assert any(t.hidden for t in trials)


def test_the_solution_does_not_use_labkits_scheduler():
    cells = nbformat.read(ROOT / "solutions" / "08_generation.ipynb", as_version=4).cells
    source = "\n".join(c.source for c in cells if c.cell_type == "code")
    assert "labkit.generation" not in source and "import" not in source.replace("from labkit.grading import check", "")


def test_blocks_needed_mistakes_fail_on_the_edges():
    result, _ = _grade("08.blocks_needed", lambda held, n, bs: _blocks(n, bs), hidden=False)
    assert result.points < 2 and any("tokens 6 to 8 fit in the block token 5 opened" in f for f in result.feedback)
    result, _ = _grade("08.blocks_needed", lambda held, n, bs: (held + n) // bs - held // bs, hidden=False)
    assert result.points < 2 and any("an empty sequence" in f for f in result.feedback)


def test_the_public_replays_exercise_every_rule():
    """Across the public cases labkit's plans join under a full batch, preempt and later recompute,
    hold a joiner back for lookahead alone, and keep a long head prompt waiting while one behind it
    would fit; the hidden cases preempt too."""
    seen = {"slots": 0, "preempt": 0, "recompute": 0, "lookahead": 0, "fifo": 0, "idle": 0}
    for case, _ in [*QUESTIONS["08.schedule"].cases, *TESTS["08.schedule"]]:
        engine = ex.Engine(json.loads(json.dumps(case)))
        while not engine.done:
            running, waiting = engine.state()
            plan = engine.labkit_plan()
            left = waiting[len(plan["joined"]):]
            taken = len(running) + len(plan["joined"])
            if left and not plan["preempted"]:
                head = left[0][1] + left[0][2]
                free = engine.free - sum(b for _, _, b in plan["work"])
                seen["slots"] += taken == engine.max_batch_size
                if taken < engine.max_batch_size:
                    seen["lookahead"] += _blocks(head, engine.block_size) <= free
                    seen["fifo"] += any(_blocks(p + g, engine.block_size) <= free for _, p, g in left[1:]) and \
                        _blocks(head, engine.block_size) > free
            seen["preempt"] += len(plan["preempted"])
            seen["recompute"] += any(g for s, _, g in waiting if s in plan["joined"])
            before = engine.clock
            engine.apply(plan)
            seen["idle"] += engine.clock > before + 1
    assert all(seen.values()), seen


@pytest.mark.parametrize(("mistake", "says"), [
    ({"cap_batch": False}, "sequences would run, max_batch_size is 2"),
    ({"newest": False}, "preempt the most recently admitted first"),
    ({"lookahead": False}, "lookahead"),
    ({"fifo": False}, "not the front of the queue in order (FIFO"),
    ({"recompute": False}, "recomputes its prompt"),
    ({"preempt": False}, "new blocks and 0 are free"),
])
def test_a_typical_mistake_fails_at_a_named_step_with_the_state_and_what_differed(mistake, says):
    result, _ = _grade("08.schedule", scheduler(**mistake), hidden=False)
    assert result.points < QUESTIONS["08.schedule"].points, result.report()
    lines = [f for f in result.feedback if says in f]
    assert lines, result.report()
    assert all("step " in line and "schedule(running=" in line and "free_blocks=" in line for line in lines)
    print(result.report())


def test_a_legal_plan_that_differs_shows_both_plans():
    result, _ = _grade("08.schedule", scheduler(lookahead=False), hidden=False)
    state = "step 1: schedule(running=[[0, 3, 1]], waiting=[[1, 4, 0], [2, 2, 0]], free_blocks=2, block_size=4, " \
        "max_batch_size=4)"
    line = next(f for f in result.feedback if f.startswith(state))  # the lookahead case, at its first divergence
    assert "Hint: lookahead" in line
    assert "expected joined=[] (work=[[0, 1, 0]], preempted=[])" in line
    assert "got joined=[1, 2] (work=[[0, 1, 0], [1, 4, 1], [2, 2, 1]], preempted=[])" in line


def test_a_raise_a_malformed_plan_and_a_livelock_are_each_named():
    def raises(running, waiting, free_blocks, block_size, max_batch_size):
        if len(running) == 2:
            raise KeyError("oops")
        return schedule(running, waiting, free_blocks, block_size, max_batch_size)

    result, _ = _grade("08.schedule", raises, hidden=False)
    assert any("step 1: schedule(" in f and "it raised KeyError" in f for f in result.feedback), result.report()
    result, _ = _grade("08.schedule", lambda *args: [[], [], []], hidden=False)
    assert result.points == 0 and "'work': [[seq_id, tokens, new_blocks], ...]" in result.feedback[0]
    idle = {"work": [], "joined": [], "preempted": []}
    trial = QUESTIONS["08.schedule_speed"].trials()[0]
    seen = run_here(trial, lambda *args: idle)
    with pytest.raises(AssertionError, match="did not finish in"):
        trial.judge(seen)


def test_the_judge_replays_the_plans_itself_and_ignores_a_forged_state():
    """What the probe sends is only the answer's plans: the judge rebuilds every state, so plans
    that were legal for a state the probe made up are judged on the real one."""
    trial = QUESTIONS["08.schedule"].trials()[2]  # block pressure
    honest = run_here(trial, schedule)
    trial.judge(honest)
    plans = honest.output["plans"]
    skipped = {"plans": [plans[0], plans[2], *plans[3:]]}  # one step left out: every later state shifts
    with pytest.raises(AssertionError, match="step 1"):
        trial.judge(Observation(skipped))
    with pytest.raises(AssertionError, match="illegal"):
        trial.judge(Observation({"plans": [[[0, 6, 99], [0], []]]}))


# -- the speed: simulated device time ----------------------------------------------------------------


def test_labkits_scheduler_doubles_static_batching_on_the_speed_trace():
    case = QUESTIONS["08.schedule_speed"].trials()[0].inputs["case"]
    static = ex.run(case, ex.static_schedule(case["max_len"]))
    labkit = ex.run(case, ex.labkit_schedule)
    assert static.tokens_generated == labkit.tokens_generated == sum(o for _, _, o in case["requests"])
    assert round(static.clock / labkit.clock, 2) == 2.00
    assert labkit.steps < static.steps / 4  # the batch stays full: far fewer, wider steps


def test_static_batching_earns_nothing_and_a_slower_legal_answer_a_share():
    result, _ = _grade("08.schedule_speed", static_batching, hidden=False)
    assert result.points == 0 and "1.00x" in result.feedback[0] and "2.00x static or more" in result.feedback[0]
    # joining only when a whole batch has left, up to max_batch_size: legal, continuous in part
    def batch_at_a_time(running, waiting, free_blocks, block_size, max_batch_size):
        if running:
            return schedule(running, [], free_blocks, block_size, max_batch_size)
        return schedule(running, waiting, free_blocks, block_size, max_batch_size)

    result, _ = _grade("08.schedule_speed", batch_at_a_time, hidden=False)
    assert 0 < result.points < 3, result.report()


def test_an_illegal_plan_scores_nothing_for_speed_however_fast():
    result, _ = _grade("08.schedule_speed", scheduler(preempt=False), hidden=False)
    assert result.points == 0 and "an illegal one" in result.feedback[0]


def test_a_malformed_case_is_refused():
    build = QUESTIONS["08.schedule"].build
    for bad in ({"kv_blocks": 0, "block_size": 4, "max_batch_size": 2, "requests": [[0, 1, 1]]},
                {"kv_blocks": 2, "block_size": 4, "max_batch_size": 2, "requests": [[0, 8, 2]]},  # never fits alone
                {"kv_blocks": 4, "block_size": 4, "max_batch_size": 2, "requests": []},
                {"kv_blocks": 4, "block_size": 4, "max_batch_size": 2, "requests": [[0, 0, 2]]}):
        with pytest.raises((ValueError, KeyError, TypeError)):
            build(bad)
    speed = QUESTIONS["08.schedule_speed"].build
    with pytest.raises(ValueError, match="max_len"):
        speed({**ex.SPEED_CASE, "max_len": 100})
