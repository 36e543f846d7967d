"""Generative inference: a KV cache in paged blocks, one batched step over sequences at different
positions, and request-level against iteration-level batching over it.

- `GPT` / `GPTConfig`: a small decoder-only transformer (``build_model("gpt", size)``).
- `PagedKVCache`: fixed-size blocks, a block table per sequence, `allocate` / `free`.
- `forward_step`: prefill chunks and decode tokens of many sequences in one call.
- `generate`: unbatched greedy decoding, with or without the cache; `check_prompt`, `top2_gap`.
- `StaticBatcher` (a batch runs to its longest sequence, max-length reservations) and
  `ContinuousBatcher` (`schedule` at every step, paged blocks, preemption by recompute).
- `poisson_trace`, `serve_trace`, `run_trace`: one arrival trace through a batcher.
"""

from labkit.generation.cache import KVCacheFull, PagedKVCache
from labkit.generation.continuous import ContinuousBatcher
from labkit.generation.model import GPT, GPTConfig
from labkit.generation.reference import TIE, check_prompt, generate, top2_gap
from labkit.generation.scheduler import Running, StepPlan, Waiting, Work, schedule
from labkit.generation.static import StaticBatcher
from labkit.generation.stats import GenerationStats, StepSample
from labkit.generation.step import forward_step
from labkit.generation.trace import TraceRequest, poisson_trace, replay, run_trace, serve_trace

__all__ = ["GPT", "GPTConfig", "KVCacheFull", "PagedKVCache", "TIE", "check_prompt", "forward_step", "generate",
           "top2_gap", "ContinuousBatcher", "StaticBatcher", "GenerationStats", "StepSample", "Running", "Waiting",
           "Work", "StepPlan", "schedule", "TraceRequest", "poisson_trace", "replay", "run_trace", "serve_trace"]
