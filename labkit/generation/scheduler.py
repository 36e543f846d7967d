"""The iteration-level scheduling step: who runs, who joins, who is preempted, before each step.

A pure function over plain numbers (no torch, no asyncio), so it can be read, tested and graded
by replaying traces. `ContinuousBatcher` calls it at every step boundary; exercise 08 asks
learners to write it.

The contract, in the order the rules apply:

1. The caller has already removed the sequences that finished (or were cancelled) after the last
   step, and passes the rest as `Running`, oldest admission first, and the queue as `Waiting`,
   front first.
2. Every running sequence feeds tokens this step: one when decoding (``pending == 1``); a
   sequence still prefilling (its prompt, or its recompute after a preemption) feeds
   ``min(pending, budget left)``, oldest first, after every decode has taken its one token. One
   that gets no budget sits this step out and keeps its blocks.
3. Each participant needs ``blocks(held + tokens) - blocks(held)`` new blocks, where
   ``blocks(n) = ceil(n / block_size)``. While they need more than the free blocks, the most
   recently admitted running sequence is preempted (its ``blocks(held)`` blocks come back, it
   needs none) and rule 2 is applied again to those left. Preempted sequences are listed newest
   first, so ``waiting.extendleft(plan.preempted)`` puts them back at the front of the queue in
   admission order; they come back with everything they generated and prefill it again.
4. Only when nobody was preempted, waiting sequences join in queue order while the batch has a
   slot (``max_batch_size`` running at most), the token budget is not spent, and the head's first
   chunk (``min(tokens, budget left)``) fits in the free blocks left *with one step of lookahead*:
   what is left must still cover the next token of every participant whose blocks this step fills
   exactly (the joiner included), or the next step would preempt at once the sequence it just
   prefilled. A joiner that would run alone needs only its chunk to fit. The first that does not
   fit stops the joining: FIFO, so a long prompt is never overtaken for ever.

The caller guarantees each sequence alone fits the whole cache (the batcher refuses at submit a
request that could not), so the oldest running sequence always makes progress.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["Running", "Waiting", "Work", "StepPlan", "schedule", "blocks_for"]


@dataclass(frozen=True)
class Running:
    """A sequence that holds blocks in the cache."""

    seq_id: Hashable
    held: int  # tokens whose K/V are in the cache; it holds blocks_for(held) blocks
    pending: int  # tokens known but not yet in the cache: 1 when decoding, more while prefilling


@dataclass(frozen=True)
class Waiting:
    """A sequence in the queue, holding no blocks."""

    seq_id: Hashable
    tokens: int  # prompt plus tokens generated before a preemption: all are prefilled on joining


@dataclass(frozen=True)
class Work:
    """One sequence's part of the step: feed ``tokens`` tokens, growing by ``new_blocks`` blocks."""

    seq_id: Hashable
    tokens: int
    new_blocks: int


@dataclass(frozen=True)
class StepPlan:
    """What the step does: ``work`` is the running participants (admission order), then the joiners."""

    work: tuple[Work, ...]
    joined: tuple[Hashable, ...]
    preempted: tuple[Hashable, ...]  # newest first

    @property
    def blocks_needed(self) -> int:
        return sum(w.new_blocks for w in self.work)

    @property
    def tokens(self) -> int:
        return sum(w.tokens for w in self.work)


def blocks_for(n_tokens: int, block_size: int) -> int:
    """Blocks that hold ``n_tokens`` tokens: ``ceil(n_tokens / block_size)``."""
    return -(-n_tokens // block_size)


def _feed(running: Sequence[Running], budget: int | None, block_size: int) -> tuple[list[Work], int | None]:
    """Rule 2 and 3's block count for ``running``; returns the work and the budget left."""
    decoding = sum(1 for r in running if r.pending == 1)
    left = None if budget is None else budget - decoding
    work = []
    for r in running:
        n = 1 if r.pending == 1 else r.pending if left is None else min(r.pending, left)
        if n == 0:
            continue
        if r.pending > 1 and left is not None:
            left -= n
        work.append(Work(r.seq_id, n, blocks_for(r.held + n, block_size) - blocks_for(r.held, block_size)))
    return work, left


def _check(running: Sequence[Running], waiting: Sequence[Waiting], free_blocks: int, block_size: int,
           max_batch_size: int, token_budget: int | None) -> None:
    if block_size < 1 or max_batch_size < 1 or free_blocks < 0:
        raise ValueError(f"block_size and max_batch_size must be at least 1 and free_blocks at least 0, "
                         f"got {block_size}, {max_batch_size}, {free_blocks}")
    if token_budget is not None and token_budget < max_batch_size:
        raise ValueError(f"token_budget must be at least max_batch_size ({max_batch_size}) so every "
                         f"decode fits, got {token_budget}")
    if len(running) > max_batch_size:
        raise ValueError(f"{len(running)} running sequences exceed max_batch_size={max_batch_size}")
    for r in running:
        if r.held < 0 or r.pending < 1:
            raise ValueError(f"a running sequence needs held >= 0 and pending >= 1, got {r}")
    for w in waiting:
        if w.tokens < 1:
            raise ValueError(f"a waiting sequence needs tokens >= 1, got {w}")


def schedule(running: Sequence[Running], waiting: Sequence[Waiting], *, free_blocks: int, block_size: int,
             max_batch_size: int, token_budget: int | None = None) -> StepPlan:
    """Plan one step by the rules of the module docstring; ``token_budget=None``: no limit
    (whole prompts prefill in one step), else at most that many tokens fed this step."""
    _check(running, waiting, free_blocks, block_size, max_batch_size, token_budget)
    running = list(running)
    free = free_blocks
    preempted: list[Hashable] = []
    while True:
        work, left = _feed(running, token_budget, block_size)
        need = sum(w.new_blocks for w in work)
        if need <= free:  # always true once nobody is left running
            break
        victim = running.pop()
        free += blocks_for(victim.held, block_size)
        preempted.append(victim.seq_id)
    free -= need
    held = {r.seq_id: r.held for r in running}
    full = sum((held[w.seq_id] + w.tokens) % block_size == 0 for w in work)  # next token needs a block
    joined: list[Hashable] = []
    if not preempted:
        for w in waiting:
            if len(running) + len(joined) >= max_batch_size or left == 0:
                break
            n = w.tokens if left is None else min(w.tokens, left)
            blocks = blocks_for(n, block_size)
            ahead = 0 if not work else full + (n % block_size == 0)
            if blocks + ahead > free:
                break
            free -= blocks
            full += n % block_size == 0
            left = None if left is None else left - n
            joined.append(w.seq_id)
            work.append(Work(w.seq_id, n, blocks))
    return StepPlan(tuple(work), tuple(joined), tuple(preempted))
