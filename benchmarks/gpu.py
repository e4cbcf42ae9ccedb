"""GPU training benchmark of scalelab's loop: samples/s, epoch time, MFU and peak memory.

Run on a CUDA machine: ``python benchmarks/gpu.py`` (writes
``benchmarks/results/<date>-<device>-gpu.json``). ``--tiny`` runs tiny models for a few steps
on any device (CPU included) so CI can smoke-test the script; such a result is marked
``"smoke_test": true`` and is not a measurement.

Cases: ``ag_news_small`` (global batch 32 and 256), ``ag_news_large`` (128) and a randomly
initialised DistilBERT (max_seq_len 256 and 128, batch 128; needs ``transformers``, skipped
with a message otherwise). Variants per case: fp32/bf16 x eager/torch.compile, and for the
small launch-bound model CUDA graphs via ``torch.compile(mode="reduce-overhead")`` on batches
padded to max_seq_len (one static shape, so one graph; length bucketing would need a graph
per length).

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
import re
import sys
import time
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


def bench_variant(
    cfg, data, *, steps: int, warmup: int, precision: str, compile_mode: str
) -> dict[str, Any]:
    cfg.train.precision = precision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stepper = ScalelabStepper(cfg, data, device=device, compile_mode=compile_mode)
    res = stepper.run(steps, warmup_steps=warmup)
    n_nonemb, layers, width = model_shape(stepper.model)
    flops = train_flops(n_nonemb, layers, width, res["real_tokens"], res["real_tokens_sq"])
    achieved = flops / res["elapsed_s"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name)
    out = {
        "precision": precision,
        "compile": compile_mode or "off",
        "cuda_graphs": compile_mode == "reduce-overhead",
        "pad_to_max_len": cfg.data.pad_to_max_len,
        "samples_per_s": res["samples_per_s"],
        "step_ms": res["step_ms"],
        "epoch_time_s_120k": EPOCH_SAMPLES / res["samples_per_s"],
        "real_tokens_per_step": res["real_tokens"] / steps,
        "padding_overhead": res["padded_tokens"] / max(1, res["real_tokens"]) - 1.0,
        "model_tflops_per_s": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_bf16_tflops": peak,
        "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        "num_params": stepper.num_params,
        "num_params_nonembedding": n_nonemb,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "phase_ms": res["phase_ms"],
    }
    del stepper
    return out


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


def variants(case: str, cuda: bool, tiny: bool) -> list[tuple[str, str, bool]]:
    """(precision, compile mode, pad_to_max_len) to run for a case."""
    if not cuda:
        return [
            ("fp32", "", False)
        ]  # bf16 autocast is CUDA-only in scalelab; compile is slow to smoke
    out = [
        ("fp32", "", False),
        ("bf16", "", False),
        ("fp32", "default", False),
        ("bf16", "default", False),
    ]
    if case.startswith("ag_news_small") and not tiny:
        # The small model is launch-bound: CUDA graphs replay the whole step in one launch.
        out.append(("bf16", "reduce-overhead", True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tiny", action="store_true", help="tiny models, few steps: a smoke test (CPU is fine)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default 50; tiny 3)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 10, 30 with compile)"
    )
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
    from scalelab.data import prepare_data

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    if not cuda and not args.tiny:
        print("gpu.py: no CUDA device; run with --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    steps = args.steps or (3 if args.tiny else 50)
    data_over = shared_data_overrides(args.data_dir) if args.data_dir else ["data.source=sample"]
    if args.cache_dir:
        data_over.append(f"data.cache_dir={args.cache_dir}")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = (
            True  # fp32 matmuls on tensor cores, as users run them
        )
        torch.backends.cudnn.allow_tf32 = True
    result: dict[str, Any] = {
        **run_header(None if argv is None else [sys.argv[0], *argv]),
        "smoke_test": args.tiny,
        "note": "smoke test with tiny models: NOT a measurement" if args.tiny else "measurement",
        "epoch_samples": EPOCH_SAMPLES,
        "mfu_definition": "analytic training FLOPs from real (unpadded) tokens: "
        "6*N_nonembedding*tokens + 12*L*T^2*d per sample; / dense bf16 peak of the device",
        "peak_bf16_tflops": peak_tflops(device_name),
        "cases": {},
        "skipped": {},
    }
    rows = []
    for case, preset, overrides in cases(args.tiny):
        try:
            cfg = load_preset(preset, [*data_over, *overrides, "output.progress=none"])
            if cfg.model.arch == "distilbert":
                import transformers  # noqa: F401
            data = prepare_data(cfg)
        except (ImportError, ConfigError, ValueError) as exc:
            msg = (
                f"skipped: {exc}"
                if not isinstance(exc, ImportError)
                else "skipped: needs `transformers` (pip install 'scalelab[hf]')"
            )
            print(f"{case}: {msg}", flush=True)
            result["skipped"][case] = msg
            continue
        result["cases"][case] = []
        for precision, compile_mode, pad in variants(case, cuda, args.tiny):
            cfg.data.pad_to_max_len = pad
            warmup = (
                args.warmup
                if args.warmup is not None
                else (1 if args.tiny else (30 if compile_mode else 10))
            )
            t0 = time.perf_counter()
            try:
                r = bench_variant(
                    cfg,
                    data,
                    steps=steps,
                    warmup=warmup,
                    precision=precision,
                    compile_mode=compile_mode,
                )
            except Exception as exc:  # one failing variant (e.g. compile) must not lose the others
                r = {
                    "precision": precision,
                    "compile": compile_mode or "off",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            r["wall_s"] = time.perf_counter() - t0
            result["cases"][case].append(r)
            if "error" in r:
                rows.append([case, precision, r["compile"], "-", "-", "-", "-", r["error"][:60]])
                continue
            rows.append(
                [
                    case,
                    precision,
                    r["compile"] + (" (pad)" if pad else ""),
                    f"{r['samples_per_s']:,.0f}",
                    f"{r['epoch_time_s_120k']:,.1f}",
                    f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a",
                    f"{r['peak_mem_mb']:,.0f}" if r["peak_mem_mb"] is not None else "n/a",
                    "",
                ]
            )
            print(
                f"{case} {precision} compile={r['compile']}: {r['samples_per_s']:,.0f} samples/s",
                flush=True,
            )
    print()
    print_table(
        rows, ["case", "prec", "compile", "samples/s", "s/120k epoch", "MFU", "peak MB", "note"]
    )
    if args.tiny:
        print("\n--tiny: smoke test with tiny models, not a measurement")
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    day = datetime.now().strftime("%Y-%m-%d")
    out = args.out or RESULTS_DIR / f"{day}-{slug}{'-smoke' if args.tiny else ''}-gpu.json"
    write_result(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
