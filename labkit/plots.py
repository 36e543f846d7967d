"""Matplotlib figures shared by the notebooks, the widgets and the report.

Each function takes measured data and returns a `matplotlib.figure.Figure`; none measures
anything, so the same picture can be drawn from a live run or from recorded results.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from labkit.measure import GPUMonitor
from labkit.sweep import SweepPoint

__all__ = ["plot_sweep", "plot_samples", "plot_monitor"]


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
