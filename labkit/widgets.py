"""ipywidgets playgrounds: thin controls over the same functions the notebooks and tests call.

ipywidgets is imported here only, so ``import labkit`` works where Jupyter is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from labkit.models import MODELS, build_model
from labkit.plots import plot_sweep
from labkit.sweep import batch_sweep

__all__ = ["sweep_playground"]


def sweep_playground(
    device: str | torch.device = "cpu",
    size: str = "small",
    *,
    models: Sequence[str] = tuple(MODELS),
    reference: dict[int, float] | None = None,
    reference_label: str = "",
):
    """A model picker, a largest-batch slider and a button that reruns `batch_sweep` and plots it."""
    import ipywidgets as w
    from IPython.display import display

    model_box = w.Dropdown(options=list(models), value=list(models)[0], description="model")
    max_batch = w.SelectionSlider(options=[2**i for i in range(0, 11)], value=64, description="max batch")
    repeat = w.IntSlider(value=5, min=3, max=50, description="repeats")
    run = w.Button(description="Run sweep", button_style="primary")
    out = w.Output()

    def on_run(_: object) -> None:
        with out:
            out.clear_output(wait=True)
            print(f"measuring {model_box.value} on {device} ...")
            model = build_model(model_box.value, size, device)
            sizes = [b for b in (2**i for i in range(11)) if b <= max_batch.value]
            points = batch_sweep(model, sizes, device=device, repeat=repeat.value)
            out.clear_output(wait=True)
            label = f"{model_box.value} on {device} ({size})"
            fig = plot_sweep(points, label=label, reference=reference, reference_label=reference_label)
            display(fig)
            plt.close(fig)

    run.on_click(on_run)
    return w.VBox([w.HBox([model_box, max_batch, repeat, run]), out])
