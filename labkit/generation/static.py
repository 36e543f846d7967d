"""Request-level batching over max-length KV reservations: the "before" of lesson 08.

When idle, take up to ``max_batch_size`` waiting requests, reserve ``max_len`` tokens of cache
for each, prefill them together, then decode until the longest is done. A sequence that finishes
early gets its result at once, but its slot and its reservation stay idle until the batch ends,
and nobody joins a running batch: the waste continuous batching and paged blocks remove.
"""

from __future__ import annotations

from labkit.generation.cache import PagedKVCache
from labkit.generation.model import GPT
from labkit.generation.serve import GenerationServer, GenRequest

__all__ = ["StaticBatcher"]


class StaticBatcher(GenerationServer):
    """``StaticBatcher(model, max_batch_size=8, max_len=256)``; its KV budget is
    ``max_batch_size * max_len`` tokens, one contiguous block of ``max_len`` per sequence (``b.kv``)."""

    def __init__(self, model: GPT, *, max_batch_size: int, max_len: int) -> None:
        super().__init__(model, max_batch_size)
        context = model.config.context
        if not isinstance(max_len, int) or not 2 <= max_len <= context:
            raise ValueError(f"max_len must be an int in [2, the model's context {context}], got {max_len!r}")
        self.max_len = max_len
        self.kv = PagedKVCache(model, num_blocks=max_batch_size, block_size=max_len)
        self._members: list[GenRequest] = []  # the batch, finished sequences included, until it ends
        self._active: list[GenRequest] = []  # members still generating

    def _limit(self, n_prompt: int, max_new: int) -> None:
        if n_prompt + max_new > self.max_len:
            raise ValueError(f"prompt of {n_prompt} tokens + max_new_tokens {max_new} = {n_prompt + max_new} "
                             f"exceeds this StaticBatcher's max_len of {self.max_len} tokens")

    def _plan(self, now: float) -> list[tuple[GenRequest, int]]:
        for req in [r for r in self._active if r.settled]:  # timed out or cancelled during a step
            self._active.remove(req)
            self.kv.free(req.seq_id)
        if self._active:
            return [(req, 1) for req in self._active]
        for req in self._members:  # the batch has ended: every reservation goes back at once
            self.kv.free(req.seq_id)
        self._members = self._front(self.max_batch_size)
        for _ in self._members:
            self._waiting.popleft()
        for req in self._members:
            self.kv.allocate(req.seq_id, self.max_len)
        if self._members:
            self._recorder.admitted(now)
        self._active = list(self._members)
        return [(req, len(req.tokens)) for req in self._active]

    def _leave(self, req: GenRequest, finished: bool) -> None:
        self._active.remove(req)
        if not finished:
            self.kv.free(req.seq_id)

    def _live(self) -> list[GenRequest]:
        return self._members
