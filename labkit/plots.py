"""Matplotlib figures shared by the notebooks, the widgets and the report.

Each function takes measured data and returns a `matplotlib.figure.Figure`; none measures
anything, so the same picture can be drawn from a live run or from recorded results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from labkit.timeline import StageEvent, bubble_fraction

if TYPE_CHECKING:  # named in annotations only: drawing imports no domain module (nor torch)
    from labkit.generation.stats import StepSample
    from labkit.measure import GPUMonitor
    from labkit.memory import MaxBatch
    from labkit.sweep import SweepPoint

__all__ = [
    "plot_sweep",
    "plot_samples",
    "plot_monitor",
    "plot_latency_cdf",
    "plot_batch_sizes",
    "plot_throughput_bars",
    "plot_adaptive_history",
    "plot_latency_by_group",
    "plot_pipeline_timeline",
    "plot_pipeline_timelines",
    "plot_scaling",
    "plot_max_batch_search",
    "plot_ladder",
    "plot_occupancy",
]


def plot_sweep(
    points: Sequence[SweepPoint],
    *,
    label: str,
    reference: dict[int, float] | None = None,
    reference_label: str = "",
) -> Figure:
    """Throughput and latency against batch size; ``reference`` maps batch size to recorded items/s."""
    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [p.batch_size for p in points]
    ax_tp.plot(sizes, [p.items_per_s for p in points], "o-", label=label)
    if reference:
        ax_tp.plot(list(reference), list(reference.values()), "s--", label=reference_label)
    ax_tp.set(xscale="log", yscale="log", xlabel="batch size", ylabel="items / s", title="Throughput")
    ax_tp.legend(fontsize=8)
    ax_lat.plot(sizes, [p.median_ms for p in points], "o-", label=f"{label}: median")
    ax_lat.fill_between(sizes, [p.p10_ms for p in points], [p.p90_ms for p in points], alpha=0.25, label="p10-p90")
    ax_lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per call", title="Latency of one call")
    ax_lat.legend(fontsize=8)
    ticks = sorted(set(sizes) | set(reference or {}))
    for ax in (ax_tp, ax_lat):
        ax.set_xticks(ticks, [str(s) for s in ticks])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_samples(samples: dict[str, Sequence[float]], *, title: str, unit: str = "ms") -> Figure:
    """Histogram of repeated timings, one series per name, with each median marked."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, values in samples.items():
        ax.hist(values, bins=30, alpha=0.5, label=name)
        median = sorted(values)[len(values) // 2]
        ax.axvline(median, linestyle="--", color=ax.patches[-1].get_facecolor(), alpha=0.9)
    ax.set(xlabel=unit, ylabel="count", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_monitor(monitor: GPUMonitor, *, title: str = "Device monitor") -> Figure:
    """GPU utilisation and power over time (NVML), or this process's CPU use when there is no NVML."""
    fig, ax = plt.subplots(figsize=(8, 3))
    t = [s.t_s for s in monitor.samples]
    if monitor.nvml:
        ax.plot(t, [s.util_pct for s in monitor.samples], label="GPU utilisation %")
        ax.plot(t, [s.cpu_pct for s in monitor.samples], label="process CPU % (of one core)", alpha=0.6)
        power = [s.power_w for s in monitor.samples]
        if any(p is not None for p in power):
            ax2 = ax.twinx()
            ax2.plot(t, power, color="tab:red", alpha=0.5, label="power W")
            ax2.set_ylabel("W")
    else:
        ax.plot(t, [s.cpu_pct for s in monitor.samples], label="process CPU % (of one core)")
        ax.text(0.01, 0.95, "no NVML on this machine: CPU use only", transform=ax.transAxes, va="top", fontsize=8)
    ax.set(xlabel="seconds", ylabel="%", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_latency_cdf(latencies_ms: dict[str, Sequence[float]], *, title: str, target_ms: float | None = None) -> Figure:
    """Cumulative distribution of request latencies, one curve per name, p50/p99 marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in latencies_ms.items():
        v = np.sort(np.asarray(values, dtype=float))
        if v.size == 0:
            continue
        p = np.arange(1, v.size + 1) / v.size
        p99 = float(np.percentile(v, 99))
        ax.plot(v, p, label=f"{name}: p50 {np.percentile(v, 50):.1f} ms, p99 {p99:.1f} ms")
    if target_ms is not None:
        ax.axvline(target_ms, color="k", linestyle=":", label=f"target {target_ms:g} ms")
    ax.axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xscale="log", xlabel="latency (ms, log scale)", ylabel="fraction of requests", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_batch_sizes(histograms: dict[str, dict[int, int]], *, title: str) -> Figure:
    """How many batches of each size were run, one group of bars per name."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sizes = sorted({s for h in histograms.values() for s in h})
    width = 0.8 / max(len(histograms), 1)
    for i, (name, hist) in enumerate(histograms.items()):
        ax.bar([k + i * width for k in range(len(sizes))], [hist.get(s, 0) for s in sizes], width, label=name)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(sizes))], [str(s) for s in sizes])
    ax.set(xlabel="batch size", ylabel="batches", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_throughput_bars(values: dict[str, float], *, title: str, unit: str = "requests / s") -> Figure:
    """One horizontal bar per configuration, labelled with its value."""
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(values)))
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(values[n], i, f" {values[n]:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=unit, title=title)
    ax.margins(x=0.15)
    fig.tight_layout()
    return fig


def plot_ladder(values: dict[str, float], shares: dict[str, float | None], *, title: str, unit: str = "images / s",
                share_of: str = "peak") -> Figure:
    """The optimisation ladder as a staircase: one step per rung, in climbing order, each
    labelled with its throughput and its share of ``share_of`` (the card's peak, or a CPU's
    measured matmul ceiling)."""
    fig, ax = plt.subplots(figsize=(9, 0.8 + 0.42 * len(values)))
    names = list(values)
    ax.step([values[n] for n in names], range(len(names)), where="mid", color="tab:grey", alpha=0.5)
    ax.barh(names, [values[n] for n in names], color="tab:blue", height=0.6)
    for i, n in enumerate(names):
        share = shares.get(n)
        ax.text(values[n], i, f" {values[n]:,.0f}" + (f"  ({share:.1%} of {share_of})" if share is not None else ""),
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=unit, title=title)
    ax.margins(x=0.3)
    fig.tight_layout()
    return fig


def plot_adaptive_history(histories: dict[str, Sequence[dict[str, float]]], *, target_ms: float, title: str) -> Figure:
    """Batch cap and slowest latency per batch over time, for each `AdaptiveBatcher.history`."""
    fig, (ax_cap, ax_lat) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for name, history in histories.items():
        if not history:
            continue
        t0 = history[0]["t"]
        t = [h["t"] - t0 for h in history]
        ax_cap.step(t, [h["cap"] for h in history], where="post", label=name)
        ax_lat.plot(t, [h["worst_latency_ms"] for h in history], ".", markersize=3, alpha=0.6, label=name)
    ax_lat.axhline(target_ms, color="k", linestyle=":", label=f"target p99 {target_ms:g} ms")
    ax_cap.set(ylabel="batch cap", title=title)
    ax_lat.set(xlabel="seconds", ylabel="slowest request in batch (ms)", yscale="log")
    for ax in (ax_cap, ax_lat):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_latency_by_group(groups: dict[str, dict[str, Sequence[float]]], *, title: str) -> Figure:
    """p50 and p99 latency per group (e.g. priority level) for each configuration, side by side."""
    configs = list(groups)
    names = list(dict.fromkeys(g for c in configs for g in groups[c]))  # in the order given
    fig, axes = plt.subplots(1, len(configs), figsize=(4.5 * len(configs), 3.5), sharey=True, squeeze=False)
    for ax, config in zip(axes[0], configs, strict=True):
        p50 = [np.percentile(groups[config][g], 50) if len(groups[config].get(g, [])) else np.nan for g in names]
        p99 = [np.percentile(groups[config][g], 99) if len(groups[config].get(g, [])) else np.nan for g in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, p99, 0.4, label="p99")
        ax.set_xticks(x, names)
        ax.set(title=config, yscale="log")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("latency (ms)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _draw_timeline(ax: Axes, timeline: Sequence[StageEvent], stages: int, title: str,
                   stage_names: Sequence[str] | None = None) -> None:
    """One row per stage (stage 0 on top), one bar per micro-batch, coloured by its index."""
    cmap = plt.get_cmap("tab10")
    span_ms = max((e.end_s for e in timeline), default=0.0) * 1e3
    for e in timeline:
        start, width = e.start_s * 1e3, (e.end_s - e.start_s) * 1e3
        ax.broken_barh([(start, width)], (e.stage - 0.4, 0.8), facecolors=cmap(e.item % 10),
                       edgecolor="white", linewidth=0.5)
        if width > span_ms / 50:  # label the bars wide enough to hold a number
            ax.text(start + width / 2, e.stage, str(e.item), ha="center", va="center", fontsize=7,
                    color="white", clip_on=True)
    ax.set_yticks(range(stages), stage_names or [f"stage {i}" for i in range(stages)])
    ax.set_ylim(stages - 0.5, -0.5)
    ax.set_xlim(0, span_ms * 1.02 or 1.0)
    bubble = bubble_fraction(timeline, stages)
    ax.set_title(f"{title}: {span_ms:,.1f} ms, idle (bubble) {bubble:.0%} of stage-time", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def plot_pipeline_timeline(timeline: Sequence[StageEvent], *, stages: int, title: str,
                           stage_names: Sequence[str] | None = None) -> Figure:
    """Gantt chart of a `PipelineParallel.timeline` or `StreamPipeline.timeline` (a sequence of
    `StageEvent`): one row per stage (named by ``stage_names``, e.g. `labkit.streams.STAGES`),
    one bar per batch (labelled and coloured by its index), x in ms. Gaps in a row are that
    stage idling; the title gives the total span and the bubble fraction."""
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.55 * stages))
    _draw_timeline(ax, timeline, stages, title, stage_names)
    ax.set_xlabel("ms from the start of the call")
    fig.tight_layout()
    return fig


def plot_pipeline_timelines(timelines: dict[str, Sequence[StageEvent]], *, stages: int, title: str = "",
                            stage_names: Sequence[str] | None = None) -> Figure:
    """Several `plot_pipeline_timeline` charts stacked on one shared ms axis, one per name,
    so their lengths compare at a glance (e.g. the sequential baseline above the pipeline)."""
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 0.5 + (0.4 + 0.55 * stages) * len(timelines)),
                             sharex=True, squeeze=False)
    for ax, (name, timeline) in zip(axes[:, 0], timelines.items(), strict=True):
        _draw_timeline(ax, timeline, stages, name, stage_names)
    longest = max((e.end_s for t in timelines.values() for e in t), default=0.0) * 1e3
    axes[-1, 0].set_xlim(0, longest * 1.02 or 1.0)
    axes[-1, 0].set_xlabel("ms from the start of the call")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_scaling(
    devices: Sequence[int],
    throughput: Sequence[float],
    *,
    measured: bool,
    label: str,
    unit: str = "items / s",
    points: dict[str, tuple[int, float, float]] | None = None,
) -> Figure:
    """Throughput and scaling efficiency against device count, with the ideal (linear) lines.

    ``devices`` must include 1: efficiency is ``throughput(N) / (N × throughput(1))``. The title
    and legend say "measured" or "modelled from single-device figures" according to ``measured``.
    ``points`` adds single marked figures, each ``name -> (devices, throughput, one-device
    throughput measured alongside it)``, e.g. one measured point beside a modelled curve; its
    efficiency is taken against its own one-device figure.
    """
    if 1 not in devices:
        raise ValueError("plot_scaling needs the throughput on 1 device (devices must include 1)")
    how = "measured" if measured else "modelled from single-device figures"
    n = np.asarray(devices, dtype=float)
    tp = np.asarray(throughput, dtype=float)
    base = float(tp[list(devices).index(1)])
    fig, (ax_tp, ax_eff) = plt.subplots(1, 2, figsize=(11, 4))
    style = "o-" if measured else "o--"
    efficiency = tp / (n * base)
    ax_tp.plot(n, tp, style, label=how)
    ax_tp.plot(n, base * n, ":", color="grey", label="ideal: N × one device")
    ax_eff.plot(n, efficiency, style, label=how)
    ax_eff.axhline(1.0, linestyle=":", color="grey", label="ideal: 1.0")
    marked = []
    for i, (name, (k, value, one)) in enumerate((points or {}).items()):
        ax_tp.plot([k], [value], "s", color=f"C{i + 1}", label=name)
        marked.append(value / (k * one))
        ax_eff.plot([k], [marked[-1]], "s", color=f"C{i + 1}", label=name)
    ax_tp.set(xlabel="devices", ylabel=unit, title="Throughput")
    ax_eff.set(xlabel="devices", ylabel="throughput(N) / (N × throughput(1))", title="Scaling efficiency")
    ax_eff.set_ylim(0, max(1.15, float(np.nanmax([*efficiency, *marked])) * 1.1))
    for ax in (ax_tp, ax_eff):
        ax.set_xticks(n, [str(int(k)) for k in n])
        ax.grid(True, alpha=0.3)
    ax_tp.legend(fontsize=8, loc="upper left")
    ax_eff.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{label}: {how}")
    fig.tight_layout()
    return fig


def plot_max_batch_search(found: MaxBatch, *, budget_bytes: int, held: int = 0, title: str) -> Figure:
    """A `find_max_batch` result: left, the batch each trial tried, in order (o: it fitted, x: it
    did not); right, the peak each trial measured against its batch, with the budget. ``held``:
    bytes the process held before, taken off each peak."""
    mib = 2**20
    fig, (ax_log, ax_peak) = plt.subplots(1, 2, figsize=(10, 3.5))
    for fits, marker, label in ((True, "o", "fits"), (False, "x", "does not fit")):
        pts = [(i, t) for i, t in enumerate(found.trials, 1) if t.fits == fits]
        if not pts:
            continue
        ax_log.plot([i for i, _ in pts], [t.batch for _, t in pts], marker, label=label, markersize=8)
        peaks = [(t.batch, (t.peak_bytes - held) / mib) for _, t in pts if t.peak_bytes is not None]
        ax_peak.plot([b for b, _ in peaks], [p for _, p in peaks], marker, label=label, markersize=8)
    ax_log.plot(range(1, len(found.trials) + 1), [t.batch for t in found.trials], "-", color="grey", alpha=0.4)
    ax_log.set(xlabel="trial", ylabel="batch tried", yscale="log", title=f"{len(found.trials)} trials")
    ax_log.set_xticks(range(1, len(found.trials) + 1))
    ticks = [2**k for k in range(max((t.batch for t in found.trials), default=1).bit_length() + 1)]
    ticks = ticks[:: 1 + len(ticks) // 9]
    ax_log.set_yticks(ticks, [f"{t:,}" for t in ticks])
    ax_log.minorticks_off()
    ax_peak.axhline(budget_bytes / mib, color="k", linestyle=":", label=f"budget {budget_bytes / mib:,.0f} MiB")
    ax_peak.set(xlabel="batch", ylabel="peak MiB", title="peak memory of each trial")
    for ax in (ax_log, ax_peak):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_occupancy(timelines: dict[str, Sequence[StepSample]], *, max_batch: dict[str, int], title: str) -> Figure:
    """Per generation step over time: sequences computed against the batch's slots (top), and
    the share of reserved KV slots that hold a token (bottom), one line per batcher."""
    fig, (ax_seq, ax_kv) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for (name, timeline), color in zip(timelines.items(), ("tab:red", "tab:blue", "tab:green", "tab:orange"), strict=False):
        if not timeline:
            continue
        t = [s.t_s for s in timeline]
        ax_seq.step(t, [s.active for s in timeline], where="post", color=color, label=f"{name}: sequences computed")
        ax_seq.axhline(max_batch[name], color=color, linestyle=":", linewidth=1, label=f"{name}: batch slots")
        ax_kv.step(t, [s.held_tokens / s.reserved_slots if s.reserved_slots else 0.0 for s in timeline],
                   where="post", color=color, label=name)
    ax_seq.set(ylabel="sequences", title=title)
    ax_kv.set(xlabel="seconds", ylabel="KV slots holding a token", ylim=(0, 1.05))
    for ax in (ax_seq, ax_kv):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
