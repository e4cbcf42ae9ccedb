"""Write the performance report: CSV, LaTeX table, Markdown, text, self-contained HTML, LaTeX.

The report is built once as a list of blocks (headings, paragraphs, tables, figures, findings)
and rendered to each format, so every format says the same thing with the same numbers.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import re
import shutil
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.analysis.collect import AnalysisError, Run, load_runs
from scalelab.analysis.diagnose import PHASE_LABELS, Finding, diagnose, excess_breakdown
from scalelab.analysis.predict import (
    Comparison,
    NoBandwidthFit,
    Prediction,
    SyncLatency,
    bandwidth_from_run,
    comm_layout,
    commbench_caveats,
    compare,
    load_commbench,
    load_sync_latency,
    predict_scaling,
    same_layout,
)
from scalelab.analysis.scaling import ScalingGroup, analyse, cpu_threads_per_rank, find_point
from scalelab.config import is_number, not_a_folder

CSV_COLUMNS = [
    "run_name",
    "preset",
    "dataset",
    "world_size",
    "num_nodes",
    "global_batch",
    "per_rank_batch",
    "epoch_time_s",
    "samples_per_s",
    "speedup",
    "efficiency",
    "karp_flatt",
    "final_val_acc",
    "data_ms",
    "h2d_ms",
    "forward_ms",
    "backward_ms",
    "optimizer_ms",
    "step_ms",
    "exposed_comm_ms",
    "arrival_spread_ms",
    "allreduce_ms",
    "compute_to_comm_ratio",
    "predicted_step_ms",
    "prediction_error_pct",
]

COST_MODEL_TEXT = """\
T_ar(n)    = sum_b [ alpha + 2(n-1)/n * bytes_b / busbw ]              (ring all-reduce, per bucket b)
exposed(n) = t_last + max(0, T_ar - t_last - bwd(n)/k * (1 - 1/N_b))     (GPUs: DDP bucket overlap)
exposed(n) = T_ar                   (CPUs: nothing hidden; T_ar holds the after-compute extra)
step(n)    = (data + h2d + fwd + bwd)_1 / n + opt_1 + other_1 + exposed(n)
speedup(n) = step(1) / step(n),  efficiency(n) = speedup(n) / n"""

COST_MODEL_LATEX = r"""\begin{align*}
T_{\mathrm{ar}}(n) &= \sum_{b=1}^{N_b} \Big[\alpha + \frac{2(n-1)}{n}\,\frac{B_b}{\beta_{\mathrm{bus}}}\Big] \\
t_{\mathrm{exp}}(n) &= t_{\mathrm{last}} + \max\Big(0,\; T_{\mathrm{ar}}(n) - t_{\mathrm{last}} - \frac{t_{\mathrm{bwd}}(n)}{k}\Big(1 - \frac{1}{N_b}\Big)\Big) && \text{(GPUs)} \\
t_{\mathrm{exp}}(n) &= T_{\mathrm{ar}}(n) && \text{(CPUs)} \\
t_{\mathrm{step}}(n) &= \frac{t_{\mathrm{data}} + t_{\mathrm{h2d}} + t_{\mathrm{fwd}} + t_{\mathrm{bwd}}}{n} + t_{\mathrm{opt}} + t_{\mathrm{other}} + t_{\mathrm{exp}}(n) \\
S(n) &= t_{\mathrm{step}}(1) / t_{\mathrm{step}}(n), \qquad E(n) = S(n)/n
\end{align*}"""

FIGURE_CAPTIONS = {
    "epoch_time": "Mean epoch time vs world size.",
    "speedup": "Speedup vs world size with the ideal line, the Amdahl fit and the negative-scaling region.",
    "efficiency": "Parallel efficiency vs world size.",
    "throughput": "Training throughput vs world size.",
    "accuracy": "Validation accuracy per epoch for every run.",
    "time_breakdown": "Where the time of one optimizer step goes, per run.",
    "predicted_vs_measured": "Speedup predicted by the cost model vs measured.",
}


# ----------------------------------------------------------------------------- document model
@dataclass
class Heading:
    text: str
    level: int = 1


@dataclass
class Para:
    text: str


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[str]]
    label: str


@dataclass
class Figure:
    key: str
    path: Path
    caption: str


@dataclass
class Formula:
    text: str
    latex: str


@dataclass
class Findings:
    items: list[Finding] = field(default_factory=list)


Block = Heading | Para | Table | Figure | Formula | Findings


# ----------------------------------------------------------------------------- formatting
def _f(value: Any, digits: int = 3) -> str:
    """Number with `digits` significant digits; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    # from 10**(digits-1) on as a whole number: .3g would print 999.7 as 1e+03
    return f"{value:.{digits}g}" if abs(value) < 10 ** (digits - 1) else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _acc(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}%" if value > 1 else f"{100 * value:.1f}%"


# ----------------------------------------------------------------------------- analysis bundle
@dataclass
class Analysis:
    runs: list[Run]
    groups: list[ScalingGroup]
    predictions: dict[str, list[Prediction]]
    comparisons: list[Comparison]
    findings: list[Finding]
    bandwidth_notes: list[str]


def _prediction_sizes(group: ScalingGroup) -> list[int]:
    """Measured world sizes plus powers of two up to twice the largest (extrapolation), those
    that can split the global batch into whole micro-batches (the trainer refuses the others)."""
    top = max(8, 2 * max(group.world_sizes))
    powers = {2**k for k in range(top.bit_length()) if 2**k <= top}
    base = group.baseline_runs()[0].summary
    batch, accum = base.get("global_batch"), base.get("grad_accum_steps") or 1
    if isinstance(batch, int) and isinstance(accum, int) and batch > 0 and accum > 0:
        powers = {n for n in powers if batch % (n * accum) == 0}
    return sorted(set(group.world_sizes) | powers)


def _bandwidth(
    group: ScalingGroup,
    commbench: str | Path | None,
    busbw_gbps: float | None,
    alpha_ms: float | None,
) -> tuple[float, float, str, Run | None] | None:
    """(alpha_ms, busbw_gbps, source, the run it was read from or None): user value > commbench
    file > the group's own measurement."""
    if busbw_gbps is not None:
        return max(0.0, alpha_ms or 0.0), busbw_gbps, "given by the user", None
    if commbench is not None:
        alpha, busbw, n = load_commbench(commbench)
        source = f"commbench fit ({Path(commbench).name}, {n} ranks)"
        mismatch, scope = commbench_caveats(
            commbench, group.baseline_runs()[0], _prediction_sizes(group)
        )
        if mismatch:
            warnings.warn(f"{group.label}: {mismatch}", stacklevel=1)
            source += f" - warning: {mismatch}"
        return alpha, busbw, source + (f" ({scope})" if scope else ""), None
    for run in sorted(group.runs, key=lambda r: r.world_size):
        measured = bandwidth_from_run(run)
        if measured is not None:
            return (
                *measured,
                f"implied by the measured bucket all-reduce time of run {run.name} "
                f"({run.world_size} ranks; alpha folded into the bandwidth), so the check "
                f"against {run.name} tests the compute terms only (marked *); "
                "scalelab commbench measures an independent bandwidth",
                run,
            )
    return None


def _thread_layouts(group: ScalingGroup) -> list[dict[int, float]]:
    """CPU groups: threads per rank of the measured runs at each world size, as maps for
    `predict_scaling` (a second map for world sizes measured with a second thread count, and so
    on), so each prediction is checked against a run with the threads it assumes. [{}] off CPU."""
    seen: dict[int, list[float]] = {}
    for run in group.runs:
        threads = cpu_threads_per_rank(run.summary)
        if threads is not None and threads not in seen.setdefault(run.world_size, []):
            seen[run.world_size].append(threads)
    layouts: list[dict[int, float]] = [{}]
    for n, options in sorted(seen.items()):
        for i, threads in enumerate(sorted(options)):
            if i == len(layouts):
                layouts.append({})
            layouts[i][n] = threads
    return [layouts[0], *(m for m in layouts[1:] if m)]


def _unlike_traffic_note(group: ScalingGroup, base: dict[str, Any]) -> str:
    """Runs of the group whose gradients crossed the wire otherwise than the base run's (another
    grad_sync, embedding_grad_sync or volume): `compare` leaves them unchecked; say so."""
    layout = comm_layout(base)
    unlike = [
        r.name
        for r in sorted(group.runs, key=lambda r: (r.world_size, r.name))
        if r.world_size > 1 and not same_layout(layout, comm_layout(r.summary))
    ]
    if not unlike:
        return ""
    return (
        f" Not checked against the predictions: {', '.join(unlike)}, whose gradients crossed "
        "the wire otherwise than the base run's (distributed.grad_sync, embedding_grad_sync or "
        "bytes per step), which the predictions price."
    )


def _oversubscribed_note(base: dict[str, Any], preds: Sequence[Prediction]) -> str:
    """CPU predictions whose ranks x threads exceed the base run's CPUs (as `scalelab predict`
    warns): there the ranks would time-slice, which the model leaves out."""
    busy = oversubscribed(base, preds)
    if not busy:
        return ""
    layouts = ", ".join(f"{p.world_size} x {p.threads_per_rank:g}" for p, _ in busy)
    cpus = busy[0][1]
    return (
        f" Optimistic at {layouts} (ranks x threads): more busy threads than the base run's "
        f"{cpus:g} CPUs, whose time-slicing the model leaves out."
    )


def _overlap_note(group: ScalingGroup) -> str:
    """On CPU the cost model assumes no overlap: set it beside what the group's runs measured."""
    base = group.baseline_runs()[0]
    if base.summary.get("device_type") != "cpu":
        return ""
    measured = [
        f"{r.name} {100 * o:.0f} %"
        for r in sorted(group.runs, key=lambda r: (r.world_size, r.name))
        if r.world_size > 1 and (o := r.comm_value("overlap_fraction")) is not None
    ]
    seen = f"; measured by this group's runs: {', '.join(measured)}" if measured else ""
    return f" Overlap of all-reduce and backward assumed 0 (CPU){seen}."


def _after_compute_note(sync: SyncLatency) -> str:
    """The commbench's after-compute all-reduce times (each size's mean; older files: the
    4-byte median), as the prediction notes give them."""

    def size(b: float) -> str:  # binary units, as commbench prints them (KiB, MiB)
        for unit in ("B", "KiB", "MiB"):
            if b < 1024:
                return f"{b:g} {unit}"
            b /= 1024
        return f"{b:g} GiB"

    sizes = ", ".join(f"{size(b)} {t:.3g} ms" for b, t in sorted(sync.points))
    return f"all-reduce after compute (CPU runs) {sizes}"


def analyse_runs(
    runs: Sequence[Run],
    *,
    commbench: str | Path | None = None,
    busbw_gbps: float | None = None,
    alpha_ms: float | None = None,
) -> Analysis:
    """Scaling groups, predictions (where a 1-rank run and a bandwidth exist) and findings."""
    groups = analyse(runs)
    predictions: dict[str, list[Prediction]] = {}
    notes = []
    # only with the commbench's own alpha: a user's --alpha-ms is taken as given
    sync = load_sync_latency(commbench) if commbench and busbw_gbps is None else None
    bandwidth_runs: list[Run] = []  # runs whose own all-reduce time set their group's bandwidth
    for group in groups:
        if not group.has_single_rank_baseline:
            notes.append(f"{group.label}: no prediction (the cost model needs a 1-rank run).")
            continue
        try:
            bandwidth = _bandwidth(group, commbench, busbw_gbps, alpha_ms)
        except NoBandwidthFit as exc:  # a valid but noisy sweep: the rest of the report stands
            notes.append(f"{group.label}: no prediction ({exc}).")
            continue
        if bandwidth is None:
            notes.append(
                f"{group.label}: no prediction (no commbench file, no --busbw-gbps and no "
                "multi-rank run with a measured all-reduce time)."
            )
            continue
        alpha, busbw, source, source_run = bandwidth
        if source_run is not None:
            bandwidth_runs.append(source_run)
        # the baseline's repeats, averaged as for the measured speedups
        base = [r.summary for r in group.baseline_runs()]
        try:
            layouts = _thread_layouts(group)
            preds = []
            for i, threads in enumerate(layouts):
                sizes = _prediction_sizes(group) if i == 0 else sorted(threads)
                preds += predict_scaling(
                    base,
                    sizes,
                    busbw_gbps=busbw,
                    alpha_ms=alpha,
                    sync_latency=sync,
                    threads_per_rank=threads,
                )
            predictions[group.label] = sorted(
                preds, key=lambda p: (p.world_size, p.threads_per_rank or 0.0)
            )
        except AnalysisError as exc:
            notes.append(f"{group.label}: no prediction ({exc}).")
            continue
        wake = f", {_after_compute_note(sync)}" if sync else ""
        notes.append(
            f"{group.label}: bus bandwidth {busbw:.3g} GB/s, alpha {alpha:.3g} ms{wake}, {source}."
            + _overlap_note(group)
            + _unlike_traffic_note(group, base[0])
            + _oversubscribed_note(base[0], predictions[group.label])
        )
    all_predictions = [p for preds in predictions.values() for p in preds]
    comparisons = compare(all_predictions, runs)
    for c in comparisons:
        c.sets_bandwidth = any(c.run is r for r in bandwidth_runs)
    return Analysis(
        runs=list(runs),
        groups=groups,
        predictions=predictions,
        comparisons=comparisons,
        findings=diagnose(runs, all_predictions),
        bandwidth_notes=notes,
    )


# ----------------------------------------------------------------------------- tables
def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula (=, +, -, @,
    tab, CR; e.g. a run named "=cmd|..") gets a leading apostrophe. Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _compared(groups: Sequence[ScalingGroup], point: Any) -> bool:
    """Whether the point's group holds another world size to compare it with."""
    group = next(g for g in groups if any(p is point for p in g.points))
    return len({p.world_size for p in group.points}) > 1


def csv_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per run with the columns of comprehensive_summary.csv."""
    # by the run itself: sweeps name their runs <preset>-ws<n>, so names repeat across sweeps
    by_run = {id(c.run): c for c in analysis.comparisons}
    rows = []
    # by world size, not folder name (ws10 would come before ws2)
    for run in sorted(analysis.runs, key=lambda r: (r.preset, r.world_size, r.name)):
        point = find_point(analysis.groups, run)
        # a run compared with none (alone at its world size in its group, as each run of a
        # weak-scaling sweep is): no speedup, not 1x against itself
        scaled = point if point and _compared(analysis.groups, point) else None
        cmp = by_run.get(id(run))
        s = run.summary
        rows.append(
            {
                "run_name": run.name,
                "preset": run.preset,
                "dataset": s.get("dataset"),
                "world_size": run.world_size,
                "num_nodes": s.get("num_nodes"),
                "global_batch": s.get("global_batch"),
                "per_rank_batch": s.get("per_rank_batch"),
                "epoch_time_s": run.epoch_time_s,
                "samples_per_s": s.get("samples_per_s"),
                "speedup": scaled.speedup if scaled else None,
                "efficiency": scaled.efficiency if scaled else None,
                "karp_flatt": scaled.karp_flatt if scaled else None,
                "final_val_acc": s.get("final_val_acc"),
                **{
                    k: run.phase(k)
                    for k in (
                        "data_ms",
                        "h2d_ms",
                        "forward_ms",
                        "backward_ms",
                        "optimizer_ms",
                        "step_ms",
                    )
                },
                "exposed_comm_ms": run.comm_value("exposed_comm_ms"),
                "arrival_spread_ms": _arrival_spread(run),
                "allreduce_ms": run.comm_value("allreduce_ms"),
                "compute_to_comm_ratio": point.compute_to_comm_ratio if point else None,
                "predicted_step_ms": cmp.predicted_step_ms if cmp else None,
                "prediction_error_pct": cmp.error_pct if cmp else None,
            }
        )
    return rows


def _summary_table(analysis: Analysis) -> Table:
    rows = []
    for row in csv_rows(analysis):
        rows.append(
            [
                row["run_name"],
                str(row["world_size"]),
                _f(row["epoch_time_s"]),
                _f(row["samples_per_s"]),
                _f(row["speedup"]),
                _pct(row["efficiency"]),
                _acc(row["final_val_acc"]),
                _f(row["step_ms"]),
                _f(row["exposed_comm_ms"]),
            ]
        )
    return Table(
        "Summary of all runs (times per optimizer step in ms).",
        [
            "run",
            "ranks",
            "epoch (s)",
            "samples/s",
            "speedup",
            "efficiency",
            "val acc",
            "step (ms)",
            "exposed comm (ms)",
        ],
        rows,
        "tab:summary",
    )


def _setup_table(runs: Sequence[Run]) -> Table:
    rows = []
    for r in sorted(runs, key=lambda r: (r.preset, r.world_size, r.name)):
        s = r.summary
        rows.append(
            [
                r.name,
                r.preset,
                str(s.get("dataset")),
                str(s.get("model_arch")),
                _f(s.get("num_params")),
                str(r.world_size),
                str(s.get("num_nodes", "-")),
                f"{s.get('device_type')} ({s.get('backend')})",
                f"{s.get('global_batch')} / {s.get('per_rank_batch')}",
                str(s.get("precision")),
                str(s.get("num_epochs")),
            ]
        )
    return Table(
        "Runs analysed.",
        [
            "run",
            "preset",
            "dataset",
            "model",
            "params",
            "ranks",
            "nodes",
            "device (backend)",
            "batch global / rank",
            "precision",
            "epochs",
        ],
        rows,
        "tab:runs",
    )


def _scaling_table(group: ScalingGroup, index: int) -> Table:
    rows = [
        [
            str(p.world_size),
            p.run.name,
            _f(p.epoch_time_s),
            _f(p.run.summary.get("samples_per_s")),
            f"{p.speedup:.2f}",
            _f(p.ideal_speedup),
            _pct(p.efficiency),
            _f(p.karp_flatt),
            _f(p.compute_to_comm_ratio),
            _acc(p.run.summary.get("final_val_acc")),
        ]
        for p in group.points
    ]
    return Table(
        f"Scaling of {group.label}: speedup and efficiency per world size.",
        [
            "ranks",
            "run",
            "epoch (s)",
            "samples/s",
            "speedup",
            "ideal",
            "efficiency",
            "Karp-Flatt e",
            "R = compute/comm",
            "val acc",
        ],
        rows,
        f"tab:scaling{index}",
    )


# phase -> column header of the lost-efficiency table, in the order a reader checks them
_LOST_COLUMNS = {
    "exposed_comm_ms": "exposed comm", "optimizer_ms": "optimizer", "forward_ms": "forward",
    "backward_ms": "backward compute", "data_ms": "data", "h2d_ms": "h2d", "other_ms": "other",
}  # fmt: skip


def _lost_cell(breakdown: dict[str, tuple[float, float]], key: str) -> str:
    """A phase's excess over its ideal; without a measured exposed communication the
    backward cell holds both (marked) and the exposed cell is "-"."""
    if key == "backward_ms" and "backward_incl_comm_ms" in breakdown:
        measured, ideal = breakdown["backward_incl_comm_ms"]
        return f"{measured - ideal:+.2f} (incl. comm)"
    if key not in breakdown:
        return "-"
    measured, ideal = breakdown[key]
    return f"{measured - ideal:+.2f}"


def _lost_efficiency_table(groups: Sequence[ScalingGroup]) -> Table | None:
    """Per multi-rank run: step vs ideal and each phase's excess over its ideal (ms per step)."""
    rows = []
    for group in groups:
        for point in group.points:
            if point.world_size == group.baseline_world_size:
                continue
            breakdown = excess_breakdown(group, point)
            if breakdown is None:
                continue
            ideal = sum(i for _, i in breakdown.values())
            measured = point.run.phase("step_ms")
            rows.append(
                [
                    point.run.name,
                    str(point.world_size),
                    _f(ideal),
                    _f(measured),
                    _f(measured - ideal),
                    *(_lost_cell(breakdown, k) for k in _LOST_COLUMNS),
                ]
            )
    if not rows:
        return None
    return Table(
        "Where the efficiency went: excess over the linear-scaling ideal per optimizer step (ms).",
        [
            "run",
            "ranks",
            "ideal step",
            "step",
            "excess",
            *_LOST_COLUMNS.values(),
        ],
        rows,
        "tab:lost",
    )


def _largest_losses(groups: Sequence[ScalingGroup]) -> str | None:
    """One sentence per multi-rank run: the phase with the largest excess over its ideal and its
    share of the step's excess (what a reader of the table above would look for first)."""
    parts = []
    for group in groups:
        for point in group.points:
            if point.world_size == group.baseline_world_size:
                continue
            breakdown = excess_breakdown(group, point)
            if breakdown is None:
                continue
            excess = {k: m - i for k, (m, i) in breakdown.items()}
            # against what the phases that grew added (one that shrank must not push a share
            # past 100 %); the step's net excess is said beside it
            grown = sum(v for v in excess.values() if v > 0)
            key = max(excess, key=excess.get)
            if grown <= 0:
                continue
            parts.append(
                f"{point.run.name} ({point.world_size} ranks, efficiency {point.efficiency:.0%}): "
                f"{PHASE_LABELS[key]}, {excess[key]:+.2f} ms, {excess[key] / grown:.0%} of what "
                f"the phases grew by (step excess {sum(excess.values()):.2f} ms)"
            )
    return "Largest loss per run: " + "; ".join(parts) + "." if parts else None


def _arrival_spread(run: Run) -> float | None:
    """The run's arrival_spread_ms; None (not 0) for one rank, which has no peer to wait for."""
    return run.phase("arrival_spread_ms") if run.world_size > 1 else None


def _breakdown_table(runs: Sequence[Run]) -> Table:
    rows = []
    for r in sorted(runs, key=lambda r: (r.preset, r.world_size, r.name)):
        phases = [
            r.phase(k) for k in ("data_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")
        ]
        step = r.phase("step_ms")
        other = None if step is None else max(0.0, step - sum(p or 0.0 for p in phases))
        rows.append(
            [
                r.name,
                str(r.world_size),
                *(_f(p) for p in phases),
                _f(other),
                _f(step),
                _f(r.phase("forward_ms_max")),
                _f(r.comm_value("exposed_comm_ms")),
                _f(_arrival_spread(r)),
                _f(r.comm_value("allreduce_ms")),
                _pct(r.comm_value("overlap_fraction")),
            ]
        )
    return Table(
        "Where the time goes: mean time per optimizer step (ms); backward includes the exposed "
        "all-reduce; slowest forward is the slowest rank's (no collective runs in the forward, so "
        "a straggler shows there, while DDP makes every rank's step equally long); arrival spread "
        "is how late the last rank reached the step's first collective after the ranks' mean "
        "(the others wait that long in it).",
        [
            "run",
            "ranks",
            "data",
            "h2d",
            "forward",
            "backward",
            "optimizer",
            "other",
            "step",
            "slowest forward",
            "exposed comm",
            "arrival spread",
            "all-reduce",
            "overlap",
        ],
        rows,
        "tab:breakdown",
    )


def _prediction_table(
    label: str, preds: Sequence[Prediction], comparisons: Sequence[Comparison], index: int
) -> Table:
    rows = []
    for p in preds:
        # one row per measured run the prediction is checked against (repeats included)
        for c in [c for c in comparisons if c.prediction is p] or [None]:
            ranks = str(p.world_size)
            if p.threads_per_rank is not None:  # CPU: ranks x threads per rank
                ranks += f" x {p.threads_per_rank:g}"
            rows.append(
                [
                    ranks,
                    (c.run_name + (" *" if c.sets_bandwidth else "")) if c else "-",
                    _f(p.step_ms),
                    _f(c.measured_step_ms) if c else "-",
                    f"{c.error_pct:+.1f}%" if c else "-",
                    _f(p.compute_ms),
                    _f(p.comm_ms),
                    _f(p.exposed_comm_ms),
                    f"{p.speedup:.2f}",
                    _pct(p.efficiency),
                ]
            )
    return Table(
        f"Predicted vs measured step time for {label} (ms per optimizer step; on CPU, ranks x "
        "threads per rank)."
        + (
            " *: the run whose measured all-reduce time set the bandwidth; its error checks the "
            "compute terms only."
            if any(c.sets_bandwidth for c in comparisons if any(c.prediction is p for p in preds))
            else ""
        ),
        [
            "ranks",
            "measured run",
            "predicted step",
            "measured step",
            "error",
            "compute",
            "all-reduce T_ar",
            "exposed",
            "pred. speedup",
            "pred. efficiency",
        ],
        rows,
        f"tab:prediction{index}",
    )


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """Plain-text table for `scalelab predict` (CPU runs: with the threads per rank assumed)."""
    cpu = any(p.threads_per_rank is not None for p in predictions)
    head = ["world size", *(["threads/rank"] if cpu else [])]
    table = Table(
        "",
        [*head, "step (ms)", "comm T_ar (ms)", "exposed (ms)", "speedup", "efficiency"],
        [
            [
                str(p.world_size),
                *([f"{p.threads_per_rank or 0:g}"] if cpu else []),
                f"{p.step_ms:.2f}",
                f"{p.comm_ms:.2f}",
                f"{p.exposed_comm_ms:.2f}",
                f"{p.speedup:.2f}",
                f"{100 * p.efficiency:.1f}%",
            ]
            for p in predictions
        ],
        "",
    )
    return _text_table(table)


def cpu_prediction_notes(
    summary_1rank: dict[str, Any], predictions: Sequence[Prediction], *, given: bool
) -> list[str]:
    """What `scalelab predict` assumed for a CPU base run: a note on the threads per rank, and a
    warning (a line starting "warning:") for each world size whose ranks x threads exceed the CPUs
    the base run had: on that host they would time-slice, which the model does not price in."""
    base = cpu_threads_per_rank(summary_1rank)
    if base is None:
        return []
    assumed = sorted({p.threads_per_rank for p in predictions if p.threads_per_rank is not None})
    threads = ", ".join(f"{t:g}" for t in assumed)
    source = (
        f"{threads} (--threads-per-rank) against the base run's {base:g}"
        if given
        else f"{threads} as in the base run (--threads-per-rank to change)"
    )
    lines = [
        f"CPU: forward, backward and h2d scaled by the threads per rank, {source}; the "
        "optimizer and data phases are not scaled."
    ]
    for p, cpus in oversubscribed(summary_1rank, predictions):
        busy = p.world_size * (p.threads_per_rank or 0)
        lines.append(
            f"warning: {p.world_size} ranks x {p.threads_per_rank:g} thread(s) = {busy:g} "
            f"busy threads, more than the base run's {cpus:g} CPUs: ranks sharing such "
            "a host time-slice, which the model leaves out (the prediction is "
            "optimistic there); --threads-per-rank sets the threads"
        )
    return lines


def oversubscribed(
    summary_1rank: dict[str, Any], predictions: Sequence[Prediction]
) -> list[tuple[Prediction, float]]:
    """(prediction, the base run's CPUs) for each CPU prediction whose ranks x threads per rank
    exceed the CPUs the base run had."""
    cpus = (summary_1rank.get("system") or {}).get("num_cpus")
    if not (is_number(cpus) and cpus > 0):
        return []
    return [
        (p, float(cpus)) for p in predictions if p.world_size * (p.threads_per_rank or 0) > cpus
    ]


# ----------------------------------------------------------------------------- document
def _unique(runs: Sequence[Run], getter: Any) -> str:
    values = sorted({str(getter(r)) for r in runs if getter(r) not in (None, "")})
    return ", ".join(values) if values else "unknown"


#: How scalelab before 2026-12-07 recorded its calibration (`comm.method`): the synchronised
#: step first in every pair, so a pair's second step, which runs warmer, was always the no_sync
#: one, and the figure read high (README, "Measured results")
OLD_CALIBRATION = "median(fwd+bwd with DDP sync) - median(fwd+bwd under no_sync)"


def _old_calibration_note(runs: Sequence[Run]) -> str:
    old = sorted(
        r.name
        for r in runs
        if r.world_size > 1 and OLD_CALIBRATION in str(r.comm.get("method") or "")
    )
    if not old:
        return ""
    return (
        f" The exposed communication of {', '.join(old)} comes from the calibration of scalelab "
        "before 2026-12-07, which ran the synchronised step first in every pair (a pair's second "
        "step runs warmer) and reads it high: train them again to measure it."
    )


def _config_changes_note(runs: Sequence[Run]) -> str:
    """Runs a resume trained on with other settings of how the steps run (summary.json's
    config_changes): their timings mix the settings before and after."""
    parts = []
    for run in sorted(runs, key=lambda r: r.name):
        changes = run.summary.get("config_changes")
        if not isinstance(changes, list):
            continue
        said = [
            f"{c.get('key')} {c.get('before')}, then {c.get('after')} from epoch {c.get('epoch')}"
            + (f" step {c['step']}" if c.get("step") else "")
            for c in changes
            if isinstance(c, dict)
        ]
        if said:
            parts.append(f"{run.name} ({'; '.join(said)})")
    if not parts:
        return ""
    return (
        f" Resumed with other settings: {', '.join(parts)}; the steps before each change were "
        "timed with the old value, so these runs' timings mix both: train them again unchanged "
        "to compare them."
    )


def _method_text(runs: Sequence[Run]) -> str:
    warmup = _unique(runs, lambda r: r.timing.get("warmup_steps"))
    methods = _unique(runs, lambda r: r.comm.get("method") if r.world_size > 1 else None)
    return (
        "Every rank times each optimizer step with phase timers (data wait, host-to-device copy, "
        "forward, backward, optimizer; on CUDA these are events on the GPU timeline, read once per "
        "epoch, so data wait is time the GPU waited for its input) and excludes the first "
        f"{warmup} steps as warm-up (the first of each invocation: a resumed run warms up again; "
        "and the whole first epoch when there are several). A phase time is the mean over steps, "
        "then over ranks; the _max columns keep the slowest rank. Under DDP the backward time "
        "includes the part of the gradient all-reduce that is not hidden behind computation. "
        "After training, communication is calibrated: each of a few batches is timed once with "
        "gradient synchronisation and once under no_sync, the order alternating from batch to "
        "batch, and the mean difference is the exposed communication, except where the steps "
        "summed every gradient in one all-reduce after the backward (grad_sync=fused, gloo): "
        "there the steps timed that all-reduce themselves, and its mean over the steps is the "
        "exposed communication. Then every gradient bucket is all-reduced once, back to back, "
        "to measure the total all-reduce time T_ar (overlap = 1 - exposed / T_ar, "
        f"R = compute / T_ar; method recorded by the runs: {methods}). Speedup is the baseline's mean "
        "epoch time (first epoch excluded when there are several) divided by the run's mean epoch "
        "time. The global batch is fixed across world sizes (strong scaling), and runs are only "
        "compared within a group of the same preset, data, model size, global batch, steps per "
        "epoch, micro-batching, padding, precision, compile mode, comm hook and device, so the runs "
        "of a group perform the same optimizer steps per epoch."
        + _old_calibration_note(runs)
        + _config_changes_note(runs)
    )


def _grad_mb(run: Run) -> str | None:
    grad = run.comm.get("grad_bytes")
    return None if grad is None else f"{grad / 1e6:.3g}"


def _setup_text(runs: Sequence[Run]) -> str:
    return (
        f"Device: {_unique(runs, lambda r: r.summary.get('device_name'))} "
        f"({_unique(runs, lambda r: r.summary.get('device_type'))}, "
        f"{_unique(runs, lambda r: r.summary.get('device_count'))} per node); "
        f"hosts: {_unique(runs, lambda r: r.system.get('hostname'))} with "
        f"{_unique(runs, lambda r: r.system.get('num_cpus'))} CPUs; "
        f"PyTorch {_unique(runs, lambda r: r.summary.get('torch_version'))}; "
        f"backends: {_unique(runs, lambda r: r.summary.get('backend'))}; "
        f"gradient MB all-reduced per step: {_unique(runs, _grad_mb)}; "
        "token-embedding gradient summed as: "
        f"{_unique(runs, lambda r: r.comm.get('embedding_grad_sync'))} (rows = only the rows a "
        "global batch used; dense = the whole vocab_size x d_model matrix); "
        f"git commit: {_unique(runs, lambda r: r.summary.get('git_commit'))}."
    )


def _amdahl_text(group: ScalingGroup) -> str:
    if group.amdahl is None:
        return "Amdahl fit: needs at least two world sizes."
    a = group.amdahl
    kf = ", ".join(
        f"{p.world_size} ranks: {p.karp_flatt:.3f}"
        for p in group.points
        if p.karp_flatt is not None
    )
    n0 = group.baseline_world_size
    s = a.serial_fraction
    # Amdahl's T(n) = s + (1-s)/n, so relative to the n0-rank baseline S(inf) = (s + (1-s)/n0)/s
    limit = (
        f"an upper bound on speedup of {(s + (1 - s) / n0) / s:.3g}x"
        + (f" over the {n0}-rank baseline" if n0 > 1 else "")
        if s > 0
        else "no speedup limit"
    )
    note = f" Note: {a.note}." if a.note else ""
    units = (
        f" (n counted in units of the {n0}-rank baseline, i.e. n/{n0} ranks, so e is on another "
        "scale than s)"
        if n0 > 1
        else ""
    )
    return (
        f"Amdahl fit: serial fraction s = {s:.4f} (RMS error {a.rmse:.3f}), i.e. {limit}."
        f"{note} Karp-Flatt serial fraction e(n) = (1/S - 1/n)/(1 - 1/n){units}: {kf}. An e(n) "
        "that grows with n means overhead that grows with the number of ranks (communication, "
        "synchronisation), a constant e(n) means a fixed serial part."
    )


def build_document(analysis: Analysis, figures: dict[str, Path]) -> list[Block]:
    """The report as format-independent blocks."""
    runs, groups = analysis.runs, analysis.groups
    presets = sorted({r.preset for r in runs})
    sizes = sorted({r.world_size for r in runs})
    doc: list[Block] = [
        Para(
            f"{len(runs)} run(s) of preset(s) {', '.join(presets)} at world size(s) "
            f"{', '.join(map(str, sizes))}, in {len(groups)} scaling group(s) (runs doing the same work: "
            "same preset, dataset, model, global batch, precision and training set)."
        ),
        Heading("Setup"),
        Para(_setup_text(runs)),
        _setup_table(runs),
        Heading("Method of measurement"),
        Para(_method_text(runs)),
        Heading("Results"),
        _summary_table(analysis),
    ]
    for i, group in enumerate(groups):
        doc += [
            Heading(f"Scaling: {group.label}", 2),
            Para(group.baseline_statement()),
            _scaling_table(group, i),
            Para(_amdahl_text(group)),
        ]
    doc += [Heading("Where the time goes", 2), _breakdown_table(runs)]
    lost = _lost_efficiency_table(groups)
    if lost is not None:
        doc += [
            Para(
                "Where the efficiency went: each phase at n ranks against its ideal, the baseline's "
                "time for that phase x n0/n (perfect linear scaling; exposed communication, split out "
                "of backward, is ideally 0). The excess of the step over its ideal is the sum of the "
                "columns; the largest entries are what kept n ranks from n times the speed."
            ),
            lost,
        ]
        losses = _largest_losses(groups)
        if losses:
            doc.append(Para(losses))
    doc += [
        Figure(k, figures[k], FIGURE_CAPTIONS[k]) for k in figures if k != "predicted_vs_measured"
    ]
    doc += [Heading("Diagnosis"), Findings(analysis.findings)]
    doc += [
        Heading("Cost model for prediction"),
        Para(
            "The global batch is fixed, so the per-rank batch shrinks as 1/n: data, host-to-device, "
            "forward and backward time of the 1-rank run are divided by n (except the sleep of "
            "data.delay_per_batch_s, a simulated slow loader, which stays); the optimizer step does not "
            "shrink (every rank updates all parameters); host time between steps is part of data, so it "
            "is divided by n too (other, the step's un-timed rest, is 0 for scalelab's runs). The gradient buckets are all-reduced with a ring (alpha-beta model, nccl-tests "
            "bus bandwidth, GB = 1e9 bytes; an fp16/bf16 comm hook halves the bytes of DDP's buckets, "
            "PowerSGD runs are not predicted); on GPUs DDP overlaps every bucket but the last with the backward of "
            "the remaining layers (k = gradient accumulation steps, N_b = number of buckets); on CPUs "
            "the model assumes nothing is hidden (exposed = T_ar: gloo's all-reduce needs the cores the "
            "compute keeps busy; the notes below set this beside the overlap the runs measured), and "
            "a step's first collective, reached straight from compute, costs what the "
            "commbench measured after compute L(b) instead of its back-to-back time (T_ar += "
            "max(0, L(b) - alpha - 2(n-1)/n * b / busbw) for the first all-reduce's b bytes, L "
            "interpolated between the measured sizes, when the commbench file records L). On CPUs a rank's compute also follows its "
            "threads: h2d, forward and backward are multiplied by t_1/t_n, the base run's threads "
            "per rank over those of the run the prediction is checked against (perfect thread "
            "scaling; the optimizer and data phases are not scaled). Speedup "
            "is step(1)/step(n) because every world size runs the same number of steps per epoch."
        ),
        Formula(COST_MODEL_TEXT, COST_MODEL_LATEX),
        *[Para(note) for note in analysis.bandwidth_notes],
    ]
    for i, (label, preds) in enumerate(analysis.predictions.items()):
        doc.append(_prediction_table(label, preds, analysis.comparisons, i))
    if "predicted_vs_measured" in figures:
        doc.append(
            Figure(
                "predicted_vs_measured",
                figures["predicted_vs_measured"],
                FIGURE_CAPTIONS["predicted_vs_measured"],
            )
        )
    return doc


# ----------------------------------------------------------------------------- renderers
def _text_table(table: Table) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in table.rows)) if table.rows else len(h)
        for i, h in enumerate(table.headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=True))
    out = [line, "-" * len(line)]
    out += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table.rows
    ]
    return "\n".join(out)


def _finding_lines(f: Finding) -> tuple[str, str, str]:
    subject = f" ({f.subject})" if f.subject else ""
    return (
        f"[{f.severity.upper()}] {f.title}{subject}",
        f"Evidence: {f.evidence}",
        f"Recommendation: {f.recommendation}",
    )


def render_text(doc: Sequence[Block], title: str) -> str:
    out = [title, "=" * len(title), ""]
    for block in doc:
        if isinstance(block, Heading):
            out += [block.text, ("=" if block.level == 1 else "-") * len(block.text), ""]
        elif isinstance(block, Para):
            out += [block.text, ""]
        elif isinstance(block, Table):
            out += [block.caption, _text_table(block), ""]
        elif isinstance(block, Figure):
            out += [f"Figure: {block.path.name} - {block.caption}", ""]
        elif isinstance(block, Formula):
            out += [block.text, ""]
        elif isinstance(block, Findings):
            if not block.items:
                out += ["No problems detected: no diagnosis rule fired.", ""]
            for f in block.items:
                head, evidence, rec = _finding_lines(f)
                out += [head, "  " + evidence, "  " + rec, ""]
    return "\n".join(out)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def _md_text(text: str) -> str:
    """Literal text in Markdown: run, preset and device names may hold markup characters or
    HTML (a '<script>' in a name must not become a tag, a newline must not split a table row)."""
    text = " ".join(str(text).splitlines())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(doc: Sequence[Block], title: str) -> str:
    out = [f"# {title}", ""]
    for block in doc:
        if isinstance(block, Heading):
            out += [f"{'#' * (block.level + 1)} {_md_text(block.text)}", ""]
        elif isinstance(block, Para):  # plain text that holds names: no markup of its own
            out += [_md_text(block.text), ""]
        elif isinstance(block, Table):
            out += [
                f"*{_md_text(block.caption)}*",
                "",
                "| " + " | ".join(_md_text(h) for h in block.headers) + " |",
                "|" + "|".join("---" for _ in block.headers) + "|",
            ]
            out += ["| " + " | ".join(_md_text(c) for c in row) + " |" for row in block.rows] + [""]
        elif isinstance(block, Figure):
            out += [f"![{block.caption}]({block.path.name})", ""]
        elif isinstance(block, Formula):
            out += ["```", block.text, "```", ""]
        elif isinstance(block, Findings):
            if not block.items:
                out += ["No problems detected: no diagnosis rule fired.", ""]
            for f in block.items:
                head, evidence, rec = (_md_text(t) for t in _finding_lines(f))
                out += [f"- **{head}**", f"  - {evidence}", f"  - {rec}"]
            out.append("")
    return "\n".join(out)


HTML_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.85em}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:.3em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-style:italic;font-size:.9em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
.finding{border-left:5px solid #999;padding:.4em .8em;margin:.6em 0;background:#fafafa}
.critical{border-color:#c62828}.warning{border-color:#ef6c00}.info{border-color:#1565c0}
.sev{font-weight:bold;text-transform:uppercase;font-size:.8em}
"""


def render_html(doc: Sequence[Block], title: str) -> str:
    """One self-contained page: inline CSS, figures as base64 data URIs, no external references."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for block in doc:
        if isinstance(block, Heading):
            out.append(f"<h{block.level + 1}>{e(block.text)}</h{block.level + 1}>")
        elif isinstance(block, Para):
            out.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, Table):
            out.append(
                f"<table><caption>{e(block.caption)}</caption><tr>"
                + "".join(f"<th>{e(h)}</th>" for h in block.headers)
                + "</tr>"
            )
            out += [
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows
            ]
            out.append("</table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{e(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Formula):
            out.append(f"<pre>{e(block.text)}</pre>")
        elif isinstance(block, Findings):
            if not block.items:
                out.append("<p>No problems detected: no diagnosis rule fired.</p>")
            for f in block.items:
                subject = f" <small>({e(f.subject)})</small>" if f.subject else ""
                out.append(
                    f'<div class="finding {e(f.severity)}"><span class="sev">{e(f.severity)}</span> '
                    f"<strong>{e(f.title)}</strong>{subject}<br><em>Evidence:</em> {e(f.evidence)}"
                    f"<br><em>Recommendation:</em> {e(f.recommendation)}</div>"
                )
    out.append("</body></html>")
    return "\n".join(out)


_TEX_SPECIAL = {
    # Math-mode forms avoid TS1 (textcomp) glyphs, which pdflatex would render as bitmap fonts
    # generated on the fly (slow, and fails on read-only TeX installations).
    "\\": r"$\backslash$",
    "&": r"\&",
    "%": r"\%",
    "$": r"$\$$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\~{}",
    "^": r"\^{}",
    "<": r"$<$",
    ">": r"$>$",
    "|": r"$|$",
    "–": "--",
    "—": "---",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "→": r"$\rightarrow$",
}
_TEX_RE = re.compile("|".join(re.escape(k) for k in _TEX_SPECIAL))


def tex_escape(text: str) -> str:
    """Escape user strings for LaTeX; other non-ASCII is transliterated (pdflatex, OT1 fonts):
    accents dropped (é -> e), a character with no ASCII form shown as ? (was dropped, so runs
    named 实验1 and 1 read alike)."""
    # normalised first: NFKD maps full-width ％＿＄ and the like to the ASCII specials
    ascii_text = "".join(
        c if c in _TEX_SPECIAL else _ascii_char(c) for c in unicodedata.normalize("NFKD", str(text))
    )
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL[m.group()], ascii_text)


def _ascii_char(c: str) -> str:
    if c.isascii():
        return c
    return "" if unicodedata.combining(c) else "?"  # an accent of the letter before it: dropped


def latex_table(table: Table, *, standalone: bool = False) -> str:
    """A booktabs table float, shrunk to the text width when it is wide (adjustbox, float [H]).

    standalone=True gives a paste-ready table that needs only booktabs (no adjustbox/float).
    """
    spec = "l" + "r" * (len(table.headers) - 1)
    tabular = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in table.headers) + r" \\",
        r"\midrule",
    ]
    tabular += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in table.rows]
    tabular += [r"\bottomrule", r"\end{tabular}"]
    if standalone:
        # small type and narrow column gaps: the summary's columns fit a page's text width
        head = [r"% requires \usepackage{booktabs}", r"\begin{table}[htbp]"]
        body = [r"\footnotesize", r"\setlength{\tabcolsep}{3pt}", *tabular]
    else:
        head = [r"\begin{table}[H]"]
        body = [r"\begin{adjustbox}{max width=\textwidth}", *tabular, r"\end{adjustbox}"]
    caption = [
        r"\centering",
        rf"\caption{{{tex_escape(table.caption)}}}",
        rf"\label{{{table.label}}}",
    ]
    return "\n".join([*head, *caption, *body, r"\end{table}"])


def render_latex(doc: Sequence[Block], title: str) -> str:
    out = [
        r"\documentclass[11pt]{article}",
        r"\usepackage[margin=2cm]{geometry}",
        r"\usepackage{booktabs,graphicx,float,amsmath,adjustbox}",
        r"\usepackage[hidelinks]{hyperref}",
        rf"\title{{{tex_escape(title)}}}",
        r"\date{}",
        r"\begin{document}",
        r"\maketitle",
    ]
    for block in doc:
        if isinstance(block, Heading):
            out.append(
                ("\\section" if block.level == 1 else "\\subsection")
                + f"{{{tex_escape(block.text)}}}"
            )
        elif isinstance(block, Para):
            out += [tex_escape(block.text), ""]
        elif isinstance(block, Table):
            out.append(latex_table(block))
        elif isinstance(block, Figure):
            out += [
                r"\begin{figure}[H]",
                r"\centering",
                rf"\includegraphics[width=0.75\textwidth]{{{block.path.name}}}",
                rf"\caption{{{tex_escape(block.caption)}}}",
                rf"\label{{fig:{block.key}}}",
                r"\end{figure}",
            ]
        elif isinstance(block, Formula):
            out.append(block.latex)
        elif isinstance(block, Findings):
            if not block.items:
                out.append("No problems detected: no diagnosis rule fired.")
                continue
            # enumerate, not itemize: the itemize bullet is a TS1 glyph (see _TEX_SPECIAL).
            out.append(r"\begin{enumerate}")
            for f in block.items:
                head, evidence, rec = (tex_escape(x) for x in _finding_lines(f))
                out.append(rf"\item \textbf{{{head}}}\\ {evidence}\\ {rec}")
            out.append(r"\end{enumerate}")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry point
def write_report(
    runs_or_paths: Sequence[Run | str | Path],
    out_dir: str | Path,
    *,
    commbench: str | Path | None = None,
    busbw_gbps: float | None = None,
    alpha_ms: float | None = None,
) -> dict[str, Path]:
    """Write every report file into out_dir and return them by name.

    Bandwidth for the prediction: busbw_gbps/alpha_ms if given, else the commbench file, else the
    bucket all-reduce time measured by the group's smallest multi-rank run.
    """
    from scalelab.analysis.plots import plot_all  # matplotlib is only needed for a full report

    # Bad bandwidth flags are the user's error, not a report without predictions.
    if busbw_gbps is not None and not (math.isfinite(busbw_gbps) and busbw_gbps > 0):
        raise AnalysisError(f"--busbw-gbps must be > 0 GB/s, got {busbw_gbps}")
    if alpha_ms is not None and busbw_gbps is None:
        raise AnalysisError("--alpha-ms needs --busbw-gbps (a commbench file brings its own alpha)")
    if alpha_ms is not None and not (math.isfinite(alpha_ms) and alpha_ms >= 0):
        raise AnalysisError(f"--alpha-ms must be >= 0 ms, got {alpha_ms}")
    why = not_a_folder(out_dir)
    if why:
        raise AnalysisError(f"--out {out_dir}: {why}")
    items = list(runs_or_paths)
    paths = [p for p in items if not isinstance(p, Run)]
    runs = [r for r in items if isinstance(r, Run)] + (load_runs(paths) if paths else [])
    if not runs:
        raise AnalysisError("no runs to report on")
    analysis = analyse_runs(runs, commbench=commbench, busbw_gbps=busbw_gbps, alpha_ms=alpha_ms)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # staging folders of a report killed mid-way (an hour old: not one being written now)
        for stale in out.glob(".report-staging-*"):
            if stale.is_dir() and time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        # Everything is built in a staging folder first (same filesystem), then each file
        # replaces its old version: a failure half-way leaves the previous report as it was.
        staging = Path(tempfile.mkdtemp(prefix=".report-staging-", dir=out))
    except OSError as exc:
        raise AnalysisError(
            f"--out {out_dir}: cannot write the report there ({exc.strerror or exc})"
        ) from None
    try:
        figures = plot_all(analysis.groups, runs, analysis.predictions, staging)
        staged: dict[str, Path] = {f"plot_{k}": v for k, v in figures.items()}

        staged["csv"] = staging / "comprehensive_summary.csv"
        with staged["csv"].open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in csv_rows(analysis))

        staged["summary_table"] = staging / "summary_table.tex"
        staged["summary_table"].write_text(
            latex_table(_summary_table(analysis), standalone=True) + "\n"
        )

        title = "scalelab performance report"
        doc = build_document(analysis, figures)
        for key, name, text in (
            ("markdown", "performance_report.md", render_markdown(doc, title)),
            ("text", "performance_report.txt", render_text(doc, title)),
            ("html", "report.html", render_html(doc, title)),
            ("latex", "report.tex", render_latex(doc, title)),
        ):
            staged[key] = staging / name
            staged[key].write_text(text, encoding="utf-8")
        files = {key: out / path.name for key, path in staged.items()}
        # Checked before any file is replaced, so that a name taken by a folder (the one way a
        # rename within one filesystem fails) leaves the old report whole, not half replaced.
        for target in files.values():
            if target.exists() and not target.is_file():
                raise AnalysisError(
                    f"--out {out_dir}: cannot write the report ({target.name} there is not a "
                    "file; nothing was replaced)"
                )
        for key, path in staged.items():
            os.replace(path, files[key])
    except OSError as exc:  # a full disk, a file's name taken by a folder, ...
        raise AnalysisError(
            f"--out {out_dir}: cannot write the report ({exc.strerror or exc}"
            + (f": {exc.filename}" if exc.filename else "")
            + ")"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


__all__ = [
    "Analysis",
    "analyse_runs",
    "build_document",
    "csv_rows",
    "format_predictions",
    "latex_table",
    "tex_escape",
    "write_report",
]
