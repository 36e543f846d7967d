"""Iteration-level scheduling over a paged KV cache (Orca's batching, vLLM's memory).

At every step boundary finished sequences have left, `scheduler.schedule` decides who joins
(FIFO) and, when the free blocks cannot give every running sequence room for its next tokens,
who is preempted: the most recently admitted, freed and put back at the front of the queue with
what it generated, to be prefilled again when it rejoins (recompute). A joining sequence's
prefill runs in the same `forward_step` as the others' decode.
"""

from __future__ import annotations

from labkit.generation.cache import PagedKVCache
from labkit.generation.model import GPT
from labkit.generation.scheduler import Running, Waiting, schedule
from labkit.generation.serve import GenerationServer, GenRequest

__all__ = ["ContinuousBatcher"]


class ContinuousBatcher(GenerationServer):
    """``ContinuousBatcher(model, kv_blocks=128, block_size=16, max_batch_size=64)``; ``b.kv`` is its cache.

    ``max_step_tokens``: at most that many tokens per step (decodes first, then prompt chunks:
    chunked prefill, which bounds how much a join slows the others' next token); None: whole
    prompts join in one step.
    """

    def __init__(self, model: GPT, *, kv_blocks: int, block_size: int = 16, max_batch_size: int = 64,
                 max_step_tokens: int | None = None) -> None:
        super().__init__(model, max_batch_size)
        if max_step_tokens is not None and (not isinstance(max_step_tokens, int) or max_step_tokens < max_batch_size):
            raise ValueError(f"max_step_tokens must be None or an int >= max_batch_size ({max_batch_size}), "
                             f"got {max_step_tokens!r}")
        self.max_step_tokens = max_step_tokens
        self.kv = PagedKVCache(model, num_blocks=kv_blocks, block_size=block_size)
        self._running: dict[int, GenRequest] = {}  # by seq_id, in admission order

    def _limit(self, n_prompt: int, max_new: int) -> None:
        held = n_prompt + max_new - 1  # the last token is sampled, never fed back
        need = self.kv.blocks_needed(held)
        if need > self.kv.num_blocks:
            raise ValueError(f"prompt of {n_prompt} tokens + max_new_tokens {max_new} needs {need} blocks of "
                             f"{self.kv.block_size} tokens; this cache has {self.kv.num_blocks} in all")

    def _plan(self, now: float) -> list[tuple[GenRequest, int]]:
        kv, running = self.kv, self._running
        for req in [r for r in running.values() if r.settled]:  # timed out or cancelled during a step
            self._leave(req, finished=False)
        plan = schedule(
            [Running(s, kv.length(s), len(r.tokens) - kv.length(s)) for s, r in running.items()],
            [Waiting(r.seq_id, len(r.tokens)) for r in self._front(self.max_batch_size - len(running))],
            free_blocks=kv.free_blocks, block_size=kv.block_size, max_batch_size=self.max_batch_size,
            token_budget=self.max_step_tokens)
        for seq_id in plan.preempted:  # newest first: extendleft puts them back in admission order
            self._waiting.appendleft(running.pop(seq_id))
            kv.free(seq_id)
        self._recorder.preemptions += len(plan.preempted)
        for _ in plan.joined:
            req = self._waiting.popleft()
            running[req.seq_id] = req
        if plan.joined:
            self._recorder.admitted(now)
        batch = []
        for w in plan.work:
            held = kv.length(w.seq_id) if w.seq_id not in plan.joined else 0
            kv.allocate(w.seq_id, held + w.tokens)
            batch.append((running[w.seq_id], w.tokens))
        return batch

    def _leave(self, req: GenRequest, finished: bool) -> None:
        self._running.pop(req.seq_id, None)
        self.kv.free(req.seq_id)

    def _live(self) -> list[GenRequest]:
        return list(self._running.values())
