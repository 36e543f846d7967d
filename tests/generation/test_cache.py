import pytest
import torch

from labkit.generation import GPT, GPTConfig, KVCacheFull, PagedKVCache


@pytest.fixture(scope="module")
def model():
    return GPT(GPTConfig(context=64, n_layer=2, n_head=2, d_model=8))


def state(cache, *ids):
    return (cache.free_blocks, cache.sequences, cache.tokens_held, cache.slots_reserved,
            [(cache.block_table(s), cache.length(s)) for s in ids])


def test_storage_follows_the_model(model):
    cache = PagedKVCache(model, 5, 4)
    assert cache.k.shape == cache.v.shape == (2, 20, 2, 4)
    assert cache.k.dtype == torch.float32 and cache.device == torch.device("cpu")
    assert PagedKVCache(model, 5, 4, dtype=torch.float16).k.dtype == torch.float16


def test_allocate_grows_a_table_block_by_block(model):
    cache = PagedKVCache(model, 6, 4)
    assert (cache.num_blocks, cache.block_size, cache.free_blocks) == (6, 4, 6)
    assert cache.blocks_needed(0) == 0 and cache.blocks_needed(4) == 1 and cache.blocks_needed(5) == 2
    assert cache.blocks_to_grow("a", 5) == 2
    cache.allocate("a", 5)
    assert cache.block_table("a") == [0, 1] and cache.free_blocks == 4
    assert cache.blocks_to_grow("a", 8) == 0 and cache.blocks_to_grow("a", 9) == 1
    cache.allocate("a", 8)  # already room: nothing taken
    assert cache.free_blocks == 4
    cache.allocate("b", 1)
    cache.allocate("a", 9)
    assert cache.block_table("a") == [0, 1, 3] and cache.block_table("b") == [2]
    assert cache.sequences == 2 and cache.slots_reserved == 16 and cache.tokens_held == 0
    assert cache.length("a") == 0 and cache.capacity("a") == 12


def test_advance_counts_tokens_held(model):
    cache = PagedKVCache(model, 6, 4)
    cache.allocate("a", 5)
    cache.allocate("b", 3)
    cache.advance("a", 5)
    cache.advance("b", 2)
    assert cache.length("a") == 5 and cache.tokens_held == 7 and cache.slots_reserved == 12
    with pytest.raises(ValueError, match="allocate"):
        cache.advance("b", 3)  # 5 tokens in one block of 4
    assert cache.length("b") == 2


def test_full_cache_raises_and_changes_nothing(model):
    cache = PagedKVCache(model, 3, 4)
    cache.allocate("a", 6)
    cache.advance("a", 6)
    before = state(cache, "a")
    with pytest.raises(KVCacheFull, match="needs 2 more blocks.*1 of 3 are free"):
        cache.allocate("b", 5)
    with pytest.raises(KVCacheFull):
        cache.allocate("a", 13)
    assert state(cache, "a") == before
    assert cache.sequences == 1  # the refused new id was not registered


def test_free_is_idempotent_and_blocks_are_reused(model):
    cache = PagedKVCache(model, 4, 2)
    cache.allocate("a", 4)
    cache.allocate("b", 4)
    assert cache.free_blocks == 0
    cache.free("a")
    cache.free("a")
    cache.free("never")
    assert cache.free_blocks == 2 and cache.sequences == 1
    cache.allocate("c", 4)
    assert sorted(cache.block_table("c")) == [0, 1]
    with pytest.raises(KeyError, match="'a'"):
        cache.length("a")
    cache.free("b")
    cache.free("c")
    assert cache.free_blocks == cache.num_blocks and cache.sequences == 0
    assert cache.tokens_held == 0 and cache.slots_reserved == 0


def test_a_freed_id_starts_again_empty(model):
    cache = PagedKVCache(model, 4, 2)
    cache.allocate("a", 3)
    cache.advance("a", 3)
    cache.free("a")
    cache.allocate("a", 1)
    assert cache.length("a") == 0 and len(cache.block_table("a")) == 1


def test_contiguous_reservation_is_the_same_class(model):
    """Static batching's max-length reservation: one block of max_len per sequence."""
    cache = PagedKVCache(model, 2, 64)
    cache.allocate("a", 64)
    cache.advance("a", 10)
    assert cache.slots_reserved == 64 and cache.tokens_held == 10


@pytest.mark.parametrize("args", [(0, 4), (4, 0)])
def test_rejects_empty_geometry(model, args):
    with pytest.raises(ValueError, match=">= 1"):
        PagedKVCache(model, *args)


@pytest.mark.parametrize("n", [-1, 2.5])
def test_allocate_rejects_bad_counts(model, n):
    with pytest.raises(ValueError, match="n_tokens"):
        PagedKVCache(model, 2, 2).allocate("a", n)
