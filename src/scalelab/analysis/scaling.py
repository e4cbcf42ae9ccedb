"""Strong-scaling metrics: speedup, efficiency, Amdahl serial fraction, Karp–Flatt, R.

Runs are grouped so that only runs doing the same work are compared (same preset, data, model,
GLOBAL batch, steps per epoch, micro-batching, padding, precision, compile, comm hook, and
whether the first epoch is left out of the mean epoch time). Within a group the baseline is the
1-rank run; without one it is the smallest world size n0 and every number is relative to it
(ideal speedup = n/n0). Repeats of the baseline are averaged; CPU baselines with different
threads per rank (1 x 1 and 1 x 2) are not: the fastest layout is the baseline.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalelab.analysis.collect import Run, is_number

# Grid resolution of the Amdahl fit: 1e-4 in s is far below the run-to-run noise of timings.
AMDAHL_GRID_POINTS = 10_001


def group_key(summary: dict[str, Any]) -> tuple[Any, ...]:
    """Runs with the same key did the same work per epoch and may be compared for scaling."""
    return (
        summary.get("preset"),
        summary.get("dataset"),
        summary.get("model_arch"),
        summary.get("num_params"),  # the model's size: presets run with other widths differ
        summary.get("global_batch"),
        summary.get("precision"),
        summary.get("num_train_samples"),
        summary.get("steps_per_epoch"),  # train.max_steps_per_epoch shortens epochs
        summary.get("mean_tokens_per_sample"),  # the same texts, tokenizer and max_seq_len
        summary.get("grad_accum_steps") or 1,
        _data(summary, "pad_to_max_len"),
        _data(summary, "pad_multiple"),
        _data(summary, "delay_per_batch_s"),
        summary.get("compile"),
        # the trainer leaves the first epoch (warm-up, compilation) out of the mean only when
        # there are more: a 1-epoch run's time is not comparable with a 3-epoch run's
        (summary.get("num_epochs") or 1) > 1,
        # a sweep applies its hook at every world size (1 rank: no collective to hook)
        (summary.get("comm") or {}).get("comm_hook") or "none",
        # a CPU run is no baseline for GPU runs, nor one GPU model for another
        summary.get("device_type"),
        summary.get("device_name"),
    )


def _data(summary: dict[str, Any], key: str) -> Any:
    data = summary.get("data")
    return data.get(key) if isinstance(data, dict) else None


def group_label(summary: dict[str, Any], detailed: bool = False) -> str:
    """A group's name in tables and plots; ``detailed`` adds the rest of `group_key` (model,
    size, training examples), for groups whose short labels coincide."""

    def count(key: str) -> str:
        value = summary.get(key)
        return f"{value:,}" if isinstance(value, int) else str(value)

    extra = (
        f", {summary.get('model_arch')}, {count('num_params')} parameters, "
        f"{count('num_train_samples')} training examples"
        if detailed
        else ""
    )
    return (
        f"{summary.get('preset')} ({summary.get('dataset')}, global batch "
        f"{summary.get('global_batch')}, {summary.get('precision')}, "
        f"{summary.get('device_name') or summary.get('device_type')}{extra})"
    )


def karp_flatt(speedup: float, n: float) -> float | None:
    """Experimentally determined serial fraction e = (1/S - 1/n) / (1 - 1/n); None for n <= 1."""
    if n <= 1 or speedup <= 0:
        return None
    return (1.0 / speedup - 1.0 / n) / (1.0 - 1.0 / n)


def amdahl_speedup(s: float, n: float, n0: float = 1.0) -> float:
    """Amdahl speedup of n ranks relative to n0 ranks: T(n0)/T(n) with T(n) ∝ s + (1-s)/n."""
    return (s + (1.0 - s) / n0) / (s + (1.0 - s) / n)


@dataclass
class AmdahlFit:
    serial_fraction: float
    rmse: float
    note: str
    """Why the value is at a bound (negative or super-linear scaling), or ''."""


def fit_amdahl(
    world_sizes: Sequence[float], speedups: Sequence[float], n0: float = 1.0
) -> AmdahlFit:
    """Least-squares serial fraction s in [0, 1] of measured speedups (relative to n0 ranks).

    A dense grid search is used instead of a closed form because s is constrained to [0, 1] and
    the loss is not quadratic in s; it also makes the clipping at the bounds explicit.
    """
    n = np.asarray(world_sizes, dtype=float)
    measured = np.asarray(speedups, dtype=float)
    grid = np.linspace(0.0, 1.0, AMDAHL_GRID_POINTS)[:, None]
    predicted = (grid + (1 - grid) / n0) / (grid + (1 - grid) / n)
    sse = ((predicted - measured) ** 2).sum(axis=1)
    best = int(sse.argmin())
    s = float(grid[best, 0])
    note = ""
    if best == AMDAHL_GRID_POINTS - 1 and (measured < 1).any():
        note = (
            "measured speedup falls below 1 (negative scaling), which Amdahl's law cannot "
            "represent; s is clipped to 1"
        )
    elif best == 0 and (measured > n / n0).any():
        note = "super-linear speedup measured; s is clipped to 0"
    return AmdahlFit(serial_fraction=s, rmse=float(np.sqrt(sse[best] / len(n))), note=note)


@dataclass
class ScalingPoint:
    run: Run
    world_size: int
    epoch_time_s: float
    speedup: float
    ideal_speedup: float
    efficiency: float
    karp_flatt: float | None
    compute_to_comm_ratio: float | None


@dataclass
class ScalingGroup:
    key: tuple[Any, ...]
    label: str
    runs: list[Run]
    baseline_world_size: int
    baseline_epoch_time_s: float
    points: list[ScalingPoint]
    amdahl: AmdahlFit | None
    baseline: list[Run] = field(default_factory=list)
    """The runs averaged into the baseline time (`choose_baseline`)."""
    baseline_note: str = ""

    @property
    def has_single_rank_baseline(self) -> bool:
        return self.baseline_world_size == 1

    @property
    def world_sizes(self) -> list[int]:
        return sorted({p.world_size for p in self.points})

    def baseline_runs(self) -> list[Run]:
        return list(self.baseline) or [
            r for r in self.runs if r.world_size == self.baseline_world_size
        ]

    def baseline_statement(self) -> str:
        n0 = self.baseline_world_size
        note = f" {self.baseline_note}" if self.baseline_note else ""
        if n0 == 1:
            runs = len(self.baseline_runs())
            what = "the 1-rank run" if runs == 1 else f"the mean of {runs} 1-rank runs"
            return f"Baseline: {what} (epoch time {self.baseline_epoch_time_s:.3g} s).{note}"
        return (
            f"Baseline: no timed 1-rank run in this group, so the smallest world size ({n0} ranks, "
            f"epoch time {self.baseline_epoch_time_s:.3g} s) is the baseline; speedups are "
            f"relative to it and the ideal speedup is n/{n0}.{note}"
        )


def cpu_threads_per_rank(summary: dict[str, Any]) -> float | None:
    """A CPU run's threads per rank, from its summary (its compute speed scales with them);
    None off CPU or when not recorded."""
    threads = (summary.get("system") or {}).get("num_threads_per_rank")
    if summary.get("device_type") != "cpu" or not is_number(threads) or threads <= 0:
        return None
    return float(threads)


def _has_epoch_time(run: Run) -> bool:
    t = run.epoch_time_s
    return t is not None and math.isfinite(t) and t > 0


def choose_baseline(at_n0: Sequence[Run]) -> tuple[list[Run], str]:
    """The runs at the smallest world size to average into the baseline, and a note when some
    were left out: CPU runs with other threads per rank did other work per rank, so only one
    layout is averaged, the fastest (speedups are then never inflated by a slow baseline)."""
    layouts: dict[float | None, list[Run]] = defaultdict(list)
    for run in at_n0:
        layouts[cpu_threads_per_rank(run.summary)].append(run)
    if len(layouts) == 1:
        return list(at_n0), ""

    def mean_time(runs: list[Run]) -> float:
        return sum(r.epoch_time_s for r in runs) / len(runs)  # type: ignore[misc]

    best = min(layouts, key=lambda t: (mean_time(layouts[t]), t is None, t or 0.0))
    left_out = sorted(r.name for t, runs in layouts.items() if t != best for r in runs)

    def layout(threads: float | None) -> str:
        return "threads not recorded" if threads is None else f"{threads:g} thread(s) per rank"

    return layouts[best], (
        f"Its ranks ran {layout(best)}, the fastest layout at this world size; "
        f"{', '.join(left_out)} ({', '.join(layout(t) for t in layouts if t != best)}) "
        "did other work per rank and are not averaged in."
    )


def compute_to_comm_ratio(run: Run) -> float | None:
    """R = compute_ms / allreduce_ms: how many all-reduces' worth of compute a step can hide."""
    ratio = run.comm_value("compute_to_comm_ratio")
    if ratio is None:
        compute, allreduce = run.comm_value("compute_ms"), run.comm_value("allreduce_ms")
        if compute is not None and allreduce:
            ratio = compute / allreduce
    return ratio


def analyse_group(runs: Sequence[Run]) -> ScalingGroup | None:
    """Scaling metrics for runs doing the same work; None if no run has an epoch time."""
    timed = [r for r in runs if _has_epoch_time(r)]  # NaN or 0 would poison every speedup
    if not timed:
        return None
    n0 = min(r.world_size for r in timed)
    # Repeated baseline runs are averaged so one noisy repeat does not skew every speedup.
    baseline, baseline_note = choose_baseline([r for r in timed if r.world_size == n0])
    untimed = sorted((r for r in runs if not _has_epoch_time(r)), key=lambda r: r.world_size)
    if untimed:
        left = ", ".join(
            f"{r.name} ({r.world_size} rank{'s' if r.world_size > 1 else ''})" for r in untimed
        )
        baseline_note = (
            f"{baseline_note} Left out of the scaling figures: {left}, without a finite "
            "epoch time (NaN or 0: no step was timed)."
        ).strip()
    t0 = sum(r.epoch_time_s for r in baseline) / len(baseline)  # type: ignore[misc]
    points = []
    for run in sorted(timed, key=lambda r: (r.world_size, r.name)):
        n = run.world_size
        speedup = t0 / run.epoch_time_s
        ideal = n / n0
        points.append(
            ScalingPoint(
                run=run,
                world_size=n,
                epoch_time_s=run.epoch_time_s,
                speedup=speedup,
                ideal_speedup=ideal,
                efficiency=speedup / ideal,
                karp_flatt=karp_flatt(speedup, ideal),
                compute_to_comm_ratio=compute_to_comm_ratio(run),
            )
        )
    amdahl = None
    if len({p.world_size for p in points}) >= 2:
        amdahl = fit_amdahl([p.world_size for p in points], [p.speedup for p in points], n0)
    return ScalingGroup(
        key=group_key(timed[0].summary),
        label=group_label(timed[0].summary),
        runs=list(runs),
        baseline_world_size=n0,
        baseline_epoch_time_s=t0,
        points=points,
        amdahl=amdahl,
        baseline=baseline,
        baseline_note=baseline_note,
    )


def analyse(runs: Sequence[Run]) -> list[ScalingGroup]:
    """Group runs by :func:`group_key` and compute scaling metrics for each group."""
    grouped: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        grouped[group_key(run.summary)].append(run)
    groups = [g for g in (analyse_group(members) for members in grouped.values()) if g]
    # Labels name groups in the report (and key its predictions): they must differ.
    counts = Counter(g.label for g in groups)
    for g in groups:
        if counts[g.label] > 1:
            g.label = group_label(g.runs[0].summary, detailed=True)
    seen: Counter[str] = Counter()
    for g in groups:  # what the detailed label still cannot tell apart gets a number
        seen[g.label] += 1
        if seen[g.label] > 1:
            g.label = f"{g.label} #{seen[g.label]}"
    return groups


def find_point(groups: Sequence[ScalingGroup], run: Run) -> ScalingPoint | None:
    """The scaling point of a run, if the run has one."""
    for group in groups:
        for point in group.points:
            if point.run is run:
                return point
    return None
