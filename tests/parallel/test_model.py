"""labkit.parallel.model: balanced_placement and ModelParallel on CPU stand-ins.

Without a second real device, the "meta" device stands in for one: a layer placed on it gets
meta inputs only if the pre-hook moved the activation there.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit.device import devices
from labkit.models import build_model, example_batch
from labkit.parallel import ModelParallel, balanced_placement

pytestmark = pytest.mark.timeout(120)

MODELS = ["mlp", "tiny_cnn", "transformer", "resnet50"]
TOL = dict(rtol=1e-4, atol=1e-4)
# Distinct device names that need no hardware: balanced_placement only labels, it moves nothing.
FAKE = [torch.device("cuda", i) for i in range(8)]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: build_model(name, "small", seed=0) for name in MODELS}


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def groups(placement: dict[str, torch.device]) -> list[list[str]]:
    """Names grouped by consecutive runs of the same device, in placement order."""
    out: list[list[str]] = []
    last = None
    for name, device in placement.items():
        if device != last:
            out.append([])
            last = device
        out[-1].append(name)
    return out


def check_placement(model: nn.Module, placement: dict[str, torch.device], devs) -> list[list[str]]:
    names = list(placement)
    # contiguous: the devices appear in order, each in one run, and every device is used
    assert [placement[g[0]] for g in groups(placement)] == list(devs)
    # every name is a real submodule, none is inside another, and together they hold every parameter
    for name in names:
        model.get_submodule(name)
    for a in names:
        for b in names:
            assert a == b or not b.startswith(a + "."), f"{b} is inside {a}"
    own = sum(p.numel() for p in model.parameters(recurse=False))  # e.g. the transformer's `pos`
    assert sum(params(model.get_submodule(n)) for n in names) == params(model) - own
    return groups(placement)


def record_input_devices(model: nn.Module, names) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        model.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: seen[n].append(args[0].device.type))
    return seen


# --- balanced_placement ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_balanced_placement_is_contiguous_and_fills_every_device(models, name, k):
    model = models[name]
    placement = balanced_placement(model, FAKE[:k])
    assert all(isinstance(d, torch.device) for d in placement.values())
    assert len(check_placement(model, placement, FAKE[:k])) == k


def test_resnet50_on_two_devices_is_roughly_balanced(models):
    model = models["resnet50"]
    placement = balanced_placement(model, FAKE[:2])
    total = params(model)
    for group in check_placement(model, placement, FAKE[:2]):
        share = sum(params(model.get_submodule(n)) for n in group) / total
        assert 0.25 <= share <= 0.75, (group, share)


def test_equal_layers_split_evenly():
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(8)])
    for k, size in [(1, 8), (2, 4), (4, 2), (8, 1)]:
        placement = balanced_placement(model, FAKE[:k])
        assert [len(g) for g in check_placement(model, placement, FAKE[:k])] == [size] * k


def test_random_layer_sizes_always_fill_every_device():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = int(torch.randint(1, 9, (1,), generator=g))
        widths = torch.randint(1, 40, (n,), generator=g).tolist()
        model = nn.Sequential(*[nn.Linear(w, 2) for w in widths])
        for k in range(1, n + 1):
            placement = balanced_placement(model, FAKE[:k])
            assert list(placement) == [str(i) for i in range(n)], trial
            check_placement(model, placement, FAKE[:k])


def test_sequential_children_are_opened_when_too_few(models):
    # MLP has a single child, `layers`: on 3 devices its layers are placed one by one
    one = balanced_placement(models["mlp"], FAKE[:1])
    assert list(one) == ["layers"]
    three = balanced_placement(models["mlp"], FAKE[:3])
    assert list(three) == [f"layers.{i}" for i in range(5)]
    # TinyCNN has two children: the heavier Sequential (features) is opened for 3 devices
    cnn = balanced_placement(models["tiny_cnn"], FAKE[:3])
    assert list(cnn) == ["features.0", "features.1", "features.2", "head"]


def test_too_many_devices_raises(models):
    with pytest.raises(ValueError):
        balanced_placement(models["mlp"], FAKE[:6])  # 5 layers at most
    with pytest.raises(ValueError):
        balanced_placement(models["transformer"], FAKE[:4])  # embed, encoder, head
    with pytest.raises(ValueError):
        balanced_placement(models["mlp"], [])


# --- ModelParallel: equal to the model ---------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_model_parallel_balanced_equals_the_model(models, name, k):
    model = models[name]
    mp = ModelParallel(copy.deepcopy(model), "balanced", devices=devices(k, "cpu"))
    assert len(mp.placement) >= k
    for n in [1, 7]:
        x = example_batch(model, n, seed=n)
        with torch.no_grad():
            expected = model(x)
            out = mp(x)
        assert out.shape == expected.shape
        assert torch.allclose(out, expected, **TOL), f"{name} on {k} devices, batch {n}"


def test_explicit_placement_equals_the_model(models):
    model = models["tiny_cnn"]
    placement = {"features.0": "cpu", "features.1": torch.device("cpu"), "features.2": "cpu", "head": "cpu"}
    mp = ModelParallel(copy.deepcopy(model), placement)
    assert mp.placement == {n: torch.device("cpu") for n in placement}
    assert mp.input_device == torch.device("cpu")
    x = example_batch(model, 7)
    with torch.no_grad():
        assert torch.allclose(mp(x), model(x), **TOL)


def test_empty_placement_runs_the_model_as_is(models):
    model = models["mlp"]
    mp = ModelParallel(copy.deepcopy(model), {})
    assert mp.input_device is None
    x = example_batch(model, 3)
    with torch.no_grad():
        assert torch.allclose(mp(x), model(x), **TOL)


def test_input_spec_is_kept(models):
    mp = ModelParallel(copy.deepcopy(models["transformer"]), "balanced", devices=devices(2, "cpu"))
    assert mp.input_spec == models["transformer"].input_spec
    assert example_batch(mp, 2).dtype == torch.int64


def test_invalid_placement_raises(models):
    model = copy.deepcopy(models["mlp"])
    with pytest.raises(ValueError):
        ModelParallel(model, "round-robin", devices=devices(2, "cpu"))
    with pytest.raises(ValueError):
        ModelParallel(model, "balanced")  # no devices
    with pytest.raises(ValueError):
        ModelParallel(model, "balanced", devices=[])
    with pytest.raises(ValueError):
        ModelParallel(model, "balanced", devices=devices(6, "cpu"))


# --- ModelParallel: hooks and devices ----------------------------------------------------------


def test_a_pre_hook_is_registered_on_every_placed_child(models):
    model = copy.deepcopy(models["resnet50"])
    mp = ModelParallel(model, "balanced", devices=devices(3, "cpu"))
    for name in mp.placement:
        assert len(model.get_submodule(name)._forward_pre_hooks) == 1, name
    placed = set(mp.placement)
    for name, child in model.named_modules():
        if name and name not in placed:
            assert not child._forward_pre_hooks, name


def test_hooks_move_activations_to_the_next_device(models):
    """Layers 2..4 on a second device ("meta"): the activation must follow them there."""
    model = copy.deepcopy(models["mlp"])
    placement = {"layers.0": "cpu", "layers.1": "cpu", "layers.2": "meta", "layers.3": "meta", "layers.4": "meta"}
    mp = ModelParallel(model, placement)
    assert model.layers[0].weight.device.type == "cpu"
    assert model.layers[2].weight.device.type == "meta"
    assert model.layers[4].weight.device.type == "meta"
    seen = record_input_devices(model, placement)  # registered after ModelParallel's hooks
    with torch.no_grad():
        out = mp(example_batch(models["mlp"], 3))
    assert seen == {"layers.0": ["cpu"], "layers.1": ["cpu"], "layers.2": ["meta"],
                    "layers.3": ["meta"], "layers.4": ["meta"]}
    # no output_device: the output stays on the device of the last layer
    assert out.device.type == "meta"
    assert out.shape == (3, 10)


def test_input_goes_to_the_first_device(models):
    model = copy.deepcopy(models["mlp"])
    mp = ModelParallel(model, {"layers": "meta"})
    assert mp.input_device == torch.device("meta")
    seen = record_input_devices(model, ["layers.0"])
    with torch.no_grad():
        out = mp(torch.randn(2, 256))
    assert seen["layers.0"] == ["meta"]
    assert out.device.type == "meta"


def test_parameters_of_the_model_itself_go_to_the_first_device(models):
    model = copy.deepcopy(models["transformer"])
    mp = ModelParallel(model, {"embed": "cpu", "encoder": "meta", "head": "meta"})
    assert model.pos.device.type == "cpu"  # used with the embedding, on the first device
    assert model.embed.weight.device.type == "cpu"
    assert model.encoder.layers[0].linear1.weight.device.type == "meta"
    assert model.head.weight.device.type == "meta"
    assert mp.input_device == torch.device("cpu")


def test_layers_for_later_devices_never_pass_through_the_first_device(models):
    """First device "meta" (it keeps no data): a layer placed on the CPU can only end up there
    if it was never moved to the first device."""
    model = copy.deepcopy(models["transformer"])
    ModelParallel(model, {"embed": "meta", "encoder": "cpu", "head": "cpu"})
    assert model.pos.device.type == "meta"
    assert model.embed.weight.device.type == "meta"
    assert model.encoder.layers[0].linear1.weight.device.type == "cpu"
    assert model.head.weight.device.type == "cpu"


def test_children_not_named_stay_where_they_are(models):
    model = copy.deepcopy(models["mlp"])
    ModelParallel(model, {"layers.0": "meta", "layers.1": "meta"})
    assert model.layers[0].weight.device.type == "meta"
    assert model.layers[2].weight.device.type == "cpu"  # not named: stays on the CPU
    assert model.layers[4].weight.device.type == "cpu"


def test_output_device(models):
    x = example_batch(models["mlp"], 4)
    with torch.no_grad():
        expected = models["mlp"](x)
        on_cpu = ModelParallel(copy.deepcopy(models["mlp"]), "balanced", devices=devices(2, "cpu"),
                               output_device="cpu")
        assert on_cpu.output_device == torch.device("cpu")
        out = on_cpu(x)
        assert out.device == torch.device("cpu")
        assert torch.allclose(out, expected, **TOL)
        # output_device is applied: here it moves a CPU result to the stand-in second device
        elsewhere = ModelParallel(copy.deepcopy(models["mlp"]), {"layers": "cpu"}, output_device="meta")
        out = elsewhere(x)
        assert out.device.type == "meta" and out.shape == expected.shape


def test_model_parallel_is_an_eval_module(models):
    mp = ModelParallel(copy.deepcopy(models["tiny_cnn"]), "balanced", devices=devices(2, "cpu"))
    assert isinstance(mp, nn.Module)
    assert not mp.model.training
    assert sum(p.numel() for p in mp.parameters()) == params(models["tiny_cnn"])


def test_remove_hooks_leaves_the_model_plain():
    model = build_model("mlp", "small")
    x = example_batch(model, 3)
    with torch.no_grad():
        expected = model(x)
    mp = ModelParallel(model, "balanced", devices=["cpu", "cpu"])
    assert mp._hooks
    mp.remove_hooks()
    assert not mp._hooks and all(not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
