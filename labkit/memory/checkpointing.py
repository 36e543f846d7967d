"""Activation checkpointing cut where the bytes kept for backward balance.

It lowers a training step's peak (fine-tuning, training) and saves nothing at inference, where
nothing is kept for backward anyway (tests/test_memory.py measures both).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from labkit.memory.accounting import saved_bytes_per_layer, untouched
from labkit.models import example_batch, sequential_layers
from labkit.partition import balanced_cuts

__all__ = ["Checkpointed", "checkpointed"]


class Checkpointed(nn.Module):
    """``model``'s layers in ``segments`` segments; only segment boundaries are kept for backward.

    The cuts balance what each segment keeps for backward (measured for one input): during the
    backward pass one segment at a time holds its activations again, so the largest segment sets
    the peak. Stages of blocks (ResNet's ``layer1``…``layer4``) are cut between blocks. Cutting
    into equal numbers of layers instead (`labkit.guide.GuideCheckpointed`) puts most of
    ResNet-50's bytes, its early high-resolution blocks, in one segment: recorded in
    bench/results/2026-11-27-h200.json, ``memory.checkpointing.segments_4``, ``train_peak_mib``
    against ``guide_cut_train_peak_mib``.
    """

    def __init__(self, model: nn.Module, segments: int) -> None:
        super().__init__()
        layers = [part for layer in sequential_layers(model)
                  for part in (layer if isinstance(layer, nn.Sequential) else [layer])]
        if not 1 <= segments <= len(layers):
            raise ValueError(f"segments must be between 1 and {len(layers)} (the model's blocks), got {segments}")
        with untouched(model):
            sizes = saved_bytes_per_layer(layers, example_batch(model, 1))
        bounds = balanced_cuts(sizes, segments)
        self.segments = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds))
        self.input_spec = getattr(model, "input_spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # nothing would be saved anyway: plain forward
            for segment in self.segments:
                x = segment(x)
            return x
        for segment in self.segments:
            x = checkpoint(_run_segment, segment, x, use_reentrant=False)
        return x


def _run_segment(segment: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    # A segment that starts in place (ResNet's ReLU(inplace=True)) would overwrite the input the
    # checkpoint keeps to recompute it from; it gets a copy instead.
    if getattr(segment[0], "inplace", False):
        x = x.clone()
    return segment(x)


def checkpointed(model: nn.Module, segments: int = 4) -> Checkpointed:
    """Activation checkpointing over the blocks of `labkit.models.sequential_layers`, cut where
    the bytes kept for backward balance: it lowers a training step's peak (fine-tuning, training)
    and saves **nothing** at inference."""
    return Checkpointed(model, segments)
