"""Self-contained models for the lessons: no downloads, random weights, known shapes.

`resnet50` is the standard ResNet-50 (v1.5: stride on the 3x3 convolution, 25,557,032
parameters), defined here so that no torchvision is needed. Each model carries an `InputSpec`
so `example_batch` can make inputs for it, and `build_model(name, size)` gives the preset used
by the lessons: ``small`` runs in seconds on a CPU, ``full`` is the size worth timing on a GPU.
``gpt`` is the decoder-only transformer of `labkit.generation` (next-token logits for every position).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
from torch import nn

from labkit.device import device_of

if TYPE_CHECKING:
    from labkit.generation.model import GPT

__all__ = [
    "InputSpec",
    "MLP",
    "TinyCNN",
    "ResNet50",
    "TinyTransformer",
    "mlp",
    "tiny_cnn",
    "resnet50",
    "transformer",
    "gpt",
    "MODELS",
    "SIZES",
    "build_model",
    "example_batch",
    "input_spec_of",
    "sequential_layers",
    "ImageBytes",
]


@dataclass(frozen=True)
class InputSpec:
    """Shape (without the batch dimension) and dtype of one input; ``high`` bounds token ids."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    high: int | None = None


class MLP(nn.Module):
    def __init__(self, in_features: int = 256, hidden: int = 512, out_features: int = 10, depth: int = 3):
        super().__init__()
        dims = [in_features] + [hidden] * (depth - 1)
        layers: list[nn.Module] = []
        for a, b in pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], out_features))
        self.layers = nn.Sequential(*layers)
        self.input_spec = InputSpec((in_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyCNN(nn.Module):
    def __init__(self, image_size: int = 32, width: int = 32, num_classes: int = 10):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
        self.input_spec = InputSpec((3, image_size, image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 v1.5, as torchvision builds it (same modules, names and parameter count)."""

    def __init__(self, num_classes: int = 1000, image_size: int = 224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        stages = []
        for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(c_in, width, stride if i == 0 else 1))
                c_in = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.input_spec = InputSpec((3, image_size, image_size))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyTransformer(nn.Module):
    """A small transformer encoder over token ids, classifying each sequence."""

    def __init__(self, vocab: int = 1000, d_model: int = 64, heads: int = 4, layers: int = 2, seq_len: int = 32, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)
        self.input_spec = InputSpec((seq_len,), torch.int64, high=vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.pos)
        return self.head(h.mean(dim=1))


class ImageBytes(nn.Module):
    """Takes images as uint8 (what a decoded JPEG is) and normalises them on the model's device.

    A served image model should be fed bytes: a 224² float32 image is 602 KB, its uint8 form
    150 KB, so collating and copying a batch moves a quarter of the data, and the conversion is
    one fused multiply-add on the GPU instead of work on the CPU.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                 std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> None:
        super().__init__()
        spec = input_spec_of(model)
        if spec is None or len(spec.shape) != 3 or spec.shape[0] != len(mean):
            raise ValueError(f"ImageBytes wraps a model of ({len(mean)}, H, W) image inputs; "
                             f"{type(model).__name__} takes {spec.shape if spec else 'no input_spec'}")
        self.model = model
        self.input_spec = InputSpec(spec.shape, torch.uint8, high=256)
        param = next(model.parameters())
        std_t = torch.tensor(std).view(-1, 1, 1)
        self.register_buffer("scale", (1 / (255 * std_t)).to(param.device, param.dtype))
        self.register_buffer("shift", (-torch.tensor(mean).view(-1, 1, 1) / std_t).to(param.device, param.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.scale.dtype)
        return self.model(torch.addcmul(self.shift, x, self.scale))


def mlp(size: str = "small") -> MLP:
    return MLP(**SIZES[size]["mlp"])


def tiny_cnn(size: str = "small") -> TinyCNN:
    return TinyCNN(**SIZES[size]["tiny_cnn"])


def resnet50(size: str = "full") -> ResNet50:
    return ResNet50(**SIZES[size]["resnet50"])


def transformer(size: str = "small") -> TinyTransformer:
    return TinyTransformer(**SIZES[size]["transformer"])


def gpt(size: str = "small") -> GPT:
    """`labkit.generation.GPT` with its ``input_spec`` (imported here: the generation package
    does not import this module, so the two never form a cycle)."""
    from labkit.generation.model import GPT, GPTConfig

    model = GPT(GPTConfig(**SIZES[size]["gpt"]))
    model.input_spec = InputSpec((model.config.context,), torch.int64, high=model.config.vocab_size)
    return model


# Presets: "small" keeps a lesson to seconds on a 2-core CPU; "full" is what a GPU should be timed on.
# ResNet-50 keeps its architecture in both: only the image side changes.
SIZES: dict[str, dict[str, dict]] = {
    "small": {
        "mlp": dict(in_features=256, hidden=512, out_features=10, depth=3),
        "tiny_cnn": dict(image_size=32, width=16),
        "resnet50": dict(image_size=64),
        "transformer": dict(d_model=64, heads=4, layers=2, seq_len=32),
        "gpt": dict(n_layer=2, n_head=4, d_model=128, context=256),
    },
    "full": {
        "mlp": dict(in_features=1024, hidden=4096, out_features=1000, depth=4),
        "tiny_cnn": dict(image_size=64, width=64),
        "resnet50": dict(image_size=224),
        "transformer": dict(d_model=512, heads=8, layers=6, seq_len=128),
        "gpt": dict(n_layer=12, n_head=12, d_model=768, context=1024),  # GPT-2 small's shape
    },
}

MODELS = {"mlp": mlp, "tiny_cnn": tiny_cnn, "resnet50": resnet50, "transformer": transformer, "gpt": gpt}


def build_model(name: str, size: str = "small", device: str | torch.device = "cpu", seed: int = 0) -> nn.Module:
    """A model from `MODELS` at a `SIZES` preset, in eval mode on ``device``, weights seeded."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name](size)
    return model.to(device).eval()


def sequential_layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers in order, such that running them one after another is its forward:
    what pipeline and model parallelism cut into stages. (The transformer, whose forward adds a
    position table and averages over tokens, has no such list.)"""
    if isinstance(model, MLP):
        return list(model.layers)
    if isinstance(model, TinyCNN):
        return [*model.features, *model.head]
    if isinstance(model, ResNet50):
        return [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2,
                model.layer3, model.layer4, model.avgpool, nn.Flatten(1), model.fc]
    raise ValueError(f"{type(model).__name__} has no sequential form; use mlp, tiny_cnn or resnet50")


def input_spec_of(model: nn.Module) -> InputSpec | None:
    """The model's `InputSpec`, with float inputs in the model's own precision (a model cast to
    half precision takes half-precision inputs); None for a model without one."""
    spec: InputSpec | None = getattr(model, "input_spec", None)
    param = next(model.parameters(), None)
    if spec is None or param is None or not (spec.dtype.is_floating_point and param.dtype.is_floating_point):
        return spec
    return InputSpec(spec.shape, param.dtype, spec.high)


def example_batch(model: nn.Module, n: int, *, device: str | torch.device | None = None, seed: int | None = 0) -> torch.Tensor:
    """A random batch of ``n`` inputs for ``model`` (see `input_spec_of`), on its device by default."""
    spec = input_spec_of(model)
    if spec is None:
        raise ValueError(f"{type(model).__name__} has no input_spec; build it with labkit.models")
    if n < 1:
        raise ValueError(f"batch size must be at least 1, got {n}")
    device = device if device is not None else device_of(model)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    shape = (n, *spec.shape)
    if spec.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(device=device, dtype=spec.dtype)
    return torch.randint(0, spec.high or 2, shape, generator=gen, dtype=spec.dtype).to(device)
