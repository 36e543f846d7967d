import functools

import pytest
import torch
from torch import nn

from labkit.models import MODELS, SIZES, build_model, example_batch

# One output per input (classes), or for the generative gpt one row of logits per token read.
NUM_OUTPUTS = {
    ("mlp", "small"): (10,),
    ("mlp", "full"): (1000,),
    ("tiny_cnn", "small"): (10,),
    ("tiny_cnn", "full"): (10,),
    ("resnet50", "small"): (1000,),
    ("resnet50", "full"): (1000,),
    ("transformer", "small"): (10,),
    ("transformer", "full"): (10,),
    ("gpt", "small"): (16, 256),
    ("gpt", "full"): (16, 256),
}
TOKEN_MODELS = {"transformer", "gpt"}

RESNET50_PARAMETERS = 25_557_032  # torchvision.models.resnet50(): the published figure


@functools.cache
def built(name, size):
    """Each preset is built once per session; tests only read these models."""
    return build_model(name, size)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_both_sizes():
    assert set(NUM_OUTPUTS) == {(name, size) for name in MODELS for size in SIZES}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_finite(name, size):
    model = built(name, size)
    batch = 3 if size == "small" else 1
    x = example_batch(model, batch)
    if name == "gpt":
        x = x[:, :16]  # a prompt of 16 tokens: any length up to the context is one forward
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (batch, *NUM_OUTPUTS[name, size])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_resnet50_parameter_count(size):
    assert n_params(built("resnet50", size)) == RESNET50_PARAMETERS


def test_resnet50_layout_matches_torchvision():
    model = built("resnet50", "small")
    names = [name for name, _ in model.named_children()]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    state = model.state_dict()
    # 53 convolutions + 53 batch norms (weight, bias) + fc (weight, bias) = 161 parameters;
    # each batch norm adds running_mean, running_var, num_batches_tracked: 161 + 159 = 320 entries.
    assert len(list(model.parameters())) == 161
    assert len(state) == 320
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    assert state["fc.weight"].shape == (1000, 2048)
    for i in range(1, 5):
        layer = getattr(model, f"layer{i}")
        assert layer[0].downsample is not None
        assert all(block.downsample is None for block in layer[1:])


@pytest.mark.parametrize("layer, stride", [("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2)])
def test_resnet50_is_v1_5_stride_on_the_3x3(layer, stride):
    block = getattr(built("resnet50", "small"), layer)[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (stride, stride)


@pytest.mark.parametrize("size, side", [("small", 64), ("full", 224)])
def test_resnet50_presets_change_only_the_image_side(size, side):
    assert built("resnet50", size).input_spec.shape == (3, side, side)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_example_batch_is_seeded(name):
    model = built(name, "small")
    a = example_batch(model, 4, seed=1)
    assert torch.equal(a, example_batch(model, 4, seed=1))
    assert not torch.equal(a, example_batch(model, 4, seed=2))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_example_batch_matches_input_spec(name):
    model = built(name, "small")
    spec = model.input_spec
    x = example_batch(model, 5)
    assert x.shape == (5, *spec.shape)
    assert x.device == torch.device("cpu")
    if name in TOKEN_MODELS:
        assert x.dtype == torch.int64
        assert spec.high is not None
        assert 0 <= int(x.min()) and int(x.max()) < spec.high
    else:
        assert x.dtype == torch.float32


def test_example_batch_token_ids_cover_the_vocabulary():
    model = built("transformer", "small")
    x = example_batch(model, 64)
    assert int(x.max()) > model.input_spec.high // 2  # not stuck at a tiny range


def test_example_batch_unseeded_draws_fresh_inputs():
    model = built("mlp", "small")
    assert not torch.equal(example_batch(model, 2, seed=None), example_batch(model, 2, seed=None))


def test_example_batch_follows_half_precision_model():
    model = build_model("mlp", "small").half()
    assert example_batch(model, 2).dtype == torch.float16
    tokens = example_batch(build_model("transformer", "small").half(), 2)
    assert tokens.dtype == torch.int64


@pytest.mark.parametrize("n", [0, -1])
def test_example_batch_rejects_empty_batch(n):
    with pytest.raises(ValueError):
        example_batch(built("mlp", "small"), n)


def test_example_batch_needs_an_input_spec():
    with pytest.raises(ValueError, match="input_spec"):
        example_batch(nn.Linear(4, 2), 2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_model_is_seeded(name):
    a = build_model(name, "small", seed=0).state_dict()
    b = build_model(name, "small", seed=0).state_dict()
    c = build_model(name, "small", seed=1).state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_model_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    build_model("mlp", "small", seed=123)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_model_returns_eval_mode_on_cpu(name):
    model = built(name, "small")
    assert not any(m.training for m in model.modules())
    assert all(p.device == torch.device("cpu") for p in model.parameters())


@pytest.mark.parametrize("kwargs, choices", [
    (dict(name="vgg16"), sorted(MODELS)),
    (dict(name="mlp", size="huge"), sorted(SIZES)),
])
def test_build_model_rejects_unknown_choices(kwargs, choices):
    with pytest.raises(ValueError) as info:
        build_model(**kwargs)
    for choice in choices:
        assert choice in str(info.value)
