"""PNG figures of scaling behaviour (matplotlib, no display needed).

Figures are built with the object API on the Agg canvas rather than pyplot, so plotting never
touches global backend state and works on headless machines. Every function returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scalelab.analysis.collect import Run
from scalelab.analysis.diagnose import EFFICIENCY_MIN
from scalelab.analysis.predict import Prediction
from scalelab.analysis.scaling import ScalingGroup, amdahl_speedup

DPI = 120
FIGSIZE = (7.0, 4.5)
BREAKDOWN = (
    ("data_ms", "data wait", "#8c564b"),
    ("h2d_ms", "host-to-device", "#e377c2"),
    ("forward_ms", "forward", "#1f77b4"),
    ("backward_compute_ms", "backward (compute)", "#ff7f0e"),
    ("exposed_comm_ms", "exposed all-reduce (in backward)", "#d62728"),
    # runs of several ranks whose exposed communication was not measured (an unknown is not 0)
    ("backward_incl_comm_ms", "backward incl. all-reduce (not measured apart)", "#ffbb78"),
    ("optimizer_ms", "optimizer", "#2ca02c"),
    ("other_ms", "other", "#7f7f7f"),
)


def _figure(width: float = FIGSIZE[0]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, FIGSIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # bbox_inches="tight" keeps legends placed outside the axes inside the image.
    fig.savefig(path, bbox_inches="tight")
    return path


def _from_zero(ax: Axes) -> None:
    """y from 0 with room above the highest point (set_ylim(bottom=0) keeps only the top margin
    of the original data range, which half-hides the highest marker of a narrow range)."""
    top = max(ax.get_ylim()[1], ax.dataLim.y1 * 1.08 if np.isfinite(ax.dataLim.y1) else 0.0)
    ax.set_ylim(0, top if top > 0 else 1.0)


def _world_size_axis(ax: Axes, sizes: Sequence[int]) -> None:
    """Log2 x axis with a tick at every measured world size (also fine for a single size)."""
    sizes = sorted(set(sizes))
    if len(sizes) > 1:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xlim(sizes[0] - 1, sizes[0] + 1)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("world size (ranks)")
    ax.grid(True, alpha=0.3)


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _all_sizes(groups: Sequence[ScalingGroup]) -> list[int]:
    return sorted({n for g in groups for n in g.world_sizes}) or [1]


def plot_epoch_time(groups: Sequence[ScalingGroup], out_dir: Path) -> Path:
    fig, ax = _figure()
    for g in groups:
        ax.plot(
            [p.world_size for p in g.points],
            [p.epoch_time_s for p in g.points],
            "o-",
            label=g.label,
        )
    _world_size_axis(ax, _all_sizes(groups))
    ax.set_ylabel("mean epoch time (s)")
    _from_zero(ax)
    ax.set_title("Epoch time vs world size (lower is better)")
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "epoch_time.png")


def plot_speedup(groups: Sequence[ScalingGroup], out_dir: Path) -> Path:
    fig, ax = _figure()
    sizes = _all_sizes(groups)
    top = 1.0
    ideal_labelled: set[int] = set()
    for g in groups:
        n0 = g.baseline_world_size
        xs = [p.world_size for p in g.points]
        ys = [p.speedup for p in g.points]
        (line,) = ax.plot(xs, ys, "o-", label=f"measured: {g.label}")
        ideal = [n / n0 for n in g.world_sizes]
        # One legend entry per baseline: groups sharing n0 share the same ideal line.
        label = f"ideal (n/{n0})" if n0 not in ideal_labelled else None
        ideal_labelled.add(n0)
        ax.plot(g.world_sizes, ideal, "k:", alpha=0.6, label=label)
        if g.amdahl is not None:
            grid = np.geomspace(n0, max(xs), 100)
            curve = [amdahl_speedup(g.amdahl.serial_fraction, n, n0) for n in grid]
            ax.plot(
                grid,
                curve,
                "--",
                color=line.get_color(),
                alpha=0.6,
                label=f"Amdahl fit, s = {g.amdahl.serial_fraction:.3f}",
            )
        top = max(top, *ys, *ideal)
    ax.axhspan(0, 1, color="tab:red", alpha=0.08)
    _world_size_axis(ax, sizes)
    ax.set_ylim(0, top * 1.1)
    ax.text(
        0.98,
        0.5 / (top * 1.1),
        "negative scaling (slower than baseline)",
        transform=ax.transAxes,
        ha="right",
        va="center",
        color="tab:red",
        fontsize=9,
    )
    ax.set_ylabel("speedup vs baseline (x)")
    ax.set_title("Speedup vs world size (fixed global batch)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, Path(out_dir) / "speedup.png")


def plot_efficiency(groups: Sequence[ScalingGroup], out_dir: Path) -> Path:
    fig, ax = _figure()
    for g in groups:
        ax.plot(
            [p.world_size for p in g.points],
            [100 * p.efficiency for p in g.points],
            "o-",
            label=g.label,
        )
    ax.axhline(100, color="k", ls=":", label="ideal (100 %)")
    ax.axhline(
        100 * EFFICIENCY_MIN,
        color="tab:orange",
        ls="--",
        label=f"diagnosis threshold ({EFFICIENCY_MIN:.0%})",
    )
    _world_size_axis(ax, _all_sizes(groups))
    _from_zero(ax)
    ax.set_ylabel("parallel efficiency (%)")
    ax.set_title("Efficiency = speedup / ideal speedup")
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "efficiency.png")


def plot_throughput(groups: Sequence[ScalingGroup], out_dir: Path) -> Path:
    fig, ax = _figure()
    for g in groups:
        pts = [p for p in g.points if p.run.summary.get("samples_per_s")]
        ax.plot(
            [p.world_size for p in pts],
            [p.run.summary["samples_per_s"] for p in pts],
            "o-",
            label=g.label,
        )
    _world_size_axis(ax, _all_sizes(groups))
    _from_zero(ax)
    ax.set_ylabel("training throughput (samples/s)")
    ax.set_title("Throughput vs world size (higher is better)")
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "throughput.png")


def plot_accuracy(runs: Sequence[Run], out_dir: Path) -> Path:
    fig, ax = _figure()
    for run in runs:
        rows = [
            r for r in run.metrics if r.get("val_acc") is not None and r.get("epoch") is not None
        ]
        if rows:
            # Accuracy is a fraction in metrics.csv; plotted in % for readability.
            scale = 1.0 if max(r["val_acc"] for r in rows) > 1 else 100.0
            ax.plot(
                [r["epoch"] for r in rows],
                [scale * r["val_acc"] for r in rows],
                "o-",
                label=f"{run.name} ({run.world_size} ranks)",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy per epoch")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, Path(out_dir) / "accuracy.png")


def breakdown_ms(run: Run) -> dict[str, float]:
    """Per-step time split into the stacked-bar components (exposed comm split out of backward)."""
    phase = {
        k: run.phase(k) or 0.0
        for k in ("data_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")
    }
    exposed = run.comm_value("exposed_comm_ms")
    unknown = exposed is None and run.world_size > 1
    exposed = exposed or 0.0
    step = run.phase("step_ms") or sum(phase.values())
    return {
        "data_ms": phase["data_ms"],
        "h2d_ms": phase["h2d_ms"],
        "forward_ms": phase["forward_ms"],
        "backward_compute_ms": 0.0 if unknown else max(0.0, phase["backward_ms"] - exposed),
        "exposed_comm_ms": 0.0 if unknown else min(exposed, phase["backward_ms"]),
        "backward_incl_comm_ms": phase["backward_ms"] if unknown else 0.0,
        "optimizer_ms": phase["optimizer_ms"],
        "other_ms": max(0.0, step - sum(phase.values())),
    }


def plot_time_breakdown(runs: Sequence[Run], out_dir: Path) -> Path:
    # Grow with the number of bars so run labels stay legible in large sweeps.
    fig, ax = _figure(max(FIGSIZE[0], 3.0 + 0.9 * len(runs)))
    ordered = sorted(runs, key=lambda r: (r.preset, r.world_size, r.name))
    several_presets = len({r.preset for r in ordered}) > 1
    labels = [
        f"{r.preset}\n{_ranks(r.world_size)}" if several_presets else _ranks(r.world_size)
        for r in ordered
    ]
    if len(set(labels)) < len(labels):  # repeats, other devices, ...: each bar by its run
        labels, several_presets = [f"{r.name}\n{_ranks(r.world_size)}" for r in ordered], True
    parts = [breakdown_ms(r) for r in ordered]
    x = np.arange(len(ordered))
    bottom = np.zeros(len(ordered))
    for key, label, color in BREAKDOWN:
        values = np.array([p[key] for p in parts])
        if key == "backward_incl_comm_ms" and not values.any():
            continue  # every run measured its exposed communication (or has one rank)
        ax.bar(
            x,
            values,
            bottom=bottom,
            color=color,
            label=label,
            width=0.6,
            hatch={"exposed_comm_ms": "//", "backward_incl_comm_ms": ".."}.get(key),
        )
        bottom += values
    ax.set_xticks(x)
    if several_presets:
        ax.set_xticklabels(labels, fontsize=8, rotation=30, ha="right")
    else:
        ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("time per optimizer step (ms)")
    ax.set_title("Where the step time goes")
    # Outside the axes: stacked bars fill the plot area, an inside legend would hide them.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    _from_zero(ax)
    return _save(fig, Path(out_dir) / "time_breakdown.png")


def plot_predicted_vs_measured(
    groups: Sequence[ScalingGroup], predictions: Mapping[str, Sequence[Prediction]], out_dir: Path
) -> Path:
    """Measured speedup (epoch time) and the cost model's predicted speedup per group.

    `predictions` maps a group label to its predictions; groups without one show measured only.
    """
    fig, ax = _figure()
    # Predictions are relative to 1 rank, so only groups with a 1-rank baseline are comparable.
    groups = [g for g in groups if g.has_single_rank_baseline]
    sizes = set(_all_sizes(groups))
    for g in groups:
        (line,) = ax.plot(
            [p.world_size for p in g.points],
            [p.speedup for p in g.points],
            "o-",
            label=f"measured: {g.label}",
        )
        preds = predictions.get(g.label) or []
        if preds:
            ax.plot(
                [p.world_size for p in preds],
                [p.speedup for p in preds],
                "s--",
                color=line.get_color(),
                alpha=0.7,
                label="predicted (cost model)",
            )
            sizes |= {p.world_size for p in preds}
    if not any(predictions.values()):
        ax.text(
            0.5,
            0.9,
            "no prediction: needs a 1-rank run and a bus bandwidth",
            transform=ax.transAxes,
            ha="center",
            fontsize=9,
            color="gray",
        )
    ax.plot(sorted(sizes), sorted(sizes), "k:", label="ideal (n)")
    _world_size_axis(ax, sorted(sizes))
    _from_zero(ax)
    ax.set_ylabel("speedup vs 1 rank (x)")
    ax.set_title("Predicted vs measured speedup")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, Path(out_dir) / "predicted_vs_measured.png")


def plot_all(
    groups: Sequence[ScalingGroup],
    runs: Sequence[Run],
    predictions: Mapping[str, Sequence[Prediction]],
    out_dir: Path,
) -> dict[str, Path]:
    """All figures; keys are stable names used by the report. Labels are literal text: a '$'
    in a run, preset or device name is not matplotlib mathtext (a lone pair broke the report)."""
    with matplotlib.rc_context({"text.parse_math": False}):
        return {
            "epoch_time": plot_epoch_time(groups, out_dir),
            "speedup": plot_speedup(groups, out_dir),
            "efficiency": plot_efficiency(groups, out_dir),
            "throughput": plot_throughput(groups, out_dir),
            "accuracy": plot_accuracy(runs, out_dir),
            "time_breakdown": plot_time_breakdown(runs, out_dir),
            "predicted_vs_measured": plot_predicted_vs_measured(groups, predictions, out_dir),
        }
