"""A small decoder-only transformer (GPT-2 shape: pre-LayerNorm, learned positions).

Random weights over a byte vocabulary: the lesson measures how tokens are *served*, not what
they say. Attention is a pluggable function so that the plain causal `forward` (no cache, the
baseline) and the cached `labkit.generation.step.forward_step` share every weight and every
other line of the block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPTConfig", "GPT", "Attend", "causal_attend"]

# (q, k, v, layer) -> y; q, k, v and y are (B, T, nh, hs)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    vocab_size: int = 256
    context: int
    n_layer: int
    n_head: int
    d_model: int

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


def causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """Plain causal self-attention over the tokens given, nothing cached."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return y.transpose(1, 2)  # (B, nh, T, hs) -> (B, T, nh, hs)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        d = config.d_model
        self.layer, self.n_head = layer, config.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)  # (B, T, nh, hs)
        x = x + self.proj(attend(q, k, v, self.layer).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Logits for every position of ``ids``; `forward_step` runs the same weights over a KV cache.

    `labkit.models.build_model("gpt", size)` builds the presets and gives the model its
    ``input_spec`` (``(context,)`` token ids below ``vocab_size``).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                # GPT-2's init: residual projections scaled down with depth
                std = 0.02 / (2 * config.n_layer) ** 0.5 if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)
        # Untied and at unit logit scale: random weights then give varied greedy tokens with clear
        # margins (a tied 0.02 head repeats one token, and near-ties would make checks noisy).
        nn.init.normal_(self.head.weight, std=config.d_model**-0.5)

    def run(self, ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """(B, T) token ids at (B, T) positions -> (B, T, d_model) final hidden states."""
        x = self.wte(ids) + self.wpe(positions)
        for block in self.blocks:
            x = block(x, attend)
        return self.ln_f(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, vocab) logits, plain causal attention, no cache."""
        T = ids.shape[1]
        if T > self.config.context:
            raise ValueError(f"sequence of {T} tokens is longer than the context of {self.config.context}")
        positions = torch.arange(T, device=ids.device).expand_as(ids)
        return self.head(self.run(ids, positions, causal_attend))

    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token keeps in the cache: 2 * n_layer * d_model * element size."""
        c = self.config
        return 2 * c.n_layer * c.d_model * self.wte.weight.element_size()
