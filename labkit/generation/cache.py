"""KV memory in fixed-size blocks, a block table per sequence (vLLM's paged attention idea).

A sequence's keys and values live in whichever blocks were free when it grew, so memory is
reserved one block at a time as tokens arrive, and a finished sequence's blocks go straight back
to the pool. The static "before" is this same class with ``block_size = max_len`` and
``allocate(seq, max_len)`` at admission: one contiguous max-length reservation per sequence.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from labkit.generation.model import GPT

__all__ = ["KVCacheFull", "PagedKVCache"]


class KVCacheFull(RuntimeError):
    """Not enough free blocks for an allocation; the cache was left exactly as it was."""


class PagedKVCache:
    """K and V storage for every layer, ``(n_layer, num_blocks * block_size, n_head, head_dim)``
    each, handed out in blocks of ``block_size`` token slots.

    Token ``pos`` of a sequence lives in slot ``table[pos // block_size] * block_size + pos % block_size``.
    """

    def __init__(self, model: GPT, num_blocks: int, block_size: int, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}")
        c = model.config
        weight = model.wte.weight
        self.num_blocks, self.block_size = num_blocks, block_size
        self.dtype = dtype or weight.dtype
        shape = (c.n_layer, num_blocks * block_size, c.n_head, c.head_dim)
        self.k = torch.zeros(shape, device=device or weight.device, dtype=self.dtype)
        self.v = torch.zeros_like(self.k)
        self.device = self.k.device  # "cuda" resolved to "cuda:0", so it compares with the model's
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self._tables: dict[Hashable, list[int]] = {}
        self._lengths: dict[Hashable, int] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def tokens_held(self) -> int:
        return sum(self._lengths.values())

    @property
    def slots_reserved(self) -> int:
        return (self.num_blocks - len(self._free)) * self.block_size

    @property
    def sequences(self) -> int:
        """Sequences allocated and not yet freed."""
        return len(self._tables)

    def blocks_needed(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def blocks_to_grow(self, seq_id: Hashable, n_tokens: int) -> int:
        """Extra blocks ``allocate(seq_id, n_tokens)`` would take (0 if it already has room)."""
        return max(0, self.blocks_needed(n_tokens) - len(self._tables.get(seq_id, ())))

    def allocate(self, seq_id: Hashable, n_tokens: int) -> None:
        """Make ``seq_id``'s table hold at least ``n_tokens`` tokens in all (a new id gets a new
        table). Raises `KVCacheFull`, changing nothing, when the free blocks do not suffice."""
        if not isinstance(n_tokens, int) or n_tokens < 0:
            raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
        need = self.blocks_to_grow(seq_id, n_tokens)
        if need > len(self._free):
            raise KVCacheFull(f"sequence {seq_id!r} needs {need} more blocks of {self.block_size} tokens "
                              f"for {n_tokens} tokens; {len(self._free)} of {self.num_blocks} are free")
        table = self._tables.setdefault(seq_id, [])
        self._lengths.setdefault(seq_id, 0)
        table.extend(self._free.pop() for _ in range(need))

    def free(self, seq_id: Hashable) -> None:
        """Return the sequence's blocks to the pool; freeing an unknown or freed id does nothing."""
        self._free.extend(reversed(self._tables.pop(seq_id, [])))
        self._lengths.pop(seq_id, None)

    def length(self, seq_id: Hashable) -> int:
        """Tokens of ``seq_id`` whose K and V are written."""
        return self._lengths[self._known(seq_id)]

    def capacity(self, seq_id: Hashable) -> int:
        """Tokens ``seq_id``'s blocks can hold."""
        return len(self._tables[self._known(seq_id)]) * self.block_size

    def block_table(self, seq_id: Hashable) -> list[int]:
        return list(self._tables[self._known(seq_id)])

    def advance(self, seq_id: Hashable, n_tokens: int) -> None:
        """Record that ``n_tokens`` more tokens of ``seq_id`` have their K and V written."""
        new = self.length(seq_id) + n_tokens
        if new > self.capacity(seq_id):
            raise ValueError(f"sequence {seq_id!r} would hold {new} tokens but has room for "
                             f"{self.capacity(seq_id)}; allocate() first")
        self._lengths[seq_id] = new

    def _known(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._tables:
            raise KeyError(f"sequence {seq_id!r} holds no blocks in this cache (never allocated, or freed)")
        return seq_id
