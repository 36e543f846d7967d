"""The unbatched greedy reference every batcher is checked against, and the prompt checks they share."""

from __future__ import annotations

import numbers

import torch

from labkit.generation.cache import PagedKVCache
from labkit.generation.model import GPT
from labkit.generation.step import forward_step

__all__ = ["TIE", "check_prompt", "generate", "top2_gap"]

TIE = 1e-5  # top-two logits closer than this: greedy may pick either, in any correct implementation


def check_prompt(model: GPT, prompt_ids: object, max_new_tokens: object) -> torch.Tensor:
    """The prompt as a CPU long tensor, or a TypeError/ValueError saying what was given and what
    was expected: a non-empty 1-D integer tensor of ids in [0, vocab), max_new_tokens an int >= 1,
    prompt plus new tokens within the model's context."""
    c = model.config
    if not isinstance(prompt_ids, torch.Tensor):
        raise TypeError(f"prompt_ids must be a 1-D integer torch.Tensor of token ids, got {type(prompt_ids).__name__}")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype.is_complex or prompt_ids.dtype == torch.bool:
        raise TypeError(f"prompt_ids must hold integer token ids (e.g. torch.long), got dtype {prompt_ids.dtype}")
    if prompt_ids.dim() != 1:
        raise ValueError(f"prompt_ids must be 1-D (T,), got shape {tuple(prompt_ids.shape)}")
    if prompt_ids.numel() == 0:
        raise ValueError("prompt_ids is empty; a prompt needs at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise TypeError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens}")
    prompt = prompt_ids.detach().to("cpu", torch.long)
    low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or high >= c.vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary: ids must be in [0, {c.vocab_size})")
    if len(prompt) + max_new_tokens > c.context:
        raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {max_new_tokens} = "
                         f"{len(prompt) + max_new_tokens} exceeds the model's context of {c.context} tokens")
    return prompt.contiguous()


def top2_gap(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (...): top-1 minus top-2 logit; below `TIE` the greedy choice is a tie."""
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


@torch.inference_mode()
def generate(model: GPT, prompt_ids: torch.Tensor, max_new_tokens: int, *, kv_cache: bool = True) -> torch.Tensor:
    """Greedy decoding of one prompt: ``(max_new_tokens,)`` new token ids on the CPU.

    ``kv_cache=False`` recomputes the whole sequence with ``model.forward`` at every step: the
    baseline the cache is measured against (O(T) work per token instead of O(1) new rows).
    """
    prompt = check_prompt(model, prompt_ids, max_new_tokens)
    device = model.wte.weight.device
    out = torch.empty(max_new_tokens, dtype=torch.long, device=device)
    if not kv_cache:
        ids = torch.cat([prompt.to(device), out])  # the new tokens are written in place as they come
        for t in range(max_new_tokens):
            end = len(prompt) + t
            out[t] = ids[end] = model(ids[None, :end])[0, -1].argmax()
        return out.cpu()
    total = len(prompt) + max_new_tokens
    cache = PagedKVCache(model, num_blocks=1, block_size=total)  # one contiguous block: nothing to share
    cache.allocate(0, total)
    logits = forward_step(model, cache, [(0, prompt.to(device))])
    for t in range(max_new_tokens):
        out[t] = logits[0].argmax()
        if t + 1 < max_new_tokens:
            logits = forward_step(model, cache, [(0, out[t : t + 1])])
    return out.cpu()
