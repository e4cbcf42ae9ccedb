"""Predict DDP step time at other world sizes from a 1-rank run and a ring all-reduce model.

Cost model (global batch FIXED, so the per-rank batch shrinks as 1/n and every world size runs
the same number of optimizer steps per epoch, hence speedup = step_1 / step_n):

* data_n = data_1/n, h2d_n = h2d_1/n, forward_n = forward_1/n, backward_n = backward_1/n
  (work proportional to the per-rank batch), except the sleep of ``data.delay_per_batch_s``
  (a simulated slow loader: once per micro-batch, whatever its size), which stays;
* optimizer_n = optimizer_1 (every rank updates ALL parameters, this never shrinks);
* other = step_1 - (data+h2d+forward+backward+optimizer)_1, kept constant: 0 for scalelab's own
  timer, whose phases add up to the step (host time between steps, such as progress updates and
  the stop poll, is in data and so is divided by n too: a slightly optimistic simplification);
* all-reduce (ring, nccl-tests bus-bandwidth convention, GB = 1e9 bytes):
  T_ar(n) = sum over buckets b of [alpha + 2(n-1)/n * bytes_b / busbw], with bytes_b what the
  bucket sends: half its fp32 size under an fp16/bf16 comm hook (the casts are not modelled);
  PowerSGD runs are not predicted;
* exposed (non-overlapped) communication: with a measured overlap fraction o,
  exposed = (1-o) * T_ar; on CPU, o = 0 (gloo's all-reduce needs the cores that the ranks'
  compute keeps busy: the overlap measured on the 2-core test machine was 0 %); otherwise
  (accelerators) DDP's bucketed overlap is modelled: the last bucket
  (the first layers, whose gradients are ready last) is always exposed, the other buckets
  overlap with the backward of the remaining layers:
  exposed = t_last + max(0, (T_ar - t_last) - backward_n/k * (1 - 1/num_buckets)),
  where k = grad_accum_steps (only the last micro-batch's backward runs alongside the sync);
* on CPU, a step's first collective is reached straight from compute, not from the warm loop of
  the size sweep: it costs what the commbench measured for all-reduces after 20 ms of compute
  (last rank to arrive; `SyncLatency`: the mean at 4 bytes, 64 KB, 1 MB and 16 MB, or in older
  files the 4-byte median) instead of its back-to-back time, so exposed += w(b_1) once per step,
  whatever the overlap, with w(b) = max(0, L(b) - T_ar,b2b(b)) at the commbench's world size, L
  interpolated in log(bytes) between the measured sizes (held constant beyond them) and b_1 the
  step's first all-reduce (gloo on the 2-vCPU test machine, ad hoc: medians of 0.2 ms at 4 bytes
  but 1.7-3.5 ms at 64 KB to 1.5 MB, against 0.3-0.8 ms back to back, and a p90 of 4-7 ms: a
  rank that waits from compute sleeps, and waking it costs);
* CPU ranks: a rank's compute speed follows its threads, so with t_1 threads in the base run
  and t_n per rank at n ranks, h2d, forward and backward are also scaled by t_1/t_n (perfect
  thread scaling: optimistic when t_n > t_1, pessimistic when t_n < t_1; the optimizer, which
  measured no gain from a second thread on the 2-core test machine, and the data phase, Python
  work on one thread, are not scaled). t_n is the thread count of the measured run it is
  compared with (`threads_per_rank`), else t_1;
* step_n = data_n + h2d_n + forward_n + backward_n + optimizer + other + exposed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.analysis.collect import AnalysisError, Run, is_number, read_json
from scalelab.analysis.scaling import cpu_threads_per_rank, group_key

PHASES = ("data_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms")


class NoBandwidthFit(AnalysisError):
    """Valid all-reduce timings from which no bandwidth can be fitted (pure noise)."""


def ring_factor(world_size: int) -> float:
    """Bytes each rank sends per byte of buffer in a ring all-reduce: 2(n-1)/n."""
    return 2.0 * (world_size - 1) / world_size


def allreduce_ms(nbytes: float, world_size: int, *, busbw_gbps: float, alpha_ms: float) -> float:
    """Time of one ring all-reduce of `nbytes`; 0 on one rank (nothing to synchronise)."""
    if world_size <= 1:
        return 0.0
    # bytes / (GB/s * 1e9) s = bytes / (busbw * 1e6) ms.
    return alpha_ms + ring_factor(world_size) * nbytes / (busbw_gbps * 1e6)


@dataclass
class Prediction:
    world_size: int
    step_ms: float
    compute_ms: float
    """forward + backward per step (without exposed communication)."""
    comm_ms: float
    """T_ar: all-reduce time of all buckets back to back."""
    exposed_comm_ms: float
    speedup: float
    efficiency: float
    data_ms: float = 0.0
    h2d_ms: float = 0.0
    forward_ms: float = 0.0
    backward_ms: float = 0.0
    optimizer_ms: float = 0.0
    other_ms: float = 0.0
    wake_ms: float = 0.0
    """Of comm_ms: what the step's first all-reduce costs beyond its back-to-back time because
    it is reached from compute (CPU runs with a commbench's after-compute times; else 0)."""
    base_run: str = ""
    group: tuple[Any, ...] = ()
    """scaling.group_key of the base run: predictions are only compared with that group."""
    threads_per_rank: float | None = None
    """CPU runs: the threads per rank this prediction assumes (None off CPU or not recorded)."""
    base_summary_ids: tuple[int, ...] = field(default=(), compare=False, repr=False)
    """id() of the base runs' summary dicts: `compare` skips the base runs themselves."""
    wire_layout: tuple[Any, ...] = ()
    """`comm_layout` of the base run: predictions are only compared with runs that sent the
    same collectives (the prediction models the base run's buckets, not the measured run's)."""


def _bucket_bytes(summary: dict[str, Any]) -> list[int]:
    comm = summary.get("comm") or {}
    buckets = [int(b) for b in comm.get("bucket_bytes") or [] if b]
    if not buckets and comm.get("grad_bytes"):
        # No bucket layout recorded: treat all gradients as one bucket.
        buckets = [int(comm["grad_bytes"])]
    if not buckets:
        raise AnalysisError(
            f"run {summary.get('run_name')}: summary.json has no comm.bucket_bytes/grad_bytes"
        )
    return buckets


#: bytes a comm hook sends per gradient byte (DDP's buckets; the embedding rows go unhooked)
HOOK_WIRE_FACTOR = {"none": 1.0, "fp16": 0.5, "bf16": 0.5}


def wire_bucket_bytes(
    buckets: Sequence[int], comm_hook: str | None, embedding_rows: bool
) -> list[int] | None:
    """The bytes each bucket of `buckets` puts on the wire under `comm_hook` (fp16/bf16 send
    half; the last bucket is the token-embedding rows when ``embedding_rows``, which no hook
    compresses). None for PowerSGD, whose low-rank all-reduces this model does not describe."""
    factor = HOOK_WIRE_FACTOR.get(comm_hook or "none")
    if factor is None:
        return None
    hooked = len(buckets) - 1 if embedding_rows else len(buckets)
    return [int(b * factor) if i < hooked else int(b) for i, b in enumerate(buckets)]


def _wire_bytes(summary: dict[str, Any]) -> list[int]:
    """What a run's buckets send per step (`wire_bucket_bytes` of its comm record)."""
    comm = summary.get("comm") or {}
    hook = comm.get("comm_hook") or "none"
    wire = wire_bucket_bytes(
        _bucket_bytes(summary), hook, comm.get("embedding_grad_sync") == "rows"
    )
    if wire is None:
        raise AnalysisError(
            f"run {summary.get('run_name')}: distributed.comm_hook={hook} is not modelled "
            "(its low-rank all-reduces are not the gradient buckets)"
        )
    return wire


#: relative difference in bytes per step beyond which two runs' gradient traffic is not alike
#: (the embedding rows a global batch uses vary by a few % from run to run)
LAYOUT_BYTES_TOLERANCE = 0.25


def comm_layout(summary: dict[str, Any]) -> tuple[Any, ...]:
    """How a run's gradients cross the wire: (grad_sync, embedding_grad_sync, comm hook,
    bytes sent per step); () when not recorded."""
    comm = summary.get("comm") or {}
    wire = comm.get("wire_bucket_bytes") or comm.get("bucket_bytes")
    if not wire:
        return ()
    return (
        comm.get("grad_sync") or "buckets",
        comm.get("embedding_grad_sync") or "dense",
        comm.get("comm_hook") or "none",
        float(sum(wire)),
    )


def same_layout(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two `comm_layout`s send alike (either unknown: assumed so)."""
    if not a or not b:
        return True
    return a[:3] == b[:3] and abs(a[3] - b[3]) <= LAYOUT_BYTES_TOLERANCE * max(a[3], b[3])


def mean_base(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One base record from repeated 1-rank runs of a group (the scaling baseline's runs): the
    first's summary with each timed phase and the step the mean over the repeats (NaN where a
    repeat has none), so the prediction rests on the same runs as the measured speedups."""
    if len(summaries) == 1:
        return summaries[0]
    timings = [s.get("timing") or {} for s in summaries]
    timing = dict(timings[0])
    for key in (*PHASES, "step_ms"):
        values = [t.get(key) for t in timings]
        ok = all(is_number(v) and math.isfinite(v) for v in values)
        timing[key] = sum(values) / len(values) if ok else float("nan")
    names = ", ".join(str(s.get("run_name")) for s in summaries)
    return {**summaries[0], "timing": timing, "run_name": f"mean of {names}"}


def predict_scaling(
    summary_1rank: dict[str, Any] | Sequence[dict[str, Any]],
    world_sizes: Sequence[int],
    *,
    busbw_gbps: float,
    alpha_ms: float,
    overlap: float | None = None,
    sync_latency: SyncLatency | None = None,
    threads_per_rank: Mapping[int, float] | None = None,
) -> list[Prediction]:
    """Predict per-step time, communication and speedup at each world size (see module doc).

    ``sync_latency``: the commbench's all-reduce times after compute (`load_sync_latency`);
    applied to CPU runs only, where nothing overlaps the all-reduce. ``threads_per_rank``: CPU
    threads per rank at some world sizes (the others keep the base run's). ``summary_1rank``
    may be several repeats of one 1-rank run: their mean timings are the base (`mean_base`).
    """
    repeats = [summary_1rank] if isinstance(summary_1rank, Mapping) else list(summary_1rank)
    if not repeats:
        raise AnalysisError("prediction needs a 1-rank run as its base, got none")
    summary_1rank = mean_base(repeats)
    name = summary_1rank.get("run_name")
    if int(summary_1rank.get("world_size") or 1) != 1:
        raise AnalysisError(f"run {name}: prediction needs a 1-rank run as its base")
    if not (math.isfinite(busbw_gbps) and busbw_gbps > 0):
        raise AnalysisError(f"bus bandwidth must be > 0 GB/s, got {busbw_gbps}")
    if not (math.isfinite(alpha_ms) and alpha_ms >= 0):
        raise AnalysisError(f"all-reduce latency alpha must be >= 0 ms, got {alpha_ms}")
    if overlap is not None and not 0.0 <= overlap <= 1.0:
        raise AnalysisError(f"overlap must be in [0, 1], got {overlap}")
    timing = summary_1rank.get("timing") or {}
    missing = [
        k
        for k in (*PHASES, "step_ms")
        if not (is_number(timing.get(k)) and math.isfinite(timing[k]))
    ]
    if missing:
        raise AnalysisError(
            f"run {name}: summary.json timing has no measured {', '.join(missing)} "
            "(absent, or NaN: no step was timed)"
        )
    base = {k: float(timing[k]) for k in PHASES}
    step_1 = float(timing["step_ms"])
    if step_1 <= 0:
        raise AnalysisError(f"run {name}: summary.json timing.step_ms must be > 0, got {step_1}")
    # Host work outside the timed phases (0 for scalelab's own timer, whose phases add up to the
    # step: host time between steps is in data); clipped at 0 so jitter cannot make it a credit.
    other = max(0.0, step_1 - sum(base.values()))
    buckets = _wire_bytes(summary_1rank)
    accum = max(1, int(summary_1rank.get("grad_accum_steps") or 1))
    alpha = max(0.0, alpha_ms)
    on_cpu = summary_1rank.get("device_type") == "cpu"
    base_threads = cpu_threads_per_rank(summary_1rank)
    for n, t in (threads_per_rank or {}).items():
        if not (is_number(t) and t > 0):
            raise AnalysisError(f"threads per rank must be > 0, got {t!r} at {n} ranks")
    if overlap is None and on_cpu:
        overlap = 0.0  # see module doc: CPU ranks have no idle cores to hide the all-reduce
    # see module doc: the step's first collective wakes ranks that were computing
    wake_ms = 0.0
    if on_cpu and sync_latency is not None:
        wake_ms = sync_latency.wake_ms(buckets[0], busbw_gbps=busbw_gbps, alpha_ms=alpha)
    # the simulated slow loader's sleep per step (one per micro-batch), at most the data wait
    delay_s = (summary_1rank.get("data") or {}).get("delay_per_batch_s") or 0.0
    delay_ms = min(base["data_ms"], 1000.0 * float(delay_s) * accum)
    out = []
    for n in world_sizes:
        if n < 1:
            raise AnalysisError(f"world size must be >= 1, got {n}")
        threads = None
        speed = 1.0  # see module doc: a CPU rank's compute follows its threads
        if base_threads is not None:
            threads = float((threads_per_rank or {}).get(n, base_threads))
            speed = threads / base_threads
        h2d, fwd, bwd = (base[k] / n / speed for k in ("h2d_ms", "forward_ms", "backward_ms"))
        # data.delay_per_batch_s sleeps per micro-batch, whatever the batch size: it stays
        data = (base["data_ms"] - delay_ms) / n + delay_ms
        opt = base["optimizer_ms"]
        times = [allreduce_ms(b, n, busbw_gbps=busbw_gbps, alpha_ms=alpha) for b in buckets]
        wake = wake_ms if n > 1 else 0.0
        times[0] += wake
        t_ar = sum(times)
        if overlap is not None:
            # the wake-up is paid in full: no compute is left to hide it behind (module doc)
            exposed = (1.0 - overlap) * (t_ar - wake) + wake
        else:
            t_last = times[-1]
            hidden_window = bwd / accum * (1.0 - 1.0 / len(buckets))
            exposed = t_last + max(0.0, (t_ar - t_last) - hidden_window)
        step = data + h2d + fwd + bwd + opt + other + exposed
        speedup = step_1 / step
        out.append(
            Prediction(
                world_size=n,
                step_ms=step,
                compute_ms=fwd + bwd,
                comm_ms=t_ar,
                exposed_comm_ms=exposed,
                wake_ms=wake,
                speedup=speedup,
                efficiency=speedup / n,
                data_ms=data,
                h2d_ms=h2d,
                forward_ms=fwd,
                backward_ms=bwd,
                optimizer_ms=opt,
                other_ms=other,
                base_run=str(name or ""),
                group=group_key(summary_1rank),
                threads_per_rank=threads,
                base_summary_ids=tuple(id(r) for r in repeats),
                wire_layout=comm_layout(summary_1rank),
            )
        )
    return out


@dataclass
class Comparison:
    world_size: int
    run_name: str
    measured_step_ms: float
    predicted_step_ms: float
    error_pct: float
    """(predicted - measured) / measured * 100: negative = the model is optimistic."""
    prediction: Prediction
    run: Run
    sets_bandwidth: bool = False
    """The run's own measured all-reduce time set the bandwidth (no commbench file or user value
    was given): its error checks the compute terms, not the cost model's communication."""


def compare(predictions: Sequence[Prediction], runs: Sequence[Run]) -> list[Comparison]:
    """Measured vs predicted step_ms for every run whose world size was predicted.

    Predictions carrying a group key are only matched with runs of that group (same work) whose
    gradients crossed the wire as the base run's would (`comm_layout`: the model prices the base
    run's buckets), CPU predictions only with runs of the threads per rank they assume, and never
    with their own base runs (a prediction from a run is no check of it).
    """
    out = []
    for pred in predictions:
        for run in runs:
            if run.world_size != pred.world_size or not run.phase("step_ms"):
                continue
            if pred.group and group_key(run.summary) != pred.group:
                continue
            if id(run.summary) in pred.base_summary_ids:
                continue
            if not same_layout(pred.wire_layout, comm_layout(run.summary)):
                continue
            threads = cpu_threads_per_rank(run.summary)
            if pred.threads_per_rank and threads and threads != pred.threads_per_rank:
                continue
            measured = run.phase("step_ms")
            out.append(
                Comparison(
                    world_size=pred.world_size,
                    run_name=run.name,
                    measured_step_ms=measured,
                    predicted_step_ms=pred.step_ms,
                    error_pct=(pred.step_ms - measured) / measured * 100.0,
                    prediction=pred,
                    run=run,
                )
            )
    return out


def fit_alpha_beta(results: Sequence[dict[str, Any]], world_size: int) -> tuple[float, float]:
    """Least-squares (alpha_ms, busbw_gbps) of t = alpha + 2(n-1)/n * bytes / busbw.

    `results` are commbench rows with 'bytes' and 'time_ms'. The residuals are relative (weights
    1/t): a sweep spans 4 KB to 256 MB, times over four orders of magnitude, and plain least
    squares would fit the largest messages only, leaving alpha to their noise (a 1 % error at
    256 MB is far more than alpha). A negative intercept (noise at small sizes) is clipped to 0
    and the slope refitted through the origin, also with relative residuals.
    """
    if world_size < 2:
        raise AnalysisError("an all-reduce bandwidth fit needs world_size >= 2")
    rows = [(float(r["bytes"]), float(r["time_ms"])) for r in results]
    if len(rows) < 2:
        raise AnalysisError("an all-reduce bandwidth fit needs at least 2 message sizes")
    x = np.array([b for b, _ in rows]) * ring_factor(world_size)
    t = np.array([ms for _, ms in rows])
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise AnalysisError("an all-reduce bandwidth fit needs finite times > 0 ms")
    slope, alpha = np.polyfit(x, t, 1, w=1.0 / t)  # polyfit weighs residuals by w
    if alpha < 0:
        alpha = 0.0
        slope = float((x / t).sum() / ((x / t) ** 2).sum())  # argmin sum((t - s x)^2 / t^2)
    if slope <= 0:
        raise NoBandwidthFit(
            "all-reduce time does not grow with message size; cannot fit bandwidth"
        )
    return float(alpha), float(1.0 / (slope * 1e6))


def _read_commbench(path: str | Path) -> Any:
    try:
        return read_json(Path(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise AnalysisError(f"{path}: cannot read commbench JSON ({exc})") from None


def _finite(
    path: str | Path,
    field: str,
    value: Any,
    *,
    positive: bool = False,
    at_least: float | None = None,
) -> float:
    """A number from a commbench file, or one line naming the field (also NaN and infinity)."""
    ok = is_number(value) and math.isfinite(value)
    if positive:
        ok, want = ok and value > 0, "a number > 0"
    elif at_least is not None:
        ok, want = ok and value >= at_least, f"a number >= {at_least:g}"
    else:
        want = "a finite number"
    if not ok:
        raise AnalysisError(f"{path}: commbench field {field!r} should be {want}, got {value!r}")
    return float(value)


def load_commbench(path: str | Path) -> tuple[float, float, int]:
    """(alpha_ms, busbw_gbps, world_size) from a `scalelab commbench` JSON file."""
    bench = _read_commbench(path)
    if not isinstance(bench, dict) or "world_size" not in bench:
        raise AnalysisError(f"{path}: not a commbench result (no world_size)")
    world_size = bench["world_size"]
    if not (is_number(world_size) and isinstance(world_size, int) and world_size >= 1):
        raise AnalysisError(
            f"{path}: commbench field 'world_size' should be a whole number >= 1, got {world_size!r}"
        )
    fit = bench.get("fit") or {}
    if not isinstance(fit, dict):
        raise AnalysisError(f"{path}: commbench field 'fit' should be an object, got {fit!r}")
    # busbw 0 is commbench's own "no fit" (its sweep's times did not grow with size): refit below
    if fit.get("busbw_gbps") is not None and fit["busbw_gbps"] != 0:
        busbw = _finite(path, "fit.busbw_gbps", fit["busbw_gbps"], positive=True)
        # a fit's intercept may come out negative (noise at small sizes): clipped, as in our fit
        alpha = _finite(path, "fit.alpha_ms", fit.get("alpha_ms") or 0.0)
        return max(0.0, alpha), busbw, world_size
    results = bench.get("results")
    if not results:
        raise AnalysisError(f"{path}: commbench file has neither a fit nor results")
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise AnalysisError(f"{path}: commbench field 'results' should be a list of objects")
    for i, row in enumerate(results):
        for key in ("bytes", "time_ms"):
            _finite(path, f"results[{i}].{key}", row.get(key), positive=True)
    try:
        alpha, busbw = fit_alpha_beta(results, world_size)
    except AnalysisError as exc:  # e.g. a 1-rank file or one message size: name the file
        raise type(exc)(f"{path}: {exc}") from None
    return alpha, busbw, world_size


def run_backend(run: Run) -> str | None:
    """The backend `run` used; for a 1-rank run, the one it would use at several ranks."""
    used = run.summary.get("backend")
    if used not in (None, "none"):
        return str(used)
    configured = (run.config.get("distributed") or {}).get("backend")
    if configured in ("gloo", "nccl"):
        return str(configured)
    return {"cpu": "gloo", "cuda": "nccl"}.get(str(run.summary.get("device_type")))


def commbench_caveats(
    path: str | Path, run: Run, world_sizes: Sequence[int]
) -> tuple[str | None, str | None]:
    """What to say of predicting `run` at `world_sizes` from the commbench file (read once):
    (a warning when it measured another backend than the run uses, a note when the world sizes
    go beyond the ranks it measured or it waited for its after-compute all-reduces otherwise
    than the run does); None for either that does not apply."""
    bench = _read_commbench(path)
    if not isinstance(bench, dict):
        return None, None
    name = Path(path).name
    notes = [
        n
        for n in (_beyond_measured(bench, name, world_sizes), _wait_mismatch(bench, name, run))
        if n
    ]
    return _backend_mismatch(bench, name, run), "; ".join(notes) or None


def run_wait(run: Run) -> str:
    """How `run`'s ranks wait for the step's first gloo all-reduce, 'spin' or 'block', from
    what its summary records (a 1-rank run records what its config would do at several ranks):
    `comm.collective_wait` for scalelab's own all-reduce (grad_sync=fused, or the embedding
    rows), but DDP's wait, which blocks, where DDP's bucket comes first (grad_sync=buckets) or
    DDP sums every gradient (collective_wait null). Summaries from before the option blocked."""
    if "collective_wait" not in run.comm:
        return "block"
    if run.comm.get("grad_sync") == "buckets" or run.comm["collective_wait"] is None:
        return "block"
    return "spin" if run.comm["collective_wait"] == "spin" else "block"


def _wait_mismatch(bench: dict[str, Any], name: str, run: Run) -> str | None:
    """CPU (gloo) runs, the only ones the wake-up term (`SyncLatency`) applies to: it comes from
    all-reduces the commbench waited for one way (files from before its `wait` field blocked),
    while the run waits the other. None when they agree or the file timed nothing after
    compute."""
    lat = bench.get("sync_latency")
    cpu_gloo = run.summary.get("device_type") == "cpu" and run_backend(run) == "gloo"
    if not (cpu_gloo and isinstance(lat, dict) and lat.get("median_ms") is not None):
        return None
    measured = "spin" if lat.get("wait") == "spin" else "block"
    wanted = run_wait(run)
    if measured == wanted:
        return None
    how = {"spin": "spinning", "block": "blocking"}
    return (
        f"{name} timed its all-reduces after compute {how[measured]}, but run {run.name} waits "
        f"{how[wanted]} (distributed.collective_wait), so the step's wake-up cost is another "
        f"wait's: run scalelab commbench --wait {wanted} to measure the run's"
    )


def _backend_mismatch(bench: dict[str, Any], name: str, run: Run) -> str | None:
    """A GPU's NCCL bandwidth for a CPU run, or gloo for a GPU run: a prediction from links the
    run does not use. None when the backends agree or either is unknown."""
    measured = bench.get("backend")
    wanted = run_backend(run)
    if not isinstance(measured, str) or wanted is None or measured == wanted:
        return None
    where = bench.get("device")
    on = f" on {where}" if isinstance(where, str) and where else ""
    return (
        f"{name} measured {measured}{on}, but run {run.name} "
        f"({run.summary.get('device_type') or 'unknown device'}) uses {wanted}: the prediction "
        f"rests on another link's bandwidth; run scalelab commbench with {wanted} where the "
        "run trains"
    )


def _beyond_measured(bench: dict[str, Any], name: str, world_sizes: Sequence[int]) -> str | None:
    """Predictions beyond the ranks the file measured assume its links (a bandwidth measured on
    one node says nothing of the links between nodes)."""
    measured, nodes = bench.get("world_size"), bench.get("num_nodes")
    beyond = [n for n in world_sizes if is_number(measured) and n > measured]
    if not beyond:
        return None
    where = f" on {nodes} node(s)" if is_number(nodes) else ""
    return (
        f"{name} measured {measured} ranks{where}; the predictions for "
        f"{', '.join(map(str, beyond))} ranks assume the same links (links between nodes are "
        "usually slower: run scalelab commbench at that scale to check)"
    )


@dataclass(frozen=True)
class SyncLatency:
    """All-reduce times after compute from a commbench file: (bytes, ms) by size: the mean of
    each size's calls where the file records sizes, else (older files, 4 bytes only) the median."""

    points: tuple[tuple[float, float], ...]
    world_size: int
    """The ranks the commbench measured them with."""

    def wake_ms(self, nbytes: float, *, busbw_gbps: float, alpha_ms: float) -> float:
        """What an all-reduce of `nbytes` reached from compute costs beyond its back-to-back
        time (alpha + 2(n-1)/n x bytes / busbw at the commbench's world size n), at least 0:
        interpolated in log(bytes) between the measured sizes, the nearest one's beyond them."""
        pts = sorted(self.points)
        ranks = max(2, self.world_size)
        b2b = [allreduce_ms(b, ranks, busbw_gbps=busbw_gbps, alpha_ms=alpha_ms) for b, _ in pts]
        extra = [max(0.0, t - b) for (_, t), b in zip(pts, b2b, strict=True)]
        xs = [math.log(max(b, 1.0)) for b, _ in pts]
        return float(np.interp(math.log(max(nbytes, 1.0)), xs, extra))


def load_sync_latency(path: str | Path) -> SyncLatency | None:
    """The after-compute all-reduce times of a commbench JSON file (`sync_latency`: its 4-byte
    median, or in newer files under ``sizes`` each size's mean); None if not recorded."""
    bench = _read_commbench(path)
    lat = bench.get("sync_latency") if isinstance(bench, dict) else None
    if not isinstance(lat, dict) or lat.get("median_ms") is None:
        return None
    points = [(4.0, _finite(path, "sync_latency.median_ms", lat["median_ms"], at_least=0.0))]
    sizes = lat.get("sizes")
    if sizes is not None:
        if not isinstance(sizes, list) or not all(isinstance(r, dict) for r in sizes):
            raise AnalysisError(
                f"{path}: commbench field 'sync_latency.sizes' should be a list of objects"
            )
        points = []  # the sizes' means replace the 4-byte median
        for i, row in enumerate(sizes):
            where = f"sync_latency.sizes[{i}]"
            nbytes = _finite(path, f"{where}.bytes", row.get("bytes"), positive=True)
            ms = _finite(path, f"{where}.mean_ms", row.get("mean_ms"), at_least=0.0)
            points.append((nbytes, ms))
        if not points:
            raise AnalysisError(f"{path}: commbench field 'sync_latency.sizes' is empty")
    world_size = bench.get("world_size")  # fewer than 2 ranks: SyncLatency.wake_ms takes 2
    return SyncLatency(tuple(points), int(world_size) if is_number(world_size) else 2)


def bandwidth_from_run(run: Run) -> tuple[float, float] | None:
    """(alpha_ms=0, busbw_gbps) implied by a multi-rank run's measured bucket all-reduce time.

    Fallback when no commbench file or user bandwidth is given: the trainer times all buckets
    back to back, so busbw = sum(2(n-1)/n * bytes_b) / allreduce_ms with alpha folded in.
    """
    measured = run.comm_value("allreduce_ms")
    if run.world_size < 2 or not measured:
        return None
    # the bytes the trainer timed: under an fp16/bf16 hook, what the hook sends (older runs
    # recorded no wire_bucket_bytes and timed the fp32 buckets)
    timed = run.comm.get("wire_bucket_bytes")
    try:
        total = sum(int(b) for b in timed) if timed else sum(_bucket_bytes(run.summary))
    except (AnalysisError, TypeError, ValueError):
        return None
    return 0.0, ring_factor(run.world_size) * total / (measured * 1e6)
