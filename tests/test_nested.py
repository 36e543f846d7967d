"""labkit.nested: one walk over tensors in nested outputs."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import torch

from labkit.nested import map_tensors, tensors_in

Pair = namedtuple("Pair", "logits hidden")


def test_map_keeps_the_structure_and_leaves_the_rest():
    a, b, c = torch.zeros(2), torch.ones(3), torch.full((1,), 2.0)
    out = map_tensors(lambda t: t + 1, {"x": (a, [b, "label"]), "y": Pair(c, None), "n": 3})
    assert isinstance(out["x"], tuple) and isinstance(out["x"][1], list) and isinstance(out["y"], Pair)
    assert torch.equal(out["x"][0], a + 1) and torch.equal(out["x"][1][0], b + 1)
    assert out["x"][1][1] == "label" and out["y"].hidden is None and out["n"] == 3
    assert torch.equal(out["y"].logits, c + 1)


def test_a_bare_tensor_and_a_non_tensor():
    t = torch.arange(3)
    assert torch.equal(map_tensors(lambda x: x * 2, t), t * 2)
    assert map_tensors(lambda x: x * 2, "text") == "text"


def test_mappings_become_dicts_in_their_order():
    out = map_tensors(lambda t: t, OrderedDict([("b", torch.zeros(1)), ("a", torch.ones(1))]))
    assert type(out) is dict and list(out) == ["b", "a"]


def test_tensors_in_order():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    found = tensors_in([a, {"k": Pair(b, 5), "j": (c,)}, "x"])
    assert [t is x for t, x in zip(found, [a, b, c], strict=True)] == [True] * 3
    assert tensors_in("nothing") == [] and tensors_in(a) == [a]
