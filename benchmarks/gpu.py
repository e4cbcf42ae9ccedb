"""GPU training benchmark of scalelab's loop: samples/s, epoch time, MFU, peak memory, kernel gaps.

Run on a CUDA machine: ``python benchmarks/gpu.py`` (writes
``benchmarks/results/<date>-<device>-gpu.json``; ``benchmarks/device_check.sh`` is the one-shot
script for a lent GPU). ``--tiny`` runs tiny models for a few steps on any device (CPU
included) so CI can smoke-test the script; such a result is marked ``"smoke_test": true`` and
is not a measurement.

Cases: ``ag_news_small`` (global batch 32 and 256), ``ag_news_large`` (128) and a randomly
initialised DistilBERT (max_seq_len 256 and 128, batch 128; needs ``transformers``, skipped
with a message otherwise). Variants per case: fp32/bf16 x eager/torch.compile, batches padded
to their longest sequence or to a multiple of 16 (``data.pad_multiple``: a handful of shapes,
so compile and CUDA graphs see few), and for the small launch-bound model CUDA graphs via
``torch.compile(mode="reduce-overhead")`` (one graph per batch shape, so on padded shapes).

Variants run in priority order (the issue's target configurations first, then the rest) and
the JSON is rewritten after each one, so a run cut short by ``--budget-s`` or a timeout still
holds what it measured. Each variant: warm-up steps (compile happens here; timed as
``warmup_s``), a short calibration that sizes the timed block to about ``--seconds``, the timed
block, and ``--profile-steps`` steps under ``torch.profiler``, whose trace gives GPU busy
time, the idle gaps between kernels and the top kernels (``profile``). Priority-0 variants also
time one whole 120,000-sample epoch (``epoch_time_s_measured``; the bundled or given rows are
cycled, as the study's full split would be read once).

MFU (model FLOPs utilisation) = achieved model FLOP/s / the device's dense bf16 peak
(``PEAK_BF16_TFLOPS``; the bf16 peak is used for fp32 runs too, so fp32 MFU reads low by
design). Training FLOPs per step are counted analytically from REAL tokens (padding excluded,
so the figure measures useful work; the padding each batch still computes is reported
separately as ``padding_overhead``)::

    6 * N_nonembedding * real_tokens            # matmuls: forward 2N, backward 4N per token
    + sum over samples of 12 * L * T_i**2 * d   # attention scores QK^T and weights x V:
                                                # 2 matmuls x 2 T^2 d FLOPs forward, x3 with backward

where N_nonembedding excludes the token/position embedding tables (a lookup, not a matmul),
L = layers, d = model width, T_i = the sample's real length.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity), matched against the device name in order.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),  # SXM; the PCIe card's peak is lower (756), so its MFU reads low here
    ("A100", 312.0),
)
EPOCH_SAMPLES = 120_000  # the full AG News training split
PAD_MULTIPLE = 16


def peak_tflops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def model_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(non-embedding parameters, layers, width) of a scalelab transformer or DistilBERT."""
    n_emb = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "emb" in name  # tok_emb/pos_emb, DistilBERT's embeddings.* tables
        and "norm" not in name.lower()
        and "LayerNorm" not in name
    )
    n_total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "blocks"):
        layers, width = len(model.blocks), model.tok_emb.embedding_dim
    else:  # DistilBERT wrapper
        cfg = model.net.config
        layers, width = cfg.n_layers, cfg.dim
    return n_total - n_emb, layers, width


def train_flops(
    n_nonemb: int, layers: int, width: int, real_tokens: int, real_tokens_sq: int
) -> float:
    """Analytic training FLOPs (see the module docstring)."""
    return 6.0 * n_nonemb * real_tokens + 12.0 * layers * width * real_tokens_sq


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
    """The variants of a case. On CPU one eager fp32 variant (bf16 autocast is CUDA-only in
    scalelab; compile is slow to smoke-test), padded to a multiple so that path runs too."""
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
        prof = StepProfiler(steps, 0, stepper.device, Path(tmp) / "trace.json")
        prof.before_step(0)
        for _ in range(steps):
            stepper.step()
            prof.after_step()
        out = dict(prof.result or {})
    out.pop("trace", None)  # a temporary file
    return out


# ----------------------------------------------------------------------------- one variant


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
) -> dict[str, Any]:
    cfg.train.precision = v.precision
    cfg.data.pad_to_max_len = v.padding == "max"
    cfg.data.pad_multiple = PAD_MULTIPLE if v.padding == "multiple" else 1
    cfg.train.compile = bool(v.compile)  # the trainer's own switch and mode, as fit reads them
    cfg.train.compile_mode = v.compile or "default"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from torch._dynamo.utils import counters

    if v.compile:
        torch._dynamo.reset()  # each variant compiles from scratch, not on another's graphs
    graphs_before = int(counters["stats"].get("unique_graphs", 0))  # reset() keeps counters
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stepper = ScalelabStepper(cfg, data, device=device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        stepper.step()
    stepper.sync()
    warmup_s = time.perf_counter() - t0
    if steps is None:  # size the timed block from a short calibration
        calib = stepper.run(10, warmup_steps=0)
        steps = int(min(3000, max(20, math.ceil(seconds / max(calib["elapsed_s"] / 10, 1e-6)))))
    res = stepper.run(steps, warmup_steps=0)
    n_nonemb, layers, width = model_shape(stepper.model)
    flops = train_flops(n_nonemb, layers, width, res["real_tokens"], res["real_tokens_sq"])
    achieved = flops / res["elapsed_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name)
    out: dict[str, Any] = {
        "variant": v.label,
        "priority": v.priority,
        "precision": v.precision,
        "compile": v.compile or "off",
        "cuda_graphs": v.compile == "reduce-overhead",
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
        "num_params_nonembedding": n_nonemb,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "phase_ms": res["phase_ms"],
    }
    if full_epoch:
        n = math.ceil(EPOCH_SAMPLES / cfg.train.batch_size)
        ep = stepper.run(n, warmup_steps=0)
        ep_flops = train_flops(n_nonemb, layers, width, ep["real_tokens"], ep["real_tokens_sq"])
        out["epoch_time_s_measured"] = ep["elapsed_s"]
        out["epoch_steps"] = n
        out["epoch_mfu"] = ep_flops / ep["elapsed_s"] / (peak * 1e12) if peak else None
    if profile:
        try:
            out["profile"] = profile_steps(stepper, profile)
        except Exception as exc:  # a profiler failure must not lose the timing
            out["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_mem_mb"] = None
    if v.compile:  # graphs dynamo compiled for this variant (recompiles for new shapes too)
        out["compiled_graphs"] = int(counters["stats"].get("unique_graphs", 0)) - graphs_before
    del stepper
    return out


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
        help="untimed steps first (default 10; 40 with compile, 80 with CUDA graphs)",
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

    from scalelab.config import ConfigError
    from scalelab.data import DataError, prepare_data

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
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
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = (
            True  # fp32 matmuls on tensor cores, as users run them
        )
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
        "6*N_nonembedding*tokens + 12*L*T^2*d per sample; / dense bf16 peak of the device",
        "peak_bf16_tflops": peak_tflops(device_name),
        "complete": False,
        "cases": {},
        "skipped": {},
    }
    only = [o for o in args.only.split(",") if o]
    jobs = [j for j in plan(args.tiny, cuda, only) if j[3].priority <= args.max_priority]
    prepared: dict[str, Any] = {}
    rows = []
    for case, preset, overrides, v in jobs:
        key = f"{case} {v.label}"
        if case in result["skipped"]:
            continue
        if time.perf_counter() - start > args.budget_s:
            result["skipped"][key] = f"time budget ({args.budget_s:.0f} s) spent"
            print(f"{key}: skipped, time budget spent", flush=True)
            continue
        if case not in prepared:
            try:
                cfg = load_preset(preset, [*data_over, *overrides, "output.progress=none"])
                if cfg.model.arch == "distilbert":
                    import transformers  # noqa: F401
                prepared[case] = (cfg, prepare_data(cfg))
            except ImportError:
                msg = "skipped: needs `transformers` (pip install 'scalelab[hf]')"
                print(f"{case}: {msg}", flush=True)
                result["skipped"][case] = msg
                continue
            except (ConfigError, DataError, ValueError) as exc:
                print(f"{case}: skipped: {exc}", flush=True)
                result["skipped"][case] = f"skipped: {exc}"
                continue
        cfg, data = prepared[case]
        warmup = args.warmup
        if warmup is None:
            warmup = 1 if args.tiny else {"": 10, "default": 40}.get(v.compile, 80)
        t0 = time.perf_counter()
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
            )
        except Exception as exc:  # one failing variant (e.g. compile) must not lose the others
            r = {
                "variant": v.label,
                "priority": v.priority,
                "error": f"{type(exc).__name__}: {exc}",
            }
        r["wall_s"] = time.perf_counter() - t0
        result["cases"].setdefault(case, []).append(r)
        write_result(out, result)  # after every variant: a cut-short run keeps what it measured
        if "error" in r:
            rows.append([case, v.label, "-", "-", "-", "-", "-", r["error"][:60]])
            print(f"{key}: {r['error'][:200]}", flush=True)
            continue
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
                "",
            ]
        )
        print(f"{key}: {r['samples_per_s']:,.0f} samples/s, epoch {epoch:.2f} s", flush=True)
    result["complete"] = not any("budget" in m for m in result["skipped"].values())
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
