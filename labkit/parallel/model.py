"""`ModelParallel`: a model too large for one device, its children placed on several.

Each placed child gets a forward pre-hook that moves its inputs to its own device, so the
model's own ``forward`` runs unchanged and activations follow the layers from device to device.
Only one device works at a time: this is for fitting a model, not for speed (`PipelineParallel`
is the way to keep several devices busy).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from labkit.nested import map_tensors
from labkit.partition import balanced_cuts

__all__ = ["ModelParallel", "balanced_placement"]


def _placeable(model: nn.Module, k: int) -> list[str]:
    """Dotted names of modules that run one after another: the top-level children, with the
    heaviest `nn.Sequential` opened up until there are at least ``k`` of them."""
    names = [name for name, _ in model.named_children()]

    def weight(n: str) -> int:
        return sum(p.numel() for p in model.get_submodule(n).parameters())

    while len(names) < k:
        openable = [n for n in names if isinstance(model.get_submodule(n), nn.Sequential) and len(model.get_submodule(n)) > 1]
        if not openable:
            break
        n = max(openable, key=weight)
        i = names.index(n)
        names[i : i + 1] = [f"{n}.{c}" for c, _ in model.get_submodule(n).named_children()]
    return names


def balanced_placement(model: nn.Module, devices: Sequence[torch.device | str]) -> dict[str, torch.device]:
    """Place the model's children, in order, in contiguous groups, one non-empty group per
    device, the largest group's parameter count least (the device that must hold it sets the
    memory each needs)."""
    k = len(devices)
    names = _placeable(model, k)
    if not 1 <= k <= len(names):
        raise ValueError(f"{type(model).__name__} has {len(names)} placeable children: cannot fill {k} devices")
    weights = [sum(p.numel() for p in model.get_submodule(n).parameters()) + 1 for n in names]
    cuts = balanced_cuts(weights, k)
    return {name: torch.device(devices[group]) for group, (a, b) in enumerate(itertools.pairwise(cuts))
            for name in names[a:b]}


class ModelParallel(nn.Module):
    """``model`` with its children spread over devices by ``placement``.

    ``placement`` maps child names (dotted paths allowed) to devices, or is ``"balanced"`` with
    ``devices`` given. The model is changed in place (its children moved, a hook added to each
    placed child): `remove_hooks` detaches the hooks. Children not named stay where they are. The output is on the device of the
    last layer that ran, or on ``output_device`` when given.
    """

    def __init__(
        self,
        model: nn.Module,
        placement: Mapping[str, torch.device | str] | str = "balanced",
        *,
        devices: Sequence[torch.device | str] | None = None,
        output_device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if placement == "balanced":
            if not devices:
                raise ValueError('placement="balanced" needs devices=[...]')
            placement = balanced_placement(model, devices)
        elif isinstance(placement, str):
            raise ValueError(f'placement must be a mapping of child names to devices or "balanced", got {placement!r}')
        self.model = model.eval()
        self.placement = {name: torch.device(d) for name, d in placement.items()}
        self.output_device = torch.device(output_device) if output_device is not None else None
        first = next(iter(self.placement.values()), None)
        if first is not None:  # tensors held by the model itself (not its children) go with the first layers
            for name, param in model.named_parameters(recurse=False):
                setattr(model, name, nn.Parameter(param.detach().to(first), requires_grad=param.requires_grad))
            for name, buffer in model.named_buffers(recurse=False):
                setattr(model, name, buffer.to(first))
        self._hooks = []
        for name, device in self.placement.items():
            child = model.get_submodule(name)
            child.to(device)
            self._hooks.append(child.register_forward_pre_hook(lambda _m, args, d=device: map_tensors(lambda t: t.to(d), args)))
        self.input_device = first
        if hasattr(model, "input_spec"):
            self.input_spec = model.input_spec

    def remove_hooks(self) -> None:
        """Detach the input-moving hooks from the model's children (they stay on their devices)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_device is not None:
            x = x.to(self.input_device)
        out = self.model(x)
        return out.to(self.output_device) if self.output_device is not None else out
