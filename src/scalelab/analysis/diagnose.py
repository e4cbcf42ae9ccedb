"""Rules that turn measurements into findings: what limits scaling and what to change.

Each rule fires on one symptom, quotes the measurement it rests on (numbers with units) and
stays silent on a healthy run. Thresholds are module constants so they can be tuned in one place.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from scalelab.analysis.collect import Run
from scalelab.analysis.predict import Prediction, compare
from scalelab.analysis.scaling import (
    ScalingGroup,
    ScalingPoint,
    analyse,
    cpu_threads_per_rank,
    group_key,
)

# Parallel efficiency below 70 % means 30 % of the bought hardware is idle: worth explaining.
EFFICIENCY_MIN = 0.7
# The loader delivering a batch should be a small part of a step; a quarter means the ranks
# spend a large share of every step waiting for input, which more ranks cannot fix.
DATA_SHARE_MAX = 0.25
# Exposed all-reduce above 30 % of a step caps efficiency at about 0.7 by itself.
COMM_SHARE_MAX = 0.30
# Above half the step, the phase dominates: escalate input/comm findings to critical.
CRITICAL_SHARE = 0.5
# If exposed comm explains less than a quarter of the step-time excess over ideal, the slowdown
# has another cause and tuning communication would be wasted effort.
COMM_SHARE_OF_EXCESS_MAX = 0.25
# Below ~8 samples per rank, kernels are too small to fill a GPU: launch overhead dominates.
SMALL_PER_RANK_BATCH = 8
# Halving the per-rank batch should nearly halve the forward time; achieving less than 40 % of
# the ideal reduction means a fixed per-step cost (kernel launches, Python) dominates compute.
FORWARD_SHRINK_MIN_FRACTION = 0.4
# A forward more than 10 % slower at a smaller per-rank batch is not a fixed per-step cost (that
# would keep it level) but ranks slowing each other down: the contention rule's, not launch-bound.
FORWARD_GROWTH_MAX = 1.1
# Per-rank compute (forward + backward without the exposed all-reduce) 20 % above the
# baseline's / n, at the baseline's threads per rank: the ranks slow each other's compute down.
COMPUTE_SLOWDOWN_MAX = 1.2
# Exposed communication over twice the step's all-reduces timed back to back: the excess is
# ranks waiting for each other at the collective, not bytes on the wire.
SYNC_WAIT_RATIO = 2.0
# The optimizer step does not shrink with more ranks; at 20 % of a step it caps scaling early.
OPTIMIZER_SHARE_MAX = 0.20
# The slowest rank sets the pace of every all-reduce; 20 % above the mean is a real imbalance
# rather than timer noise.
STRAGGLER_RATIO = 1.2
# Two percentage points of accuracy exceeds run-to-run seed noise on AG News/IMDB test sets.
ACCURACY_DELTA_PP = 2.0
# In a profiled step (train.profile_steps) a GPU busy less than 70 % of the time between its
# first and last kernel waits on the host (Python, launches, syncs): faster kernels won't help.
GPU_BUSY_MIN = 0.7
# One host sync or pageable copy per profiled step is the step's own; scalelab's occasional ones
# (reading the loss every train.log_every_steps, the stop poll every ~5 s) average below that.
HOST_WAITS_PER_STEP_MIN = 1.0
# A cost model within 25 % is useful for planning; beyond that a term is mis-modelled.
PREDICTION_ERROR_PCT = 25.0

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}

PHASE_KEYS = ("data_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")
PHASE_LABELS = {
    "data_ms": "data wait",
    "h2d_ms": "host-to-device copy",
    "forward_ms": "forward",
    "backward_ms": "backward compute",
    "optimizer_ms": "optimizer",
    "other_ms": "other (un-timed host work)",
    "exposed_comm_ms": "exposed communication",
    "backward_incl_comm_ms": "backward incl. exposed communication (not measured apart)",
}


@dataclass
class Finding:
    severity: str
    """'critical', 'warning' or 'info'."""
    title: str
    evidence: str
    """The measurement the finding rests on, with numbers and units."""
    recommendation: str
    rule: str
    """Identifier of the rule that fired (stable, for tests and filtering)."""
    subject: str = ""
    """The run name or group the finding is about."""


def _ms(x: float) -> str:
    return f"{x:.3g} ms" if abs(x) < 100 else f"{x:.0f} ms"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sum_phases(run: Run) -> float:
    return sum(run.phase(k) or 0.0 for k in PHASE_KEYS)


def excess_breakdown(
    group: ScalingGroup, point: ScalingPoint
) -> dict[str, tuple[float, float]] | None:
    """Per phase: (measured at n, ideal = baseline x n0/n, i.e. perfect linear scaling).

    Exposed communication is split out of backward (its ideal is 0), so the phase that keeps
    the step from shrinking linearly (data wait, optimizer, comm, ...) can be named. A
    multi-rank run without that figure (train.comm_calibration_steps=0 and no all-reduce timed
    in its steps) has "backward_incl_comm_ms" instead of backward and exposed communication:
    an unmeasured figure is not 0.
    """
    base = group.baseline_runs()
    runs = [point.run, *base]
    if any(r.phase("step_ms") is None for r in runs):
        return None
    scale = group.baseline_world_size / point.world_size

    def split(run: Run) -> dict[str, float]:
        exposed = run.comm_value("exposed_comm_ms") or 0.0
        phases = {k: run.phase(k) or 0.0 for k in PHASE_KEYS}
        phases["backward_ms"] -= exposed
        phases["other_ms"] = max(0.0, run.phase("step_ms") - _sum_phases(run))
        phases["exposed_comm_ms"] = exposed
        return phases

    measured = split(point.run)
    base_split = [split(b) for b in base]
    ideal = {k: _mean([b[k] for b in base_split]) * scale for k in measured}
    ideal["exposed_comm_ms"] = 0.0
    out = {k: (measured[k], ideal[k]) for k in measured}
    if point.world_size > 1 and point.run.comm_value("exposed_comm_ms") is None:
        backward, ideal_backward = out.pop("backward_ms")
        del out["exposed_comm_ms"]
        out["backward_incl_comm_ms"] = (backward, ideal_backward)
    return out


def _largest_key(breakdown: dict[str, tuple[float, float]]) -> str:
    return max(breakdown, key=lambda k: breakdown[k][0] - breakdown[k][1])


def _largest_growth(breakdown: dict[str, tuple[float, float]]) -> str:
    key = _largest_key(breakdown)
    measured, ideal = breakdown[key]
    return f"the largest excess is {PHASE_LABELS[key]}: {_ms(measured)} vs ideal {_ms(ideal)}"


def _scaling_rules(group: ScalingGroup) -> list[Finding]:
    findings = []
    n0 = group.baseline_world_size
    for point in group.points:
        if point.world_size == n0:
            continue
        run = point.run
        n = point.world_size
        head = (
            f"epoch time {point.epoch_time_s:.3g} s at {n} ranks vs "
            f"{group.baseline_epoch_time_s:.3g} s at {n0} rank{'s' if n0 > 1 else ''}: "
            f"speedup {point.speedup:.2f}x (ideal {point.ideal_speedup:.3g}x), "
            f"efficiency {point.efficiency:.0%}"
        )
        breakdown = excess_breakdown(group, point)
        cause = f"; {_largest_growth(breakdown)} per step" if breakdown else ""
        if point.speedup < 1:
            findings.append(
                Finding(
                    "critical",
                    f"Negative scaling: {n} ranks are slower than {n0}",
                    head + cause,
                    f"Do not run this workload on {n} ranks until the cause is fixed; the "
                    "bottleneck findings for this run say what dominates the step.",
                    "negative_scaling",
                    run.name,
                )
            )
        elif point.efficiency < EFFICIENCY_MIN:
            cores, base_cores = _cpu_cores(run), _mean_cores(group.baseline_runs())
            if cores is not None and base_cores is not None and cores <= base_cores:
                advice = (
                    f"These {n} ranks share {cores:g} CPU threads in all, no more than the "
                    f"baseline's {base_cores:g}: the ideal speedup of {point.ideal_speedup:.3g}x "
                    "assumes added cores that were never added. On a fixed core budget compare "
                    "with one rank using all the threads, and add ranks only with cores."
                )
            else:
                advice = (
                    "Part of the added hardware is idle; address the dominant excess phase "
                    "(see the other findings) or use fewer ranks for this workload."
                )
            findings.append(
                Finding(
                    "warning",
                    f"Sub-linear scaling at {n} ranks (efficiency {point.efficiency:.0%})",
                    head + cause,
                    advice,
                    "sublinear_scaling",
                    run.name,
                )
            )
        else:
            continue
        exposed = run.comm_value("exposed_comm_ms")
        if breakdown is None or exposed is None:
            continue
        step = run.phase("step_ms")
        ideal_step = sum(ideal for _, ideal in breakdown.values())
        excess = step - ideal_step
        # against the phases that grew (others that shrank must not make comm look large), and
        # never when exposed communication is itself the phase that grew most
        grown = sum(max(0.0, m - i) for m, i in breakdown.values())
        if (
            excess > 0
            and exposed < COMM_SHARE_OF_EXCESS_MAX * grown
            and _largest_key(breakdown) != "exposed_comm_ms"
        ):
            data = run.phase("data_ms") or 0.0
            findings.append(
                Finding(
                    "info",
                    f"Communication is NOT the bottleneck at {n} ranks",
                    f"exposed communication is {_ms(exposed)} of a {_ms(step)} step "
                    f"(ideal step {_ms(ideal_step)}, excess {_ms(excess)}); data wait is "
                    f"{_ms(data)}; {_largest_growth(breakdown)}",
                    "Faster interconnects, comm hooks or bucket tuning will not help here; "
                    "work on the phase that grew instead.",
                    "comm_not_bottleneck",
                    run.name,
                )
            )
    return findings


def _threads_per_rank(runs: Sequence[Run]) -> float | None:
    """Mean CPU threads per rank of CPU runs (None for GPU runs or when not recorded): on a CPU,
    a rank's compute speed scales with its threads."""
    threads = [cpu_threads_per_rank(r.summary) for r in runs]
    if any(t is None for t in threads):
        return None
    return _mean(threads)


def _cpu_cores(run: Run) -> float | None:
    """CPU threads the run's ranks used in all (ranks x threads per rank); None off CPU."""
    threads = _threads_per_rank([run])
    return None if threads is None else run.world_size * threads


def _mean_cores(runs: Sequence[Run]) -> float | None:
    cores = [_cpu_cores(r) for r in runs]
    return None if not cores or None in cores else _mean([c for c in cores if c is not None])


def _forward_shrink_rule(group: ScalingGroup) -> list[Finding]:
    """Launch-bound symptom: forward time barely drops when the per-rank batch is cut.

    On CPU a rank's threads count too: 1 rank x 2 threads -> 2 ranks x 1 thread halves the
    batch and the threads per rank, so the ideal per-rank forward does not shrink at all."""
    by_n: dict[int, list[Run]] = defaultdict(list)
    for run in group.runs:
        if run.phase("forward_ms"):
            by_n[run.world_size].append(run)
    sizes = sorted(by_n)
    findings = []
    for small, large in zip(sizes, sizes[1:], strict=False):
        f_small = _mean([r.phase("forward_ms") for r in by_n[small]])
        f_large = _mean([r.phase("forward_ms") for r in by_n[large]])
        ideal_ratio = small / large
        t_small, t_large = _threads_per_rank(by_n[small]), _threads_per_rank(by_n[large])
        if t_small and t_large:
            ideal_ratio *= t_small / t_large
        if ideal_ratio >= 1:
            continue  # no faster per-rank compute to expect: the ranks split the same cores
        if f_large > FORWARD_GROWTH_MAX * f_small:
            continue  # grew at a smaller batch: not a fixed cost but contention (its own rule)
        achieved = (1 - f_large / f_small) / (1 - ideal_ratio)
        run = by_n[large][0]
        per_rank = run.summary.get("per_rank_batch")
        if achieved >= FORWARD_SHRINK_MIN_FRACTION or (
            per_rank is not None and per_rank <= SMALL_PER_RANK_BATCH
        ):
            continue  # healthy, or already reported by the small-batch rule
        overhead = (
            "raise the global batch (gradient accumulation at the same global batch would make "
            "each micro-batch smaller still), or compile the step (train.compile = true; "
            "on GPUs train.compile_mode = reduce-overhead for CUDA graphs, with "
            "data.pad_multiple = 16 so few batch shapes need a graph)."
        )
        if run.summary.get("device_type") == "cpu":
            # CPU ranks share the host's cores: a flat forward can also be the ranks slowing
            # each other down (the compute_contention rule's cause, which it leaves to this one)
            advice = (
                "Either fixed per-step overhead (Python, operator dispatch) dominates, or the "
                "ranks slow each other down on the cores they share (SMT siblings, memory "
                "bandwidth, caches, clock). A 1-rank run at the per-rank batch "
                + (f"(train.batch_size={per_rank}, same threads)" if per_rank else "(same threads)")
                + " tells which: a forward near "
                f"{_ms(f_large)} means overhead: " + overhead + " A forward near "
                f"{_ms(f_small * ideal_ratio)} means contention: pin the ranks to distinct "
                "physical cores (distributed.pin_cpus = true) and compare with one rank using "
                "all the threads."
            )
        else:
            advice = "Fixed per-step overhead (kernel launches, Python) dominates: " + overhead
        findings.append(
            Finding(
                "warning",
                f"Compute does not shrink with the per-rank batch ({small} -> {large} ranks)",
                f"forward time {_ms(f_small)} at {small} ranks -> {_ms(f_large)} at {large} "
                f"ranks (ideal {_ms(f_small * ideal_ratio)}); per-rank batch {per_rank}",
                advice,
                "launch_bound",
                run.name,
            )
        )
    return findings


def _compute_contention_rule(group: ScalingGroup) -> list[Finding]:
    """Per-rank compute slower than the baseline's split n ways, with the same threads per rank
    and batches large enough to fill the device: the ranks contend for something they share.

    The cost model (and the ideal of the efficiency) assumes each rank computes at the
    baseline's speed; this names how much of the excess that assumption misses. Silent where
    the forward barely shrinks (the launch-bound rule's symptom) and on small per-rank batches
    (the small-batch rule's)."""
    findings = []
    base_runs = group.baseline_runs()
    n0 = group.baseline_world_size
    base_threads = _threads_per_rank(base_runs)
    base_fwd = _mean([r.phase("forward_ms") or 0.0 for r in base_runs])
    for point in group.points:
        run, n = point.run, point.world_size
        if n <= n0 or _threads_per_rank([run]) != base_threads:
            continue  # other threads per rank: the per-rank ideal is not the baseline's / n
        per_rank = run.summary.get("per_rank_batch")
        if per_rank is not None and per_rank <= SMALL_PER_RANK_BATCH:
            continue
        breakdown = excess_breakdown(group, point)
        fwd = run.phase("forward_ms")
        if breakdown is None or "exposed_comm_ms" not in breakdown or not fwd or not base_fwd:
            continue  # (without the exposed figure, backward compute is not known)
        shrink = (1 - fwd / base_fwd) / (1 - n0 / n)
        if shrink < FORWARD_SHRINK_MIN_FRACTION and fwd <= FORWARD_GROWTH_MAX * base_fwd:
            continue  # launch-bound: that rule explains it
        measured = breakdown["forward_ms"][0] + breakdown["backward_ms"][0]
        ideal = breakdown["forward_ms"][1] + breakdown["backward_ms"][1]
        if ideal <= 0 or measured < COMPUTE_SLOWDOWN_MAX * ideal:
            continue
        step = run.phase("step_ms") or 0.0
        excess = step - sum(i for _, i in breakdown.values())
        exposed = breakdown["exposed_comm_ms"][0]
        on_cpu = run.summary.get("device_type") == "cpu"
        if on_cpu:
            advice = (
                "Each rank has as many threads as the baseline's rank, yet computes more "
                "slowly: the ranks contend for what their cores share (two vCPUs of a VM or "
                "SMT siblings of one physical core, memory bandwidth, caches, a clock that "
                "drops when every core is busy). Check the physical layout (lscpu -e), "
                + (
                    "keep the ranks on distinct physical cores (they were bound to their own "
                    "CPUs already, distributed.pin_cpus), "
                    if run.system.get("bound_cpus")
                    else "pin ranks to distinct physical cores (distributed.pin_cpus = true), "
                )
                + "and compare with one rank using all the threads: more ranks on these cores "
                "cannot give "
                f"{n}x, and the cost model, which assumes independent cores, is optimistic by "
                "about this much."
            )
        else:
            advice = (
                "Check that every rank has a device of its own (device_count against world "
                "size), that the GPUs do not throttle (nvidia-smi -q -d PERFORMANCE), and that "
                "the host threads launching the kernels are not oversubscribed."
            )
        findings.append(
            Finding(
                "warning",
                f"Per-rank compute at {n} ranks is slower than the baseline's split "
                f"{n / n0:g} ways",
                f"forward + backward compute {_ms(measured)} per step vs ideal {_ms(ideal)} "
                f"(the {n0}-rank time x {n0}/{n}, same threads per rank): the ranks compute at "
                f"{ideal / measured:.0%} of the baseline rank's speed; {_ms(measured - ideal)} "
                f"of the step's {_ms(excess)} excess over ideal (exposed communication "
                f"{_ms(exposed)})",
                advice,
                "compute_contention",
                run.name,
            )
        )
    return findings


def _wait_split(waiting: float, spread: float | None, wake_ms: float | None) -> tuple[str, bool]:
    """What explains `waiting` (exposed communication beyond the back-to-back all-reduce):
    ranks reaching the collective at different times (the run's measured arrival spread), the
    cost of waking from compute (the commbench's after-compute times), and the rest: the
    all-reduce running slower inside the step than alone. Returns (the evidence's sentence,
    whether late peers explain most of it)."""
    parts, explained = [], 0.0
    if spread is not None:
        parts.append(
            f"ranks reached the step's first collective {_ms(spread)} apart on average "
            "(arrival_spread_ms: the last rank against the ranks' mean)"
        )
        explained += spread
    if wake_ms and wake_ms > 0:
        parts.append(
            f"the commbench's all-reduces reached from compute cost {_ms(wake_ms)} more than "
            "back to back at this size"
        )
        explained += wake_ms
    rest = waiting - explained
    if spread is None:
        cause = (
            "some rank reaches the collective later than the others (step-time jitter, a "
            "straggler), or a rank that waited from compute is slow to wake"
        )
        if not parts:
            return f"; the other {_ms(waiting)} is waiting: {cause}", False
        tail = (
            f", which leaves {_ms(rest)} of ranks waiting for a late peer"
            if rest > 0
            else ": waking accounts for all of it"
        )
        return f"; the other {_ms(waiting)} is waiting: {cause}; " + parts[0] + tail, False
    tail = (
        f"; the remaining {_ms(rest)} is the all-reduce itself running slower inside the step "
        "than alone"
        if rest > 0
        else ""
    )
    late = spread >= 0.5 * waiting
    return f"; of the other {_ms(waiting)}, " + " and ".join(parts) + tail, late


def _run_rules(run: Run, wake_ms: float | None = None) -> list[Finding]:
    """Findings of one run; ``wake_ms``: the predicted after-compute cost of its step's first
    all-reduce (`Prediction.wake_ms`), when a prediction was checked against the run."""
    findings = []
    name, n = run.name, run.world_size
    step = run.phase("step_ms")
    if step:
        data = max(run.phase("data_ms") or 0.0, run.phase("data_ms_max") or 0.0)
        exposed = run.comm_value("exposed_comm_ms")
        comm_bound = n > 1 and exposed is not None and exposed >= COMM_SHARE_MAX * step
        if data >= DATA_SHARE_MAX * step:
            delay = float(run.data.get("delay_per_batch_s") or 0.0)
            note = (
                f"; data.delay_per_batch_s = {delay:g} s is set (a simulated slow loader)"
                if delay > 0
                else ""
            )
            fixes = []
            if delay > 0:
                fixes.append("remove data.delay_per_batch_s")
            if run.data.get("on_device") is False and run.summary.get("device_type") == "cuda":
                fixes.append("keep the encoded data on the GPU (data.on_device = true)")
            fixes += [
                "update progress less often (train.log_every_steps: each update waits for the "
                "device), and a periodic checkpoint less often",
                "check that no other process competes for the host's cores (ranks x threads "
                f"per rank against the {run.system.get('num_cpus') or '?'} CPUs this job had)",
            ]
            findings.append(
                Finding(
                    "critical" if data >= CRITICAL_SHARE * step else "warning",
                    "Input-bound: the input pipeline is the bottleneck"
                    + (" (and communication, below)" if comm_bound else ", not the network"),
                    f"data wait {_ms(data)} of a {_ms(step)} step ({data / step:.0%}) at "
                    f"{n} rank{'s' if n > 1 else ''}{note}",
                    "The data phase is batch assembly from the encoded cache plus host time "
                    "between steps: " + "; ".join(fixes) + ". More ranks shrink only the "
                    "part of the wait that is proportional to the per-rank batch.",
                    "input_bound",
                    name,
                )
            )
        allreduce = run.comm_value("allreduce_ms")
        if (
            n > 1
            and exposed is not None
            and allreduce
            and exposed > SYNC_WAIT_RATIO * allreduce
            and exposed - allreduce >= 1.0
        ):
            spread = run.phase("arrival_spread_ms")  # None: a run of an older version
            split, late = _wait_split(exposed - allreduce, spread, wake_ms)
            ratio = f"exposed communication is {exposed / allreduce:.1f}x the all-reduce"
            if spread is None:
                title = f"Ranks wait in the collective at {n} ranks: {ratio} itself"
            elif late:
                title = f"Ranks wait for a late peer at {n} ranks: {ratio} itself"
            else:
                title = (
                    f"The all-reduce is slower inside the step than alone at {n} ranks: "
                    f"{ratio} timed back to back"
                )
            fewer = (
                "fewer collectives per step pay it fewer times (a bigger global batch, with "
                "train.grad_accum_steps if the per-rank batch must stay small)."
            )
            if spread is not None and not late:
                together = (
                    "The ranks arrive together, so no rank is to blame"
                    if spread < 0.25 * (exposed - allreduce)
                    else (
                        f"A late rank explains less than half of the wait ({_ms(spread)} of "
                        f"{_ms(exposed - allreduce)})"
                    )
                )
                advice = (
                    together + ": the collective costs "
                    "more between compute than back to back (on CPUs gloo needs cores the "
                    "compute keeps busy, and caches are cold; scalelab commbench's "
                    "sync_latency sizes measure the part a collective reached from compute "
                    "pays, and predictions include it). Bandwidth does not help; " + fewer
                )
            else:
                advice = (
                    "Bandwidth, comm hooks and bucket sizes cannot remove waiting. Look at the "
                    "slowest rank (forward_ms_max, data_ms_max), at what the ranks share (CPU "
                    "cores, a device) and at the all-reduce times after compute that scalelab "
                    "commbench measures (sync_latency.sizes: against its back-to-back times, "
                    "the cost of waking); " + fewer
                )
            if run.comm.get("collective_wait") == "block":
                advice += (
                    " This run waited for its all-reduce in gloo's blocking wait: "
                    "distributed.collective_wait=spin (the default) resumes without being woken."
                )
            findings.append(
                Finding(
                    "warning",
                    title,
                    f"exposed communication {_ms(exposed)} per step against {_ms(allreduce)} "
                    "for the step's all-reduces timed back to back" + split,
                    advice,
                    "sync_wait",
                    name,
                )
            )
        if comm_bound:
            assert exposed is not None
            overlap = run.comm_value("overlap_fraction")
            hook = run.comm.get("comm_hook") or "none"
            ratio = run.comm_value("compute_to_comm_ratio")
            extra = f", overlap {overlap:.0%}" if overlap is not None else ""
            extra += f", R = compute/comm = {ratio:.2g}" if ratio is not None else ""
            grad_mb = (run.comm.get("grad_bytes") or 0) / 1e6
            tips = []
            emb_mb = (run.comm.get("embedding_grad_bytes") or 0) / 1e6
            if run.comm.get("embedding_grad_sync") == "dense" and emb_mb >= 0.5 * grad_mb > 0:
                rows = run.comm_value("embedding_rows_per_step")
                used = f" (a global batch uses ~{rows:,.0f} rows)" if rows else ""
                tips.append(
                    f"distributed.embedding_grad_sync=rows: {emb_mb:.3g} of the {grad_mb:.3g} MB are "
                    f"the token-embedding gradient, and only the rows a batch uses need summing{used}"
                )
            if hook == "none":
                kind = "fp16" if run.summary.get("backend") == "gloo" else "bf16 or fp16"
                tip = f"an {kind} comm hook (distributed.comm_hook) halves the bytes sent"
                if run.comm.get("embedding_grad_sync") == "rows":
                    tip += " by DDP's buckets (not the embedding rows, which go unhooked)"
                if run.comm.get("grad_sync") == "fused":
                    # grad_sync=fused needs comm_hook=none: 'auto' falls back to two collectives
                    tip += (
                        ", but ends the one fused all-reduce (grad_sync=fused takes no hook): "
                        "the step then sends two collectives, so time both ways"
                    )
                tips.append(tip)
            # the step's all-reduces; DDP's own buckets are one fewer when the embedding rows
            # are summed row-wise (as one more)
            collectives = int(run.comm_value("num_buckets") or 0)
            ddp_buckets = collectives - (1 if run.comm.get("embedding_grad_sync") == "rows" else 0)
            if (
                run.comm.get("grad_sync") == "buckets"
                and run.summary.get("backend") == "gloo"
                and run.comm.get("embedding_grad_sync") == "rows"
                and hook == "none"
                and not run.system.get("find_unused_parameters")  # fused needs it off
                and collectives > 1
            ):
                tips.append(
                    f"distributed.grad_sync=fused: one all-reduce per step instead of "
                    f"{collectives} (on CPUs the backward hides none of them, and each pays "
                    "gloo's latency)"
                )
            if ddp_buckets > 1:
                tips.append(
                    f"a larger distributed.bucket_cap_mb (now {run.comm.get('bucket_cap_mb')}, "
                    f"{ddp_buckets} buckets) means fewer, more efficient all-reduces"
                )
            tips.append(
                "a bigger global batch gives more compute per all-reduce (with "
                "train.grad_accum_steps if the per-rank batch must stay small; at the same global "
                "batch accumulation does not cut communication)"
            )
            findings.append(
                Finding(
                    "critical" if exposed >= CRITICAL_SHARE * step else "warning",
                    f"Communication-bound at {n} ranks",
                    f"exposed all-reduce {_ms(exposed)} of a {_ms(step)} step ({exposed / step:.0%}); "
                    f"{grad_mb:.3g} MB of gradients per step{extra}",
                    "Try " + "; ".join(tips) + ".",
                    "comm_bound",
                    name,
                )
            )
        optimizer = run.phase("optimizer_ms")
        if optimizer is not None and optimizer >= OPTIMIZER_SHARE_MAX * step:
            findings.append(
                Finding(
                    "warning",
                    "Optimizer step is a large, non-shrinking share of the step",
                    f"optimizer {_ms(optimizer)} of a {_ms(step)} step ({optimizer / step:.0%}) at {n} rank{'s' if n > 1 else ''}",
                    "Every rank updates all parameters, so this time does not shrink with more "
                    "ranks: use a fused/foreach AdamW, or a bigger batch per optimizer step.",
                    "optimizer_share",
                    name,
                )
            )
        # DDP keeps the ranks' steps equal (the fast ones wait in their backward), so a slow
        # rank shows in the forward, which has no collective
        fwd, fwd_max = run.phase("forward_ms"), run.phase("forward_ms_max")
        if n > 1 and fwd and fwd_max is not None and fwd_max > STRAGGLER_RATIO * fwd:
            findings.append(
                Finding(
                    "warning",
                    "Straggler: ranks are imbalanced",
                    f"slowest rank's forward {_ms(fwd_max)} per step vs mean {_ms(fwd)} "
                    f"({fwd_max / fwd:.2f}x) at {n} ranks; the others wait for it in every "
                    "all-reduce",
                    "Every all-reduce waits for the slowest rank: check for uneven data "
                    "(sequence lengths per rank), shared or throttled devices, other processes.",
                    "straggler",
                    name,
                )
            )
    per_rank = run.summary.get("per_rank_batch")
    if per_rank is not None and per_rank <= SMALL_PER_RANK_BATCH:
        findings.append(
            Finding(
                "warning",
                "Small per-rank batch: launch/overhead-bound",
                f"per-rank batch {per_rank} samples (global {run.summary.get('global_batch')} "
                f"over {n} rank{'s' if n > 1 else ''})",
                "Kernels this small cannot fill the device and fixed per-step costs dominate: "
                "raise the global batch (scale the LR with it); gradient accumulation at the "
                "same global batch would shrink the micro-batch further.",
                "small_batch",
                name,
            )
        )
    prof = run.summary.get("profile") or {}
    busy = prof.get("gpu_busy_fraction")
    if prof.get("gpu_events") and busy is not None and busy < GPU_BUSY_MIN:
        gaps = prof.get("largest_gaps_us") or []
        findings.append(
            Finding(
                "warning",
                "GPU idle between kernels: the step is host-bound",
                f"{prof.get('profiled_steps')} profiled steps: GPU busy "
                f"{_ms(prof.get('gpu_busy_ms_per_step') or 0.0)} of "
                f"{_ms(prof.get('span_ms_per_step') or 0.0)} per step ({busy:.0%}), "
                f"{prof.get('launches_per_step', 0):.0f} kernel launches per step"
                + (f", largest gap {gaps[0]:.0f} us" if gaps else ""),
                "Faster kernels will not help while the GPU waits for Python and launches: "
                "compile the step (train.compile = true; train.compile_mode = reduce-overhead "
                "for CUDA graphs, with data.pad_multiple = 16), raise the per-rank batch, and "
                "keep data.on_device = true. The trace (profile-rank0.json) shows each gap.",
                "gpu_idle",
                name,
            )
        )
    syncs = prof.get("host_syncs_per_step") or 0.0
    pageable = prof.get("pageable_copies_per_step") or 0.0
    if prof.get("gpu_events") and max(syncs, pageable) >= HOST_WAITS_PER_STEP_MIN:
        findings.append(
            Finding(
                "warning",
                "The host waits for the GPU inside each step",
                f"{prof.get('profiled_steps')} profiled steps of "
                f"{_ms(prof.get('span_ms_per_step') or 0.0)}: {syncs:.2g} host syncs and "
                f"{pageable:.2g} copies from or to pageable host memory per step",
                "Each sync empties the GPU's queue: the GPU idles while the host launches the "
                "next kernels. scalelab's own step makes neither (tests/unit/test_host_syncs.py; "
                "its uploads come from pinned memory), so look in the trace (profile-rank0.json) "
                "for cudaStreamSynchronize and 'Memcpy ... Pageable' near the code that calls "
                "them: a value read on the host (.item(), print, an if on a tensor, a "
                "data-dependent shape) in model or hook code, or a host tensor copied without "
                "pin_memory(). With train.compile_mode = reduce-overhead each new batch shape "
                "records a CUDA graph, which synchronises: data.pad_multiple = 16 bounds them.",
                "host_waits",
                name,
            )
        )
    findings.extend(_config_rules(run))
    return findings


def _config_rules(run: Run) -> list[Finding]:
    findings = []
    name, n, system = run.name, run.world_size, run.system
    num_cpus = system.get("num_cpus")
    if num_cpus:
        local = int(run.summary.get("local_world_size") or n)
        threads = max(1, int(system.get("num_threads_per_rank") or 0))
        workers = int(system.get("num_loader_workers") or 0)
        demand = local * threads * (1 + workers)
        if demand > num_cpus:
            findings.append(
                Finding(
                    "critical",
                    "CPU oversubscription",
                    f"{local} local ranks x {threads} threads x (1 + {workers} loader workers) "
                    f"= {demand} busy threads on {num_cpus} CPUs",
                    "Threads time-slice and every phase slows down: set train.num_threads so "
                    "that ranks x threads x (1 + workers) <= CPUs, or use fewer loader workers.",
                    "cpu_oversubscription",
                    name,
                )
            )
    find_unused = system.get(
        "find_unused_parameters",
        (run.config.get("distributed") or {}).get("find_unused_parameters"),
    )
    if n > 1 and find_unused:
        findings.append(
            Finding(
                "warning",
                "find_unused_parameters is on",
                f"distributed.find_unused_parameters = true at {n} ranks (step "
                f"{_ms(run.phase('step_ms') or 0.0)}, exposed all-reduce "
                f"{_ms(run.comm_value('exposed_comm_ms') or 0.0)}): DDP traverses the autograd "
                "graph every step and cannot start bucket all-reduces early",
                "Turn it off unless the model really has unused parameters "
                "(or set distributed.static_graph = true).",
                "find_unused_parameters",
                name,
            )
        )
    pad = run.data.get("pad_to_max_len", (run.config.get("data") or {}).get("pad_to_max_len"))
    if pad:
        max_len = (run.config.get("model") or {}).get("max_seq_len")
        mean_tokens = run.summary.get("mean_tokens_per_sample")
        if max_len and mean_tokens:
            waste = f"mean {mean_tokens:.3g} tokens per sample padded to {max_len} ({1 - mean_tokens / max_len:.0%} of computed tokens are padding)"
        else:
            waste = "every batch is padded to model.max_seq_len"
        findings.append(
            Finding(
                "info",
                "Padding waste",
                f"data.pad_to_max_len = true: {waste}",
                "Set data.pad_to_max_len = false (dynamic padding with length bucketing) to "
                "stop computing on padding tokens.",
                "padding_waste",
                name,
            )
        )
    return findings


def _diverged(run: Run) -> bool:
    loss = run.summary.get("final_val_loss")
    return isinstance(loss, float) and not math.isfinite(loss)


def _divergence_rule(runs: Sequence[Run]) -> list[Finding]:
    """A run whose final validation loss is NaN or infinite learned nothing after that point:
    its timings still count, its accuracy is of a model of NaN weights."""
    findings = []
    for run in runs:
        if not _diverged(run):
            continue
        acc = run.summary.get("final_val_acc")
        acc_text = f"{float(acc) * 100:.1f}%" if isinstance(acc, int | float) else "unknown"
        precision = run.summary.get("precision")
        findings.append(
            Finding(
                "warning",
                "Training diverged",
                f"{run.name}: final val loss {run.summary['final_val_loss']} after "
                f"{run.summary.get('num_epochs', '?')} epoch(s), val acc {acc_text} "
                f"(lr {(run.config.get('train') or {}).get('lr', '?')}, {precision or '?'})",
                "Lower train.lr or raise train.warmup_ratio"
                + (", or train in bf16 (fp16's range overflows)" if precision == "fp16" else "")
                + ", and keep train.max_grad_norm > 0. The run's timings are still valid; its "
                "accuracy is left out of the accuracy comparison.",
                "diverged",
                run.name,
            )
        )
    return findings


def _accuracy_rule(runs: Sequence[Run]) -> list[Finding]:
    """Accuracy should not depend on the world size when the runs did the same work: the same
    scaling group (model, data, global batch, ...), number of epochs and learning rate. A run
    that diverged is left out (`_divergence_rule` reports it)."""
    grouped: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.summary.get("final_val_acc") is not None and not _diverged(run):
            lr = (run.config.get("train") or {}).get("lr") if isinstance(run.config, dict) else None
            key = (group_key(run.summary), run.summary.get("num_epochs"), lr)
            grouped[key].append(run)
    findings = []
    for members in grouped.values():
        preset, epochs = members[0].preset, members[0].summary.get("num_epochs")
        by_n: dict[int, list[float]] = defaultdict(list)
        for run in members:
            by_n[run.world_size].append(float(run.summary["final_val_acc"]))
        if len(by_n) < 2:
            continue
        accs = {n: _mean(v) for n, v in sorted(by_n.items())}
        # Accuracy is stored as a fraction; tolerate percentages from other writers.
        to_pp = 1.0 if max(accs.values()) > 1.0 else 100.0
        lo, hi = min(accs, key=accs.get), max(accs, key=accs.get)
        delta = (accs[hi] - accs[lo]) * to_pp
        if delta <= ACCURACY_DELTA_PP:
            continue
        batches = sorted({r.summary.get("global_batch") for r in members}, key=str)
        findings.append(
            Finding(
                "warning",
                "Accuracy changed with the world size",
                f"{preset}, {epochs} epochs: val acc {accs[lo] * to_pp:.1f}% at {lo} ranks vs "
                f"{accs[hi] * to_pp:.1f}% at {hi} ranks ({delta:.1f} pp); global batch {batches}",
                "The same work (model, data, global batch, epochs, learning rate) should reach "
                "the same accuracy up to run-to-run noise: check that each rank sees a distinct "
                "shard of every global batch and that gradients are averaged over ranks.",
                "accuracy_change",
                str(preset),
            )
        )
    return findings


_TERM_HINTS = {
    "data_ms": "the input pipeline does not scale with the per-rank batch (a fixed per-batch cost such as delay_per_batch_s or loader latency)",
    "h2d_ms": "host-to-device copies have a fixed per-batch cost",
    "forward_ms": "compute does not shrink as 1/n (launch overhead or ranks sharing a device; on CPU, threads that do not scale linearly, which the model assumes)",
    "backward_ms": "backward incl. exposed all-reduce: bandwidth/latency (busbw, alpha), the overlap assumption, or on CPU the linear thread scaling the model assumes",
    "optimizer_ms": "the optimizer time changed with the world size (threads per rank, shared device)",
    "other_ms": "un-timed host overhead changed",
}


def _prediction_rule(predictions: Sequence[Prediction], runs: Sequence[Run]) -> list[Finding]:
    findings = []
    for cmp in compare(predictions, runs):
        if abs(cmp.error_pct) <= PREDICTION_ERROR_PCT:
            continue
        run, pred = cmp.run, cmp.prediction
        measured = {k: run.phase(k) or 0.0 for k in PHASE_KEYS}
        measured["other_ms"] = max(0.0, cmp.measured_step_ms - _sum_phases(run))
        predicted = {
            "data_ms": pred.data_ms,
            "h2d_ms": pred.h2d_ms,
            "forward_ms": pred.forward_ms,
            "backward_ms": pred.backward_ms + pred.exposed_comm_ms,
            "optimizer_ms": pred.optimizer_ms,
            "other_ms": pred.other_ms,
        }
        term = max(measured, key=lambda k: abs(measured[k] - predicted[k]))
        findings.append(
            Finding(
                "warning",
                f"Prediction off by {cmp.error_pct:+.0f}% at {cmp.world_size} ranks",
                f"predicted step {_ms(cmp.predicted_step_ms)} vs measured {_ms(cmp.measured_step_ms)}; "
                f"largest gap in {term.removesuffix('_ms')}: predicted {_ms(predicted[term])}, "
                f"measured {_ms(measured[term])}",
                f"The likely mis-modelled term: {_TERM_HINTS[term]}."
                + (
                    " Re-run scalelab commbench on this hardware (scalelab report --commbench "
                    "FILE), and try the measured overlap with scalelab predict --overlap."
                    if term == "backward_ms"
                    else ""
                ),
                "prediction_error",
                run.name,
            )
        )
    return findings


def _cpu_bf16_rule(runs: Sequence[Run]) -> list[Finding]:
    """fp32 runs whose compute dominates the step, on CPUs with AMX bf16 tiles (summary.json's
    system.cpu_bf16): bf16 autocast measured 1.13-1.97x faster per step on such a CPU."""
    hits = []
    for run in runs:
        cpu = run.system.get("cpu_bf16") or {}
        step, fwd, bwd = (run.phase(k) for k in ("step_ms", "forward_ms", "backward_ms"))
        if not (
            run.summary.get("device_type") == "cpu"
            and run.summary.get("precision") == "fp32"
            and cpu.get("amx_tile") is True
            and step
            and fwd is not None
            and bwd is not None
            and fwd + bwd >= 0.5 * step
        ):
            continue
        hits.append((run.name, f"{run.name} {100 * (fwd + bwd) / step:.0f} %"))
    if not hits:
        return []
    return [
        Finding(
            "info",
            "fp32 on a CPU with AMX: bf16 would likely train faster",
            "these fp32 runs ran on a CPU with AMX bf16 tiles, forward + backward taking this "
            "share of the step: " + ", ".join(text for _, text in hits),
            "Try train.precision=bf16 (autocast on the CPU; fp32 weights, gradients and "
            "optimizer state): on a 2-vCPU AMX Xeon it measured 1.13x (ag_news_small) to "
            "1.97x (ag_news_large) per step with matching losses (benchmarks/cpu_precision.py). "
            "Compare the accuracy, and keep one precision throughout a scaling study.",
            "cpu_bf16",
            ", ".join(name for name, _ in hits),
        )
    ]


def diagnose(runs: Sequence[Run], predictions: Sequence[Prediction] | None = None) -> list[Finding]:
    """All findings for the runs (and predictions, if given), most severe first."""
    findings: list[Finding] = []
    # what the commbench's after-compute times put on waking ranks, per run a prediction checks
    wakes = {id(c.run): c.prediction.wake_ms for c in compare(predictions or [], runs)}
    for group in analyse(runs):
        findings.extend(_scaling_rules(group))
        findings.extend(_forward_shrink_rule(group))
        findings.extend(_compute_contention_rule(group))
    for run in runs:
        findings.extend(_run_rules(run, wakes.get(id(run))))
    findings.extend(_divergence_rule(runs))
    findings.extend(_accuracy_rule(runs))
    findings.extend(_cpu_bf16_rule(runs))
    if predictions:
        findings.extend(_prediction_rule(predictions, runs))
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])
