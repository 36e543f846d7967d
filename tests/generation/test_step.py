import pytest
import torch

from labkit.generation import TIE, PagedKVCache, check_prompt, forward_step, generate, top2_gap
from labkit.models import build_model

ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return build_model("gpt", "small")


def tokens(n, seed):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


def full_logits(model, ids):
    with torch.inference_mode():
        return model(ids[None])[0]  # (T, vocab)


def test_prefill_then_decode_equals_forward(model):
    ids = tokens(40, 0)
    cache = PagedKVCache(model, 8, 16)
    cache.allocate("a", 40)
    got = [forward_step(model, cache, [("a", ids[:30])])[0]]
    got += [forward_step(model, cache, [("a", ids[t : t + 1])])[0] for t in range(30, 40)]
    want = full_logits(model, ids)[29:]
    torch.testing.assert_close(torch.stack(got), want, atol=ATOL, rtol=0)
    assert cache.length("a") == 40 and cache.tokens_held == 40


def test_chunked_prefill_equals_one_shot(model):
    ids = tokens(50, 1)
    one, two = PagedKVCache(model, 4, 16), PagedKVCache(model, 4, 16)
    one.allocate(0, 50)
    two.allocate(0, 50)
    whole = forward_step(model, one, [(0, ids)])
    forward_step(model, two, [(0, ids[:23])])
    chunked = forward_step(model, two, [(0, ids[23:])])
    torch.testing.assert_close(chunked, whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(two.k, one.k, atol=ATOL, rtol=0)  # same K written in the same slots


@pytest.mark.parametrize("block_size", [1, 16, 160])
def test_mixed_batch_equals_forward(model, block_size):
    """Prompt chunks (one fresh, one after an earlier chunk) beside sequences decoding at
    different positions, their blocks interleaved in the pool; every logit as if each ran
    alone. block_size 160 is max_len: the contiguous reservation."""
    plan = {"p": (10, 37), "q": (0, 20), "d1": (5, 1), "d2": (60, 1), "d3": (1, 1), "d4": (100, 1)}  # past, new
    seqs = {s: tokens(past + new, i) for i, (s, (past, new)) in enumerate(plan.items())}
    cache = PagedKVCache(model, len(plan) * -(-160 // block_size), block_size)
    for s in seqs:  # grow the tables in turns so that the blocks interleave
        cache.allocate(s, 1)
    for s, ids in seqs.items():
        cache.allocate(s, len(ids))
    for s, (past, _) in plan.items():
        if past:
            forward_step(model, cache, [(s, seqs[s][:past])])
    batch = [(s, seqs[s][past:]) for s, (past, _) in plan.items()]
    got = forward_step(model, cache, batch)
    assert got.shape == (len(plan), 256)
    for row, (s, ids) in enumerate(seqs.items()):
        torch.testing.assert_close(got[row], full_logits(model, ids)[-1], atol=ATOL, rtol=0)
        assert cache.length(s) == len(ids)
    assert cache.tokens_held == sum(map(len, seqs.values()))


def test_reused_blocks_hold_no_stale_keys(model):
    """A freed sequence's K/V stay in its old blocks; the next owner must never attend to them."""
    cache = PagedKVCache(model, 4, 8)
    cache.allocate("old", 32)
    forward_step(model, cache, [("old", tokens(32, 6))])
    cache.free("old")
    ids = tokens(11, 7)
    cache.allocate("new", 11)
    forward_step(model, cache, [("new", ids[:10])])
    got = forward_step(model, cache, [("new", ids[10:])])[0]
    torch.testing.assert_close(got, full_logits(model, ids)[-1], atol=ATOL, rtol=0)


def test_step_checks_room_and_shape(model):
    cache = PagedKVCache(model, 2, 4)
    cache.allocate("a", 4)
    with pytest.raises(ValueError, match="allocate"):
        forward_step(model, cache, [("a", tokens(5, 0))])
    with pytest.raises(ValueError, match="at least one"):
        forward_step(model, cache, [("a", tokens(0, 0))])
    with pytest.raises(ValueError, match="once per step"):
        forward_step(model, cache, [("a", tokens(1, 0)), ("a", tokens(1, 1))])
    with pytest.raises(KeyError, match="'b'"):
        forward_step(model, cache, [("b", tokens(1, 0))])
    assert cache.length("a") == 0  # nothing advanced by a refused step


def test_step_refuses_positions_past_the_context(model):
    cache = PagedKVCache(model, 1, 300)
    cache.allocate("a", 300)
    with pytest.raises(ValueError, match="context of 256"):
        forward_step(model, cache, [("a", tokens(257, 0))])


@pytest.mark.parametrize("seed, prompt_len, new", [(0, 1, 40), (1, 17, 30), (2, 100, 25), (3, 200, 56)])
def test_generate_with_and_without_cache_agree(model, seed, prompt_len, new):
    prompt = tokens(prompt_len, seed)
    cached, plain = generate(model, prompt, new), generate(model, prompt, new, kv_cache=False)
    assert cached.shape == (new,) and cached.dtype == torch.long and cached.device.type == "cpu"
    if not torch.equal(cached, plain):  # allowed only after a tie of the top two logits
        first = int((cached != plain).nonzero()[0])
        gaps = top2_gap(full_logits(model, torch.cat([prompt, plain]))[prompt_len - 1 :])
        assert float(gaps[first]) < TIE, f"token {first} differs with a top-2 gap of {float(gaps[first])}"


def test_generate_is_greedy_over_forward(model):
    prompt = tokens(12, 4)
    out = generate(model, prompt, 6)
    logits = full_logits(model, torch.cat([prompt, out]))
    assert torch.equal(logits[11:-1].argmax(-1), out)


def test_top2_gap():
    logits = torch.tensor([[1.0, 3.0, 2.5], [0.0, 7.0, 7.0]])
    torch.testing.assert_close(top2_gap(logits), torch.tensor([0.5, 0.0]))
    assert top2_gap(torch.zeros(2, 3, 5)).shape == (2, 3)


def test_check_prompt_returns_a_cpu_long_tensor(model):
    prompt = check_prompt(model, torch.tensor([1, 2, 255], dtype=torch.int32), 5)
    assert prompt.dtype == torch.long and prompt.tolist() == [1, 2, 255]
    assert check_prompt(model, tokens(250, 0), 6).shape == (250,)  # exactly the context


@pytest.mark.parametrize("prompt, new, error, match", [
    (torch.tensor([], dtype=torch.long), 4, ValueError, "empty"),
    (torch.zeros(2, 3, dtype=torch.long), 4, ValueError, r"1-D .*shape \(2, 3\)"),
    (torch.tensor([1.0, 2.0]), 4, TypeError, "integer token ids.*float32"),
    (torch.tensor([True]), 4, TypeError, "integer token ids.*bool"),
    ([1, 2, 3], 4, TypeError, "torch.Tensor.*list"),
    (torch.tensor([1, 256]), 4, ValueError, r"256 is outside.*\[0, 256\)"),
    (torch.tensor([-1, 5]), 4, ValueError, r"-1 is outside.*\[0, 256\)"),
    (torch.zeros(250, dtype=torch.long), 7, ValueError, "257 exceeds the model's context of 256"),
    (torch.zeros(257, dtype=torch.long), 1, ValueError, "context of 256"),
    (torch.tensor([1]), 0, ValueError, "max_new_tokens must be an int >= 1, got 0"),
    (torch.tensor([1]), 2.0, TypeError, "max_new_tokens must be an int >= 1, got 2.0"),
    (torch.tensor([1]), True, TypeError, "max_new_tokens must be an int >= 1, got True"),
])
def test_check_prompt_says_what_was_expected(model, prompt, new, error, match):
    with pytest.raises(error, match=match):
        check_prompt(model, prompt, new)
    with pytest.raises(error, match=match):
        generate(model, prompt, new)


def test_step_follows_a_bfloat16_model():
    """Cache storage takes the model's dtype (half the bytes per token); the step runs in it."""
    model = build_model("gpt", "small").to(torch.bfloat16)
    ids = tokens(30, 5)
    cache = PagedKVCache(model, 2, 16)
    assert cache.k.dtype == torch.bfloat16
    cache.allocate("a", 30)
    forward_step(model, cache, [("a", ids[:29])])
    got = forward_step(model, cache, [("a", ids[29:])])[0]
    torch.testing.assert_close(got.float(), full_logits(model, ids)[-1].float(), atol=0.1, rtol=0.05)
