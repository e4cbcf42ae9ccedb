"""GPU training benchmark of scalelab's loop: samples/s, epoch time, MFU, peak memory, kernel gaps.

Run on a CUDA machine: ``python benchmarks/gpu.py`` (writes
``benchmarks/results/<date>-<device>-gpu.json``; ``benchmarks/device_check.sh`` is the one-shot
script for a lent GPU). ``--tiny`` runs tiny models for a few steps on any device (CPU
included) so CI can smoke-test the script; such a result is marked ``"smoke_test": true`` and
is not a measurement.

Cases: ``ag_news_small`` (global batch 32 and 256), ``ag_news_large`` (128) and a randomly
initialised DistilBERT (max_seq_len 256 and 128, batch 128; needs ``transformers``, skipped
with a message otherwise). Variants per case: fp32/bf16 x eager/torch.compile, batches padded
to their longest sequence or to a multiple of 16 (``data.pad_multiple``: a handful of
tensor-core-aligned widths), and for the small launch-bound model CUDA graphs via
``torch.compile(mode="reduce-overhead")`` (one recorded graph per batch shape, so on padded
shapes). torch.compile itself marks the sequence length dynamic once it has seen a second width
(automatic dynamic shapes), so one symbolic-length graph serves every later width, padded or
not (``compiled_graphs``); padding bounds the CUDA-graph recordings, not the compiles.

Every case's data is prepared before the first variant runs (no data code, which may fork a
child, runs once CUDA and Inductor's threads exist). Variants run in priority order (the
issue's target configurations first, then the rest) and the JSON is rewritten after each one,
so a run cut short by ``--budget-s`` or a timeout still holds what it measured; a CUDA error
(sticky: every later variant would fail too) stops the run there, exit status 1. Before each
variant compile caches are reset and freed memory returned (``mem_baseline_mb``: what is still
allocated then). Each variant: warm-up (timed as ``warmup_s``): compiled variants first run one
batch of every width a batch can be padded to (3 times each with CUDA graphs: warm-up,
recording, replay), so no compile or CUDA-graph recording lands in the timed block
(``warmup_widths``; ``timed_new_widths`` checks it), then the usual warm-up steps; a short
calibration that sizes the timed block to about ``--seconds``; the timed block; and
``--profile-steps`` steps under ``torch.profiler``, whose trace gives GPU busy time, the idle
gaps between kernels, the top kernels and the CUDA-graph launches (``profile``). Priority-0
variants also time one whole epoch of floor(120,000 / batch) steps, as the sampler drops the
incomplete tail (``epoch_time_s_measured``, ``epoch_samples_measured``; the bundled or given
rows are cycled, as the study's full split would be read once). ``cuda_graphs`` is the mode
asked for; ``cudagraph_skips`` counts the graphs Inductor ran without CUDA graphs, and
``profile.graph_launches_per_step`` shows the replays.

MFU (model FLOPs utilisation) = achieved model FLOP/s / the device's dense bf16 peak
(``PEAK_BF16_TFLOPS``; the bf16 peak is used for fp32 runs too, so fp32 MFU reads low by
design; fp32 matmuls run as TF32, ``tf32``). Training FLOPs per step are counted analytically
from REAL tokens (padding excluded, so the figure measures useful work; the padding each batch
still computes, at the width ``make_batch`` pads it to, is reported separately as
``padding_overhead``)::

    6 * N_body * real_tokens                    # matmuls: forward 2N, backward 4N per token
    + 6 * N_head * samples                      # the classification head: once per sample
    + sum over samples of 12 * L * T_i**2 * d   # attention scores QK^T and weights x V:
                                                # 2 matmuls x 2 T^2 d FLOPs forward, x3 with backward

where N_body = the parameters less the token/position embedding tables (a lookup, not a matmul)
and the head, N_head = the head's parameters (scalelab's ``head`` on the pooled tokens,
DistilBERT's ``pre_classifier`` and ``classifier`` on the first token), L = layers, d = model
width, T_i = the sample's real length.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    ScalelabStepper,
    load_preset,
    print_table,
    run_header,
    shared_data_overrides,
    write_result,
)

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name key. A key matches as whole
#: words, case-insensitively ("A100" not in "RTX A1000", "H200" not in "GH200"); the longest
#: (most specific) matching key wins, so "H100 PCIe" is found before "H100".
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("GH200", 989.0),
    ("H200", 989.0),  # SXM
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),  # SXM and PCIe alike
)
EPOCH_SAMPLES = 120_000  # the full AG News training split
PAD_MULTIPLE = 16
#: Modules applied once per sample (to the pooled or first token), not to every token.
HEAD_MODULES = ("head", "pre_classifier", "classifier")
#: A CUDA error leaves the context unusable: every later variant would fail the same way.
STICKY_CUDA_ERRORS = ("CUDA error", "illegal memory access")


def peak_tflops(device_name: str) -> float | None:
    for key, peak in sorted(PEAK_BF16_TFLOPS, key=lambda kp: -len(kp[0])):
        words = r"[\s_-]*".join(re.escape(w) for w in key.split())
        if re.search(rf"(?<![a-z0-9]){words}(?![a-z0-9])", device_name, re.IGNORECASE):
            return peak
    return None


def waits_note(profile: dict[str, Any]) -> str:
    """The table's note on a profile whose steps made the host wait for the GPU (host syncs,
    copies from or to pageable memory: `scalelab.profiling.gpu_timeline`); '' when none."""
    parts = [
        f"{label} {profile[key]:.2g}/step"
        for key, label in (
            ("host_syncs_per_step", "syncs"),
            ("pageable_copies_per_step", "pageable"),
        )
        if profile.get(key)
    ]
    return ", ".join(parts)


def sticky_cuda_error(message: str) -> bool:
    return any(m in message for m in STICKY_CUDA_ERRORS)


@dataclass(frozen=True)
class ModelShape:
    n_body: int  # parameters applied to every token: all less embedding tables and the head
    n_head: int  # the classification head's parameters, applied once per sample
    layers: int
    width: int

    @property
    def n_nonembedding(self) -> int:
        return self.n_body + self.n_head


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Parameter split, layers and width of a scalelab transformer or DistilBERT."""
    n_emb = n_head = 0
    for name, p in model.named_parameters():
        parts = name.split(".")
        if "emb" in name and "norm" not in name.lower():
            n_emb += p.numel()  # tok_emb/pos_emb, DistilBERT's embeddings.* tables (not LayerNorm)
        elif len(parts) > 1 and parts[-2] in HEAD_MODULES:
            n_head += p.numel()
    n_total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "blocks"):
        layers, width = len(model.blocks), model.tok_emb.embedding_dim
    else:  # DistilBERT wrapper
        cfg = model.net.config
        layers, width = cfg.n_layers, cfg.dim
    return ModelShape(n_total - n_emb - n_head, n_head, layers, width)


def train_flops(shape: ModelShape, real_tokens: int, real_tokens_sq: int, samples: int) -> float:
    """Analytic training FLOPs (see the module docstring)."""
    return (
        6.0 * shape.n_body * real_tokens
        + 6.0 * shape.n_head * samples
        + 12.0 * shape.layers * shape.width * real_tokens_sq
    )


def inductor_counter(name: str) -> int:
    """torch._dynamo's counters["inductor"][name], 0 where it was never counted."""
    from torch._dynamo.utils import counters

    return int(counters.get("inductor", {}).get(name, 0))


# ----------------------------------------------------------------------------- what runs, in order


@dataclass(frozen=True)
class Variant:
    precision: str  # fp32 | bf16
    compile: str  # "" (eager) | "default" | "reduce-overhead" (CUDA graphs)
    padding: str  # longest | multiple (of PAD_MULTIPLE) | max (max_seq_len, the study's way)
    priority: int  # 0: the target configurations; 1: their eager references; 2: the rest

    @property
    def label(self) -> str:
        pad = {"longest": "", "multiple": f" pad%{PAD_MULTIPLE}", "max": " pad=max"}[self.padding]
        return f"{self.precision} {self.compile or 'eager'}{pad}"


def cases(tiny: bool) -> list[tuple[str, str, list[str]]]:
    """(case name, preset, overrides)."""
    if tiny:
        small = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.d_ff=64"]
        small += ["model.vocab_size=2000", "model.max_seq_len=64"]
        return [
            ("ag_news_small-b32", "ag_news_small", [*small, "train.batch_size=32"]),
            ("ag_news_small-b256", "ag_news_small", [*small, "train.batch_size=256"]),
        ]
    return [
        ("ag_news_small-b32", "ag_news_small", ["train.batch_size=32"]),
        ("ag_news_small-b256", "ag_news_small", ["train.batch_size=256"]),
        ("ag_news_large-b128", "ag_news_large", ["train.batch_size=128"]),
        (
            "distilbert-seq256-b128",
            "ag_news_distilbert",
            ["model.max_seq_len=256", "train.batch_size=128"],
        ),
        (
            "distilbert-seq128-b128",
            "ag_news_distilbert",
            ["model.max_seq_len=128", "train.batch_size=128"],
        ),
    ]


#: The configurations the issue sets targets for: (case, variant) pairs of priority 0.
TARGET_CASES = ("ag_news_small-b32", "ag_news_large-b128", "distilbert-seq256-b128")


def variants(case: str, cuda: bool, tiny: bool) -> list[Variant]:
    """The variants of a case. On CPU (a smoke test of the script, not a measurement) one eager
    fp32 variant, also padded to a multiple so that path runs too (CPU bf16 is measured by
    cpu_precision.py; compile is slow to smoke-test)."""
    if not cuda:
        return [Variant("fp32", "", "longest", 0), Variant("fp32", "", "multiple", 1)]
    target = case in TARGET_CASES
    out = [
        Variant("fp32", "", "longest", 1 if target else 2),
        Variant("bf16", "", "longest", 1 if target else 2),
        Variant("fp32", "default", "multiple", 2),
        Variant("bf16", "default", "longest", 2),
    ]
    if case.startswith("ag_news_small") and not tiny:
        # Launch-bound: CUDA graphs replay forward and backward in one launch each.
        out.append(Variant("bf16", "reduce-overhead", "multiple", 0 if target else 2))
        out.append(Variant("bf16", "reduce-overhead", "max", 2))  # one shape, 3x the tokens
        out.append(Variant("bf16", "default", "multiple", 2))
    else:
        out.append(Variant("bf16", "default", "multiple", 0 if target else 2))
    return out


def plan(tiny: bool, cuda: bool, only: list[str]) -> list[tuple[str, str, list[str], Variant]]:
    """(case, preset, overrides, variant) in run order: by priority, then case order."""
    jobs = [
        (case, preset, over, v)
        for case, preset, over in cases(tiny)
        if not only or any(case.startswith(o) for o in only)
        for v in variants(case, cuda, tiny)
    ]
    return sorted(jobs, key=lambda j: j[3].priority)  # stable: case order within a priority


# ----------------------------------------------------------------------------- profiler trace


def profile_steps(stepper: ScalelabStepper, steps: int) -> dict[str, Any]:
    """Run `steps` steps under torch.profiler; the trace's GPU timeline (`scalelab.profiling`)."""
    from scalelab.profiling import StepProfiler

    stepper.sync()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof = StepProfiler(steps, 0, stepper.device, trace)
        prof.before_step(0)
        for _ in range(steps):
            stepper.step()
            prof.after_step()
        out = dict(prof.result or {})
        try:  # (the figures above must survive an unreadable trace)
            out["graph_launches_per_step"] = graph_launches(trace) / steps
        except (OSError, ValueError) as exc:
            out["graph_launches_error"] = f"{type(exc).__name__}: {exc}"
    out.pop("trace", None)  # a temporary file
    return out


def graph_launches(trace_path: Path) -> int:
    """CUDA-graph replays in a chrome trace: cudaGraphLaunch (or the driver's cuGraphLaunch) calls."""
    events = json.loads(trace_path.read_text(encoding="utf-8")).get("traceEvents", [])
    return sum(
        1
        for e in events
        if isinstance(e, dict)
        and e.get("cat") in ("cuda_runtime", "cuda_driver")
        and "GraphLaunch" in str(e.get("name", ""))
    )


# ----------------------------------------------------------------------------- one variant


def width_batches(stepper: ScalelabStepper) -> dict[int, np.ndarray]:
    """One per-rank batch for every width a training batch can be padded to, by width.

    A batch's width is that of its longest example (`ScalelabStepper.width`), and an example can
    be a batch's longest only with at least per_rank - 1 examples no longer than it; so these are
    all the widths any epoch's batches can have (the sampler yields some of them). For each
    width the batch is the per_rank examples up to the shortest such longest example.
    """
    lengths = np.asarray(stepper.data.train.lengths)
    per_rank = stepper.sampler.per_rank
    order = np.argsort(lengths, kind="stable")
    by_len = lengths[order]
    out: dict[int, np.ndarray] = {}
    for longest in np.unique(by_len[per_rank - 1 :]):  # ascending
        i = max(per_rank - 1, int(np.searchsorted(by_len, longest)))
        idx = np.ascontiguousarray(order[i - per_rank + 1 : i + 1])
        out.setdefault(stepper.width(idx), idx)
    return out


def warm_every_width(stepper: ScalelabStepper, repeats: int) -> int:
    """Run each width's batch (`width_batches`) `repeats` times in a row; the steps taken.

    torch.compile compiles a new shape on its first step; with CUDA graphs (reduce-overhead)
    the first step of a shape warms up, the second records its graph, the third replays it.
    """
    steps = 0
    batches = list(width_batches(stepper).values())
    # The first width compiles a static-shape graph, the second a dynamic one that then serves
    # every width, the first too: the first width runs again at the end so that its steps on
    # the dynamic graph (with CUDA graphs: its warm-up and recording) happen here, not timed.
    for idx in [*batches, *batches[:1]] if len(batches) > 1 else batches:
        micro = [idx] * stepper.cfg.train.grad_accum_steps
        for _ in range(repeats):
            stepper.step(micro)
            steps += 1
    return steps


def fresh_device_state(device: torch.device) -> int | None:
    """Drop compile caches (and CUDA graphs) and freed memory before a variant; bytes still
    allocated on the GPU then (None on CPU). Peak memory counts from here."""
    torch._dynamo.reset()  # each variant compiles from scratch, not on another's graphs
    gc.collect()
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def bench_variant(
    cfg,
    data,
    v: Variant,
    *,
    steps: int | None,
    seconds: float,
    warmup: int,
    profile: int,
    full_epoch: bool,
    publish: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One variant's figures. `publish` gets them as they grow (after the timed block, after the
    whole epoch), so a run cut off by the deadline inside the epoch or the profile keeps them."""
    cfg.train.precision = v.precision
    cfg.data.pad_to_max_len = v.padding == "max"
    cfg.data.pad_multiple = PAD_MULTIPLE if v.padding == "multiple" else 1
    cfg.train.compile = bool(v.compile)  # the trainer's own switch and mode, as fit reads them
    cfg.train.compile_mode = v.compile or "default"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from torch._dynamo.utils import counters

    baseline = fresh_device_state(device)
    graphs_before = int(counters["stats"].get("unique_graphs", 0))  # reset() keeps counters
    skips_before = inductor_counter("cudagraph_skips")
    stepper = ScalelabStepper(cfg, data, device=device)
    t0 = time.perf_counter()
    width_steps = warm_every_width(stepper, 1 if v.compile == "default" else 3) if v.compile else 0
    for _ in range(warmup):
        stepper.step()
    stepper.sync()
    warmup_s = time.perf_counter() - t0
    warm_widths = set(stepper.width_steps)
    if steps is None:  # size the timed block from a short calibration
        calib = stepper.run(10, warmup_steps=0)
        steps = int(min(3000, max(20, math.ceil(seconds / max(calib["elapsed_s"] / 10, 1e-6)))))
    seen = set(stepper.width_steps)  # warm-up and calibration
    res = stepper.run(steps, warmup_steps=0)
    timed_new = sorted(set(res["widths"]) - seen)
    shape = model_shape(stepper.model)
    flops = train_flops(shape, res["real_tokens"], res["real_tokens_sq"], res["samples"])
    achieved = flops / res["elapsed_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name)
    out: dict[str, Any] = {
        "variant": v.label,
        "priority": v.priority,
        "precision": v.precision,
        "compile": v.compile or "off",
        "cuda_graphs": v.compile == "reduce-overhead",  # asked for; see cudagraph_skips
        "padding": v.padding,
        "pad_multiple": cfg.data.pad_multiple,
        "pad_to_max_len": cfg.data.pad_to_max_len,
        "samples_per_s": res["samples_per_s"],
        "step_ms": res["step_ms"],
        "epoch_time_s_120k": EPOCH_SAMPLES / res["samples_per_s"],
        "real_tokens_per_step": res["real_tokens"] / steps,
        "padding_overhead": res["padded_tokens"] / max(1, res["real_tokens"]) - 1.0,
        "model_tflops_per_s": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_bf16_tflops": peak,
        "num_params": stepper.num_params,
        "num_params_nonembedding": shape.n_nonembedding,
        "num_params_head": shape.n_head,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "phase_ms": res["phase_ms"],
    }
    if v.compile:  # a new batch width compiles (and with CUDA graphs records) a graph
        out["warmup_width_steps"] = width_steps  # each width's batch first (warm_every_width)
        out["warmup_widths"] = len(warm_widths)  # distinct widths seen in the warm-up
        out["timed_widths"] = len(res["widths"])
        out["timed_new_widths"] = timed_new  # widths first seen in the timed block
        out["timed_saw_new_width"] = bool(timed_new)
    if v.precision == "fp32":  # TF32 tensor-core matmuls (main() enables them on CUDA)
        out["tf32"] = device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)
    if publish is not None:
        publish({**out, "partial": "timed block only: the run ended inside this variant"})
    if full_epoch:
        n = EPOCH_SAMPLES // cfg.train.batch_size  # the sampler drops an epoch's incomplete tail
        seen = set(stepper.width_steps)
        try:  # an epoch that fails (out of memory, a graph) must not lose the timed block
            ep = stepper.run(n, warmup_steps=0)
        except Exception as exc:
            out["epoch_error"] = f"{type(exc).__name__}: {exc}"
        else:
            ep_flops = train_flops(shape, ep["real_tokens"], ep["real_tokens_sq"], ep["samples"])
            out["epoch_time_s_measured"] = ep["elapsed_s"]
            out["epoch_steps"] = n
            out["epoch_samples_measured"] = ep["samples"]
            if v.compile:
                out["epoch_new_widths"] = sorted(set(ep["widths"]) - seen)
            out["epoch_mfu"] = ep_flops / ep["elapsed_s"] / (peak * 1e12) if peak else None
        if publish is not None and profile:
            publish({**out, "partial": "no profile: the run ended inside this variant's profile"})
    if profile:
        try:
            out["profile"] = profile_steps(stepper, profile)
        except Exception as exc:  # a profiler failure must not lose the timing
            out["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    if device.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(device)
        out["peak_mem_mb"] = peak_bytes / 2**20
        out["mem_baseline_mb"] = baseline / 2**20
        out["peak_mem_mb_above_baseline"] = (peak_bytes - baseline) / 2**20
    else:
        out["peak_mem_mb"] = out["mem_baseline_mb"] = out["peak_mem_mb_above_baseline"] = None
    if v.compile:  # graphs dynamo compiled for this variant (recompiles for new shapes too)
        out["compiled_graphs"] = int(counters["stats"].get("unique_graphs", 0)) - graphs_before
        # graphs Inductor ran without CUDA graphs (e.g. a CPU op or a mutated input); 0 with
        # reduce-overhead means every compiled graph was eligible
        out["cudagraph_skips"] = inductor_counter("cudagraph_skips") - skips_before
    del stepper
    return out


def prepare_cases(
    jobs: list[tuple[str, str, list[str], Variant]],
    data_over: list[str],
    start: float,
    budget_s: float,
) -> tuple[dict[str, tuple[Any, Any]], dict[str, str], dict[str, float]]:
    """Config and prepared data of every case the jobs need, in run order, before any variant
    runs: ({case: (cfg, data)}, {case: why skipped}, {case: seconds}). Stops preparing once
    `budget_s` is spent (those cases' variants are then skipped for the budget)."""
    from scalelab.data import prepare_data

    prepared: dict[str, tuple[Any, Any]] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for case, preset, overrides, _ in jobs:
        if case in prepared or case in skipped:
            continue
        if time.perf_counter() - start > budget_s:
            break
        t0 = time.perf_counter()
        try:
            cfg = load_preset(preset, [*data_over, *overrides, "output.progress=none"])
            if cfg.model.arch == "distilbert":
                try:
                    import transformers  # noqa: F401
                except ImportError:
                    skipped[case] = "skipped: needs `transformers` (pip install 'scalelab[hf]')"
            if case not in skipped:
                prepared[case] = (cfg, prepare_data(cfg))
        except Exception as exc:  # a case that cannot start must not stop the others
            skipped[case] = f"skipped: {type(exc).__name__}: {exc}"
        seconds[case] = time.perf_counter() - t0
        if case in skipped:
            print(f"{case}: {skipped[case]}", flush=True)
        else:
            print(f"{case}: data prepared ({seconds[case]:.1f} s)", flush=True)
    return prepared, skipped, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tiny", action="store_true", help="tiny models, few steps: a smoke test (CPU is fine)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default: ~--seconds)"
    )
    p.add_argument("--seconds", type=float, default=2.0, help="timed block length per variant")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (default 10; 40 with compile, 80 with CUDA graphs); compiled "
        "variants first also run one batch of every width",
    )
    p.add_argument(
        "--profile-steps",
        type=int,
        default=None,
        help="steps under torch.profiler per variant (default 5; tiny 2; 0 = off)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="start no new variant after this many seconds (the rest are listed as skipped)",
    )
    p.add_argument("--only", default="", help="comma-separated case-name prefixes to run")
    p.add_argument(
        "--max-priority", type=int, default=2, help="0: target configurations only; 1: + eager"
    )
    p.add_argument("--no-full-epoch", action="store_true", help="skip the whole-epoch timing")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="use <dir>/ag_news files instead of the bundled sample",
    )
    p.add_argument("--cache-dir", default="", help="scalelab data cache folder")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    start = time.perf_counter()
    cuda = torch.cuda.is_available()  # (no CUDA context yet: get_device_name below makes one)
    if not cuda and not args.tiny:
        print("gpu.py: no CUDA device; run with --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    if args.data_dir and not (args.data_dir / "ag_news").is_dir():
        print(f"gpu.py: --data-dir {args.data_dir} has no ag_news folder", file=sys.stderr)
        return 2
    steps = args.steps or (3 if args.tiny else None)
    profile = args.profile_steps if args.profile_steps is not None else (2 if args.tiny else 5)
    data_over = shared_data_overrides(args.data_dir) if args.data_dir else ["data.source=sample"]
    if args.cache_dir:
        data_over.append(f"data.cache_dir={args.cache_dir}")
    only = [o for o in args.only.split(",") if o]
    jobs = [j for j in plan(args.tiny, cuda, only) if j[3].priority <= args.max_priority]
    # All data first: the data code may fork a child, which can deadlock once CUDA and
    # Inductor's compile threads exist.
    prepared, skipped, prep_s = prepare_cases(jobs, data_over, start, args.budget_s)

    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    if cuda:  # fp32 matmuls on tensor cores (TF32), as users run them; each fp32 row says so
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    day = datetime.now().strftime("%Y-%m-%d")
    out = args.out or RESULTS_DIR / f"{day}-{slug}{'-smoke' if args.tiny else ''}-gpu.json"
    result: dict[str, Any] = {
        **run_header(None if argv is None else [sys.argv[0], *argv]),
        "smoke_test": args.tiny,
        "note": "smoke test with tiny models: NOT a measurement" if args.tiny else "measurement",
        "data": str(args.data_dir / "ag_news") if args.data_dir else "bundled sample",
        "epoch_samples": EPOCH_SAMPLES,
        "mfu_definition": "analytic training FLOPs from real (unpadded) tokens: "
        "6*N_body*tokens + 6*N_head*samples + 12*L*T^2*d per sample (N_body: parameters less "
        "embedding tables and the classification head); / dense bf16 peak of the device",
        "peak_bf16_tflops": peak_tflops(device_name),
        "complete": False,
        "data_prep_s": prep_s,
        "cases": {},
        "skipped": skipped,
    }
    rows = []
    for i, (case, _preset, _overrides, v) in enumerate(jobs):
        key = f"{case} {v.label}"
        if case in result["skipped"]:
            continue
        if time.perf_counter() - start > args.budget_s or case not in prepared:
            # (a case is unprepared only when the budget ran out while preparing data)
            result["skipped"][key] = f"time budget ({args.budget_s:.0f} s) spent"
            print(f"{key}: skipped, time budget spent", flush=True)
            continue
        cfg, data = prepared[case]
        warmup = args.warmup
        if warmup is None:
            warmup = 1 if args.tiny else {"": 10, "default": 40}.get(v.compile, 80)
        t0 = time.perf_counter()
        slot: dict[str, Any] = {
            "variant": v.label,
            "priority": v.priority,
            "partial": "started: the run ended before this variant's timed block did",
        }
        result["cases"].setdefault(case, []).append(slot)
        write_result(out, result)

        def publish(partial: dict[str, Any], slot: dict[str, Any] = slot, t0: float = t0) -> None:
            slot.clear()
            slot.update(partial, wall_s=time.perf_counter() - t0)
            write_result(out, result)

        try:
            r = bench_variant(
                cfg,
                data,
                v,
                steps=steps,
                seconds=args.seconds,
                warmup=warmup,
                profile=profile,
                full_epoch=cuda and v.priority == 0 and not args.no_full_epoch,
                publish=publish,
            )
        except Exception as exc:  # one failing variant (e.g. compile) must not lose the others
            r = {
                "variant": v.label,
                "priority": v.priority,
                "error": f"{type(exc).__name__}: {exc}",
            }
        r["wall_s"] = time.perf_counter() - t0
        slot.clear()
        slot.update(r)
        write_result(out, result)  # after every variant: a cut-short run keeps what it measured
        if "error" in r:
            rows.append([case, v.label, "-", "-", "-", "-", "-", r["error"][:60]])
            print(f"{key}: {r['error'][:200]}", flush=True)
        else:
            prof = r.get("profile") or {}
            busy = prof.get("gpu_busy_fraction")
            epoch = r.get("epoch_time_s_measured", r["epoch_time_s_120k"])
            rows.append(
                [
                    case,
                    v.label,
                    f"{r['samples_per_s']:,.0f}",
                    f"{epoch:,.2f}" + ("" if "epoch_time_s_measured" in r else " *"),
                    f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a",
                    f"{100 * busy:.0f} %" if busy is not None else "n/a",
                    f"{r['peak_mem_mb']:,.0f}" if r["peak_mem_mb"] is not None else "n/a",
                    waits_note(prof),
                ]
            )
            print(f"{key}: {r['samples_per_s']:,.0f} samples/s, epoch {epoch:.2f} s", flush=True)
        error = (
            r.get("error") or r.get("epoch_error") or (r.get("profile") or {}).get("error") or ""
        )
        if sticky_cuda_error(error):  # the context is broken: stop here (the JSON is written)
            result["aborted"] = f"{key}: {error[:500]}"
            for later, *_, lv in jobs[i + 1 :]:
                if later not in result["skipped"]:
                    result["skipped"][f"{later} {lv.label}"] = f"not run: CUDA error in {key}"
            print(
                f"gpu.py: stopped after a CUDA error in {key}; later variants not run", flush=True
            )
            break
    result["complete"] = "aborted" not in result and not any(
        "budget" in m for m in result["skipped"].values()
    )
    result["wall_s"] = time.perf_counter() - start
    write_result(out, result)
    print()
    print_table(
        rows,
        ["case", "variant", "samples/s", "s/120k epoch", "MFU", "GPU busy", "peak MB", "note"],
    )
    print("* = from samples/s of the timed block; others: one whole 120k-sample epoch timed")
    if args.tiny:
        print("\n--tiny: smoke test with tiny models, not a measurement")
    print(f"wrote {out}")
    return 1 if "aborted" in result else 0


if __name__ == "__main__":
    code = main()  # every result is written by now
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's teardown: after torch.profiler on CUDA, CUPTI's teardown at exit can
    # hang the process; keeping CUPTI attached instead (TEARDOWN_CUPTI=0) slows every later
    # kernel launch, which would bias the variants timed after the first profile.
    os._exit(code)
