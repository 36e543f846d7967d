"""ipywidgets playgrounds: thin controls over the same functions the notebooks and tests call.

ipywidgets is imported here only, so ``import labkit`` works where Jupyter is not installed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import torch

from labkit.models import MODELS, build_model
from labkit.plots import plot_max_batch_search, plot_sweep
from labkit.sweep import batch_sweep

if TYPE_CHECKING:
    from labkit.memory import MaxBatch

__all__ = ["sweep_playground", "batching_playground", "pipeline_playground", "memory_playground", "ladder_playground",
           "generation_playground"]


def _drawn_alone(callback: Callable[[object], None]) -> Callable[[object], None]:
    """Run a playground's callback with pyplot's interactive mode off.

    ipykernel 7 may handle a widget's messages on a subshell thread, and each ends with pyplot's
    post-execute hook, which, in interactive mode, draws every open figure: the one this callback
    is still building, from another thread, while matplotlib's text layout is not thread-safe.
    Seen in JupyterLab (tests/browser): lesson 00's sweep failed 2 runs in 5 with a mathtext
    ParseException, both threads parsing one tick label. The figure is still shown: explicitly.
    """
    @functools.wraps(callback)
    def run(change: object) -> None:
        with plt.ioff():
            callback(change)

    return run


def sweep_playground(
    device: str | torch.device = "cpu",
    size: str = "small",
    *,
    models: Sequence[str] = tuple(m for m in MODELS if m != "gpt"),  # gpt generates: lesson 08 times it by token
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

    @_drawn_alone
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
            best = max(points, key=lambda p: p.items_per_s)
            print(f"batch 1 to {sizes[-1]}: best {best.items_per_s:,.0f} items/s, at batch {best.batch_size}")

    run.on_click(on_run)
    return w.VBox([w.HBox([model_box, max_batch, repeat, run]), out])


def batching_playground(
    model: Callable[[torch.Tensor], Any] | torch.nn.Module,
    make_input: Callable[[int], torch.Tensor],
    *,
    capacity_rps: float,
    duration_s: float = 2.0,
    label: str = "",
):
    """Sliders for max_batch_size, max_wait_ms and offered load; a run plots the latency CDF.

    Each run is `poisson_trial` with a fresh `DynamicBatcher`, the same function the notebook calls.
    """
    import ipywidgets as w

    from labkit.batching.trial import poisson_trial, run_in_fresh_loop
    from labkit.plots import plot_latency_cdf

    batch = w.SelectionSlider(options=[2**i for i in range(8)], value=32, description="max batch")
    wait = w.FloatSlider(value=5.0, min=0.0, max=50.0, step=0.5, description="max wait ms")
    load = w.IntSlider(value=70, min=10, max=150, step=10, description="load % cap.")
    run = w.Button(description="Run", button_style="primary")
    out = w.Output()

    @_drawn_alone
    def on_run(_: object) -> None:
        rate = capacity_rps * load.value / 100
        out.outputs = ()  # not clear_output(): that is a message, which can land after the appends below
        out.append_stdout(f"offering {rate:,.0f} requests/s for {duration_s:g} s ...\n")
        result = run_in_fresh_loop(lambda: poisson_trial(
            model, make_input, rate_rps=rate, duration_s=duration_s,
            max_batch_size=batch.value, max_wait_ms=wait.value, max_queue_size=100_000,
        ))
        r, s = result.load, result.batcher
        name = f"batch≤{batch.value}, wait {wait.value:g} ms, {load.value}% load"
        fig = plot_latency_cdf({name: r.latencies_ms}, title=f"{label} latency under Poisson load")
        out.outputs = ()
        out.append_stdout(
            f"{r.throughput_rps:,.0f} requests/s served of {rate:,.0f} offered; p50 {r.latency.p50_ms:.1f} ms, "
            f"p99 {r.latency.p99_ms:.1f} ms; mean batch {s['mean_batch_size']:.1f}; "
            f"{r.failed + r.timed_out} not served\n"
        )
        out.append_display_data(fig)
        plt.close(fig)

    run.on_click(on_run)
    return w.VBox([w.HBox([batch, wait, load, run]), out])


def _timed_pipeline(stages: Sequence[torch.nn.Module], devices: Sequence[torch.device | str], batch: torch.Tensor,
                    micro_batch_size: int, *, one_thread: bool):
    """(the `PipelineParallel`, ms of its second run): the first call at a new shape pays one-off
    costs. ``one_thread``: torch gets one thread meanwhile, so each CPU stage thread has a core."""
    import time

    from labkit.parallel import PipelineParallel

    threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)
    try:
        pipe = PipelineParallel(stages, devices, micro_batch_size=micro_batch_size)
        pipe(batch)
        t0 = time.perf_counter()
        pipe(batch)
        return pipe, (time.perf_counter() - t0) * 1e3
    finally:
        torch.set_num_threads(threads)


def pipeline_playground(
    stages: Sequence[torch.nn.Module],
    devices: Sequence[torch.device | str],
    batch: torch.Tensor,
    *,
    label: str = "",
):
    """A micro-batch-size slider and a button that runs `PipelineParallel` over ``stages`` (stage
    i on ``devices[i]``) on ``batch`` and draws its timeline, with the bubble fraction printed.

    The stage count is that of ``stages``. On CPU stand-ins torch gets one thread per run, so
    each stage thread has a core of its own (as in lesson 03).
    """
    import ipywidgets as w

    from labkit.plots import plot_pipeline_timeline

    n, k = batch.shape[0], len(stages)
    options = sorted({m for m in (2**i for i in range(n.bit_length())) if m <= n} | {n})
    micro = w.SelectionSlider(options=options, value=max(1, options[len(options) // 2]), description="micro-batch")
    run = w.Button(description="Run pipeline", button_style="primary")
    out = w.Output()
    stand_ins = all(torch.device(d).type == "cpu" for d in devices)

    @_drawn_alone
    def on_run(_: object) -> None:
        m = micro.value
        count = -(-n // m)
        out.outputs = ()
        out.append_stdout(f"running {count} micro-batch(es) of {m} through {k} stages ...\n")
        pipe, ms = _timed_pipeline(stages, devices, batch, m, one_thread=stand_ins)
        ideal = (k - 1) / (count + k - 1)
        fig = plot_pipeline_timeline(pipe.timeline, stages=k, title=f"{label} micro-batch {m}".strip())
        out.outputs = ()
        out.append_stdout(f"{count} micro-batch(es) of {m}: {ms:,.1f} ms for {n} items; bubble {pipe.bubble:.0%} "
                          f"(with {k} equal stages it would be (S-1)/(M+S-1) = {ideal:.0%})\n")
        out.append_display_data(fig)
        plt.close(fig)

    run.on_click(on_run)
    return w.VBox([w.HBox([micro, run]), out])


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _playground_search(name: str, precision: str, budget_bytes: int, device: torch.device, size: str):
    """One run of `memory_playground`: (`MaxBatch`, weight bytes, the batch the line through the
    first two trials predicts or None, bytes this process already held on the device).

    On CUDA: real forward passes (`find_max_batch`); what the process already holds there is
    added to the budget, so the budget is this model's own. Elsewhere: the simulated budget
    (weights + measured activation bytes), counted on PyTorch's meta device: the bytes depend
    only on shapes and dtypes, which the meta device works out without doing the arithmetic.
    """
    import gc

    from labkit.memory import find_max_batch, weight_bytes
    from labkit.models import example_batch

    held = 0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        held = torch.cuda.memory_reserved(device)
        model = build_model(name, size, device).to(_DTYPES[precision])
    else:
        model = build_model(name, size, "cpu").to("meta", _DTYPES[precision])
    budget = held + budget_bytes
    found = find_max_batch(model, example_batch(model, 1)[0], budget_bytes=budget)
    first = [t for t in found.trials[:2] if t.fits]
    predicted = None
    if len(first) == 2 and first[1].peak_bytes > first[0].peak_bytes:  # where their line meets the budget
        a, b = first
        predicted = a.batch + (budget - a.peak_bytes) * (b.batch - a.batch) // (b.peak_bytes - a.peak_bytes)
    return found, weight_bytes(model), predicted, held


def _search_lines(found: MaxBatch, weights: int, predicted: int | None, held: int, device: torch.device,
                  what: str, budget_bytes: int) -> list[str]:
    """`memory_playground`'s report of one search: where it ran, the weights, the prediction, the
    batch found with its proof, and every trial."""
    on_gpu = device.type == "cuda"
    where = (f"GPU, real forward passes on {torch.cuda.get_device_name(device)}" if on_gpu else
             "CPU, simulated budget: weights + activation bytes, not a device limit")
    lines = [f"{where}: {what}, budget {budget_bytes // 2**20:,} MiB",
             f"  weights: {weights / 2**20:,.2f} MiB"]
    if on_gpu and held:
        lines.append(f"  (the process already held {held / 2**20:,.0f} MiB on the device; the budget is on top)")
    if found.batch == 0:
        lines.append("  largest batch: 0 (not even one input fits: the weights alone need "
                     f"{weights / 2**20:,.1f} MiB)" if weights > budget_bytes else "  largest batch: 0")
    else:
        if predicted is not None:
            lines.append(f"  predicted from the first two trials: {predicted:,}")
        proof = ("the search's limit: every batch up to it fits" if found.batch >= (1 << 16) else
                 f"{found.batch:,} fits, {found.batch + 1:,} does not")
        lines.append(f"  largest batch: {found.batch:,} ({proof}), found in {len(found.trials)} trials")
    lines.append("  trials: " + ", ".join(f"{t.batch:,}{'' if t.fits else ' x'}" for t in found.trials)
                 + "   (x: did not fit)")
    return lines


def memory_playground(
    device: str | torch.device = "cpu",
    size: str = "small",
    *,
    models: Sequence[str] = ("tiny_cnn", "mlp", "resnet50"),
    budget_mib: int = 16,
    max_budget_mib: int = 1024,
):
    """A model, a precision and a memory budget (MiB); *Find max batch* runs `find_max_batch` and
    shows the batch the first two trials predict, the batch it confirms and every trial.

    On a CUDA ``device`` the trials are real forward passes and the budget is on top of what the
    process already holds there; elsewhere the budget is simulated (weights plus activation
    bytes, counted on the meta device, so any model and precision answers at once). The default
    case runs once when the playground is built.
    """
    import ipywidgets as w

    device = torch.device(device)
    on_gpu = device.type == "cuda"
    model_box = w.Dropdown(options=list(models), value=list(models)[0], description="model")
    precision = w.Dropdown(options=list(_DTYPES), value="float32", description="precision")
    budget = w.IntSlider(value=budget_mib, min=1, max=max_budget_mib, description="budget MiB",
                         continuous_update=False)
    run = w.Button(description="Find max batch", button_style="primary")
    out = w.Output()

    @_drawn_alone
    def on_run(_: object) -> None:
        name, dtype, budget_bytes = model_box.value, precision.value, budget.value * 2**20
        out.outputs = ()
        found, weights, predicted, held = _playground_search(name, dtype, budget_bytes, device, size)
        lines = _search_lines(found, weights, predicted, held, device, f"{name} ({size}) in {dtype}", budget_bytes)
        out.append_stdout("\n".join(lines) + "\n")
        kind = "GPU" if on_gpu else "CPU, simulated"
        fig = plot_max_batch_search(found, budget_bytes=budget_bytes, held=held,
                            title=f"{kind}: {name} ({size}), {dtype}, budget {budget.value:,} MiB")
        out.append_display_data(fig)
        plt.close(fig)

    run.on_click(on_run)
    on_run(None)
    return w.VBox([w.HBox([model_box, precision, budget, run]), out])


def ladder_playground(
    results: Sequence[Any],
    example: Callable[[int], torch.Tensor],
    *,
    flops_per_item: float,
    card: str,
    device: str | torch.device,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    ceiling_tflops: float | None = None,
):
    """Rungs of a finished climb (`labkit.ladder.climb`, forwards kept) and a batch size; *Measure*
    times each chosen rung's own forward at that batch and draws img/s with its share of the
    card's peak, or, on a CPU (no datasheet peak), of ``ceiling_tflops``, the matmul ceiling
    measured there. A compiled rung meeting a new batch size compiles again first (seconds)."""
    import ipywidgets as w

    from labkit.ladder import bench_rung
    from labkit.plots import plot_ladder
    from labkit.roofline import roofline

    ran = {r.rung.name: r for r in results if r.forward is not None}
    if not ran:
        raise ValueError("no rung of these results ran here: climb first, on this device")
    rungs = w.SelectMultiple(options=list(ran), value=list(ran), description="rungs", rows=min(8, len(ran)))
    batch = w.Dropdown(options=list(batch_sizes), value=batch_sizes[-1], description="batch")
    run = w.Button(description="Measure", button_style="primary")
    out = w.Output()

    @_drawn_alone
    def on_run(_: object) -> None:
        out.outputs = ()
        n, values, shares = batch.value, {}, {}
        for name in rungs.value:
            values[name] = bench_rung(ran[name], example(n), device)
            line = roofline(values[name], flops_per_item, card, ran[name].precision)
            share = line.share_of_peak
            if share is None and ceiling_tflops:
                share = line.tflops / ceiling_tflops
            shares[name] = share
        where = "of the card's peak" if ceiling_tflops is None else "of the measured matmul ceiling"
        fig = plot_ladder(values, shares, title=f"{card}: batch {n}, measured now", share_of=where.removeprefix("of "))
        out.append_display_data(fig)
        plt.close(fig)
        out.append_stdout("\n".join(f"{name:32s} {values[name]:10,.0f} images/s" +
                                     (f"  {shares[name]:.1%} {where}" if shares[name] is not None else "")
                                     for name in values) + "\n")

    run.on_click(on_run)
    return w.VBox([w.HBox([rungs, w.VBox([batch, run])]), out])


def generation_playground(model: torch.nn.Module, *, n: int = 24, static_batch: int = 8):
    """Arrival rate, the spread of output lengths, block size and KV budget; *Run* serves one fresh
    Poisson trace of ``n`` requests through `StaticBatcher` (``static_batch`` sequences, each a
    max-length reservation) and `ContinuousBatcher` (the same KV bytes in blocks) on the model's
    device, and shows tokens/s, TTFT, TPOT, KV use and occupancy over time for both."""
    import ipywidgets as w

    from labkit.generation import ContinuousBatcher, StaticBatcher, poisson_trace, serve_trace
    from labkit.plots import plot_occupancy

    rate = w.FloatLogSlider(value=400, base=10, min=1, max=3.5, description="arrivals/s", continuous_update=False)
    longest = w.IntSlider(value=96, min=8, max=min(192, model.config.context - 32), step=8, description="longest output",
                          continuous_update=False)
    block = w.Dropdown(options=[1, 2, 4, 8, 16, 32], value=4, description="block size")
    budget = w.FloatSlider(value=1.0, min=0.25, max=2.0, step=0.25, description="KV budget x",
                           continuous_update=False, tooltip="times the static batcher's max-length reservations")
    run = w.Button(description="Run", button_style="primary")
    out = w.Output()

    @_drawn_alone
    def on_run(_: object) -> None:
        out.outputs = ()
        trace = poisson_trace(n, rate.value, prompt_len=(8, 32), output_len=(4, longest.value),
                              vocab_size=model.config.vocab_size, seed=int(rate.value) + longest.value)
        max_len = 32 + longest.value
        tokens = max(max_len, int(budget.value * static_batch * max_len))  # at least one longest request
        runs = {"static": serve_trace(StaticBatcher(model, max_batch_size=max(1, tokens // max_len), max_len=max_len), trace)[1],
                "continuous": serve_trace(ContinuousBatcher(model, kv_blocks=-(-tokens // block.value),
                                                            block_size=block.value, max_batch_size=64), trace)[1]}
        lines = [f"{n} requests at {rate.value:,.0f}/s, outputs 4-{longest.value} tokens, KV budget {tokens:,} token slots"]
        for name, s in runs.items():
            lines.append(f"  {name:10s} {s.tokens_per_s:8,.0f} tokens/s  TTFT p50 {s.ttft.p50_ms:6.0f} ms  "
                         f"TPOT p99 {s.tpot.p99_ms:6.1f} ms  KV used {s.kv_utilisation:4.0%}  held {s.peak_sequences:3d}  "
                         f"preempted {s.preemptions}")
        out.append_stdout("\n".join(lines) + "\n")
        fig = plot_occupancy({k: s.timeline for k, s in runs.items()}, max_batch={k: s.max_batch_size for k, s in runs.items()},
                             title="occupancy and KV use, this trace")
        out.append_display_data(fig)
        plt.close(fig)

    run.on_click(on_run)
    return w.VBox([w.HBox([rate, longest]), w.HBox([block, budget, run]), out])
