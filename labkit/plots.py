"""Matplotlib figures shared by the notebooks, the widgets and the report.

Each function takes measured data and returns a `matplotlib.figure.Figure`; none measures
anything, so the same picture can be drawn from a live run or from recorded results.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from labkit.measure import GPUMonitor
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
