"""The iteration-level scheduling step, on plain numbers: every rule of its contract, then replays."""

from __future__ import annotations

import random
from collections import deque

import pytest

from labkit.generation.scheduler import Running, StepPlan, Waiting, Work, blocks_for, schedule


def plan(running=(), waiting=(), *, free=0, bs=4, cap=8, budget=None) -> StepPlan:
    return schedule([Running(*r) for r in running], [Waiting(*w) for w in waiting], free_blocks=free,
                    block_size=bs, max_batch_size=cap, token_budget=budget)


def test_blocks_for_is_a_ceiling():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_nothing_to_do_is_an_empty_plan():
    p = plan(free=3)
    assert p == StepPlan((), (), ()) and p.blocks_needed == 0 and p.tokens == 0


def test_decodes_need_a_block_only_when_they_cross_a_block_boundary():
    p = plan([("a", 3, 1), ("b", 4, 1), ("c", 8, 1)], free=2)
    assert p.work == (Work("a", 1, 0), Work("b", 1, 1), Work("c", 1, 1))
    assert p.preempted == () and p.blocks_needed == 2


def test_waiting_join_in_fifo_order_with_their_whole_prompt():
    p = plan([("a", 5, 1)], [("x", 9), ("y", 2)], free=5)
    assert p.joined == ("x", "y")
    assert p.work[1:] == (Work("x", 9, 3), Work("y", 2, 1))


def test_joining_stops_when_the_batch_is_full():
    p = plan([("a", 1, 1), ("b", 1, 1)], [("x", 1), ("y", 1), ("z", 1)], free=10, cap=3)
    assert p.joined == ("x",)


def test_joining_stops_at_the_first_that_does_not_fit_never_skipping_it():
    p = plan([], [("x", 4), ("big", 13), ("y", 1)], free=3)
    assert p.joined == ("x",)  # big needs 4 blocks, 2 are left; y would fit but may not overtake


def test_a_joiner_leaves_room_for_the_next_token_of_sequences_whose_blocks_fill():
    # a reaches 4 tokens this step: its next token needs a block; x's 4 tokens fill its block too
    assert plan([("a", 3, 1)], [("x", 4)], free=2).joined == ()
    assert plan([("a", 3, 1)], [("x", 4)], free=3).joined == ("x",)
    assert plan([("a", 3, 1)], [("x", 3)], free=2).joined == ("x",)  # x's block keeps a free slot
    assert plan([("a", 2, 1)], [("x", 4)], free=2).joined == ("x",)  # a's block keeps a free slot


def test_a_joiner_that_would_run_alone_needs_only_its_chunk_to_fit():
    assert plan([], [("x", 12)], free=3).joined == ("x",)


def test_blocks_run_out_the_newest_running_is_preempted_and_nobody_joins():
    p = plan([("old", 8, 1), ("mid", 4, 1), ("new", 2, 1)], [("x", 1)], free=1)
    # old and mid each cross a boundary (2 blocks); preempting new frees 1: 2 free, 2 needed
    assert p.preempted == ("new",)
    assert p.work == (Work("old", 1, 1), Work("mid", 1, 1))
    assert p.joined == ()


def test_preemption_continues_newest_first_until_the_rest_fit():
    p = plan([("a", 8, 1), ("b", 4, 1), ("c", 4, 1), ("d", 4, 1)], free=0)
    # each crosses a boundary; dropping d frees 1 (3 needed), c frees 1 (2 needed, 2 free)
    assert p.preempted == ("d", "c")
    assert [w.seq_id for w in p.work] == ["a", "b"]
    queue = deque(["x"])
    queue.extendleft(p.preempted)
    assert list(queue) == ["c", "d", "x"]  # back at the front, in admission order


def test_the_newest_is_preempted_even_when_it_is_not_the_one_that_needs_a_block():
    p = plan([("a", 4, 1), ("b", 1, 1)], free=0)
    assert p.preempted == ("b",) and p.work == (Work("a", 1, 1),)


def test_a_sequence_that_cannot_fit_alone_is_preempted_rather_than_crash():
    p = plan([("a", 4, 1)], [("x", 1)], free=0)  # against the caller's guarantee: still a plan
    assert p.preempted == ("a",) and p.work == () and p.joined == ()


def test_a_recomputed_sequence_rejoins_with_all_its_tokens():
    p = plan([], [("back", 11)], free=3)
    assert p.work == (Work("back", 11, 3),)


def test_token_budget_decodes_first_then_prompt_chunks_oldest_first():
    running = [("p1", 0, 10), ("d1", 5, 1), ("p2", 4, 6), ("d2", 8, 1)]
    p = plan(running, [("x", 3)], free=20, budget=8, cap=8)
    # 2 decodes, then 6 left: p1 takes 6 of its 10, p2 gets none and sits out, x cannot join
    assert p.work == (Work("p1", 6, 2), Work("d1", 1, 0), Work("d2", 1, 1))
    assert p.joined == () and p.tokens == 8


def test_token_budget_a_joiner_takes_a_first_chunk():
    p = plan([("d", 3, 1)], [("x", 10), ("y", 2)], free=20, budget=5, cap=4)
    assert p.work == (Work("d", 1, 0), Work("x", 4, 1))
    assert p.joined == ("x",)


def test_a_chunk_continues_where_the_last_one_ended():
    p = plan([("x", 4, 6)], free=20, budget=4, cap=4)
    assert p.work == (Work("x", 4, 1),)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bs=0), "block_size"),
    (dict(cap=0), "max_batch_size"),
    (dict(free=-1), "free_blocks"),
    (dict(budget=3, cap=4), "token_budget"),
    (dict(running=[("a", 1, 1)] * 3, cap=2), "exceed max_batch_size"),
    (dict(running=[("a", 1, 0)]), "pending >= 1"),
    (dict(running=[("a", -1, 1)]), "held >= 0"),
    (dict(waiting=[("x", 0)]), "tokens >= 1"),
])
def test_bad_inputs_are_refused_saying_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan(**kwargs)


class Replay:
    """A cache of ``num_blocks`` and requests (prompt, output length) served by `schedule` alone:
    the loop a batcher runs, with the invariants checked at every step."""

    def __init__(self, num_blocks: int, bs: int, cap: int, budget: int | None) -> None:
        self.num_blocks, self.bs, self.cap, self.budget = num_blocks, bs, cap, budget
        self.held: dict[int, int] = {}  # running: seq -> tokens in the cache (admission order)
        self.tokens: dict[int, int] = {}  # every live seq -> prompt + generated
        self.target: dict[int, int] = {}  # prompt + output length
        self.queue: deque[int] = deque()
        self.admitted_order: list[int] = []
        self.preemptions = 0

    def step(self) -> None:
        used = sum(blocks_for(h, self.bs) for h in self.held.values())
        free = self.num_blocks - used
        p = schedule([Running(s, h, self.tokens[s] - h) for s, h in self.held.items()],
                     [Waiting(s, self.tokens[s]) for s in self.queue], free_blocks=free, block_size=self.bs,
                     max_batch_size=self.cap, token_budget=self.budget)
        assert p.blocks_needed <= free + sum(blocks_for(self.held[s], self.bs) for s in p.preempted)
        for s in p.preempted:
            del self.held[s]
        self.queue.extendleft(p.preempted)
        self.preemptions += len(p.preempted)
        assert list(p.joined) == list(self.queue)[: len(p.joined)]  # FIFO prefix of the queue
        for s in p.joined:
            self.queue.popleft()
            self.held[s] = 0
            if s not in self.admitted_order:
                self.admitted_order.append(s)
        assert len(self.held) <= self.cap
        if self.budget is not None:
            assert p.tokens <= self.budget
        for w in p.work:
            assert blocks_for(self.held[w.seq_id] + w.tokens, self.bs) - blocks_for(self.held[w.seq_id], self.bs) == w.new_blocks
            self.held[w.seq_id] += w.tokens
            assert self.held[w.seq_id] <= self.tokens[w.seq_id]
            if self.held[w.seq_id] == self.tokens[w.seq_id]:  # all fed: it samples a token
                self.tokens[w.seq_id] += 1
                if self.tokens[w.seq_id] == self.target[w.seq_id]:  # finished: it leaves
                    del self.held[w.seq_id], self.tokens[w.seq_id]
        assert sum(blocks_for(h, self.bs) for h in self.held.values()) <= self.num_blocks
        if self.held or self.queue:
            assert p.work, "a step with work left to do must make progress"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [None, 24])
def test_replay_every_request_finishes_in_fifo_admission_within_the_cache(seed, budget):
    rng = random.Random(seed)
    r = Replay(num_blocks=12, bs=4, cap=6, budget=budget)
    arrivals: dict[int, list[tuple[int, int]]] = {}
    for s, t in enumerate(sorted(rng.randint(0, 400) for _ in range(60))):  # ids in arrival order
        prompt, out = rng.randint(1, 20), rng.randint(1, 27)
        r.target[s] = prompt + out
        arrivals.setdefault(t, []).append((s, prompt))
    t = 0
    while t < 400 or r.held or r.queue:
        for s, prompt in arrivals.get(t, []):
            r.tokens[s] = prompt
            r.queue.append(s)
        r.step()
        t += 1
        assert t < 20_000, "the replay did not drain"
    assert r.tokens == {} and sorted(r.admitted_order) == list(range(60))
    assert r.admitted_order == sorted(r.admitted_order)  # first admissions in arrival order
    assert r.preemptions > 0  # the cache was tight enough to exercise rule 3
