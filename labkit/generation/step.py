"""One model step over a batch of sequences at different positions, reading K/V through block tables.

Each sequence brings its new tokens: a prompt chunk (prefill) or one token (decode), mixed freely.
The index tensors (where each new token's K/V go, where each sequence's past lives, who may see
whom) are built once per step on the model's device; the layers then run batched, no Python loop
over sequences inside them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from labkit.generation.cache import PagedKVCache
from labkit.generation.model import GPT

__all__ = ["forward_step"]


def _slots(tables: torch.Tensor, pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """(S, max_blocks) block tables, (S, T) positions -> (S, T) storage slots."""
    return tables.gather(1, pos // block_size) * block_size + pos % block_size


@torch.inference_mode()
def forward_step(model: GPT, cache: PagedKVCache, batch: Sequence[tuple[Hashable, torch.Tensor]]) -> torch.Tensor:
    """Run the new tokens of each ``(seq_id, tokens (n_i,))``, write their K/V into ``cache``,
    advance each sequence's length by n_i and return ``(S, vocab)`` logits of each last new token.

    The caller has already `PagedKVCache.allocate`\\ d room for ``length + n_i`` tokens. Lengths
    advance only once the step has run, so a step that raises leaves every sequence as it was
    (slots past a length may hold partial writes; nothing reads them).
    """
    ids = [seq_id for seq_id, _ in batch]
    past = [cache.length(s) for s in ids]
    n = [int(t.numel()) for _, t in batch]
    _check_step(model, cache, ids, past, n)
    dev, bs = model.wte.weight.device, cache.block_size
    S, T, L = len(batch), max(n), max(p + k for p, k in zip(past, n, strict=True))
    blocks = [cache.block_table(s) for s in ids]
    width = max(map(len, blocks))
    tables = torch.tensor([b + [0] * (width - len(b)) for b in blocks])  # (S, width), padded with block 0
    past_t, n_t = torch.tensor(past)[:, None], torch.tensor(n)[:, None]  # (S, 1)
    i = torch.arange(T)[None, :]  # (1, T)
    j = torch.arange(L)[None, :]  # (1, L)
    real_q = i < n_t  # (S, T): padding queries past a sequence's n_i
    positions = torch.where(real_q, past_t + i, past_t)  # padding sits at a real position, never read
    real_k = j < past_t + n_t  # (S, L)
    write = _slots(tables, positions, bs)[real_q]  # (N,) slots of the new tokens, in batch order
    read = torch.where(real_k, _slots(tables, j.expand(S, L), bs), 0)  # (S, L)
    flat = real_q.flatten().nonzero().squeeze(1)  # (N,) rows of (S*T) that are real tokens
    visible = (j[:, None, :] <= (past_t + i)[:, :, None]) & real_k[:, None, :]  # (S, T, L)
    positions, write, read, flat, visible = (x.to(dev, non_blocking=True) for x in (positions, write, read, flat, visible))
    tokens = torch.zeros(S * T, dtype=torch.long, device=dev)
    tokens[flat] = torch.cat([t.reshape(-1).to(dev, torch.long) for _, t in batch])  # stays on the device
    tokens = tokens.view(S, T)
    mask = visible[:, None]  # (S, 1, T, L), broadcast over heads

    padded = len(write) < S * T  # some sequence brings fewer tokens than the longest
    read = read.flatten()  # (S*L,)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        H, D = q.shape[2:]
        past_kv = []
        for store, new in ((cache.k[layer], k), (cache.v[layer], v)):
            store, new = store.view(-1, H * D), new.reshape(S * T, H * D)  # whole rows copy fastest
            store.index_copy_(0, write, (new.index_select(0, flat) if padded else new).to(cache.dtype))
            past_kv.append(store.index_select(0, read).view(S, L, H, D).transpose(1, 2).to(q.dtype))  # (S, nh, L, hs)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), *past_kv, attn_mask=mask)  # (S, nh, T, hs)
        return y.transpose(1, 2)  # (S, T, nh, hs)

    hidden = model.run(tokens, positions, attend)  # (S, T, d_model)
    last = hidden[torch.arange(S, device=dev), (n_t.squeeze(1) - 1).to(dev)]  # (S, d_model)
    for s, k in zip(ids, n, strict=True):
        cache.advance(s, k)
    return model.head(last)


def _check_step(model: GPT, cache: PagedKVCache, ids: list, past: list[int], n: list[int]) -> None:
    """Refuse a step the cache or the model cannot take, before anything is written."""
    if not ids:
        raise ValueError("forward_step needs at least one (seq_id, tokens) pair")
    if len(set(ids)) != len(ids):
        raise ValueError(f"a sequence may appear once per step, got ids {ids}")
    for s, p, k in zip(ids, past, n, strict=True):
        if k < 1:
            raise ValueError(f"sequence {s!r} brings no new tokens; each needs at least one")
        if p + k > cache.capacity(s):
            raise ValueError(f"sequence {s!r} needs room for {p + k} tokens, its blocks hold "
                             f"{cache.capacity(s)}: allocate() before the step")
        if p + k > model.config.context:
            raise ValueError(f"sequence {s!r} would reach {p + k} tokens, past the context of {model.config.context}")
    if cache.device != model.wte.weight.device:
        raise ValueError(f"the cache is on {cache.device} but the model on {model.wte.weight.device}; "
                         "build the cache for this model")
