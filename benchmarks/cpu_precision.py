"""What bf16 autocast buys on this CPU: scalelab's step with `train.precision=bf16` vs `fp32`.

Both sides are scalelab's own `train_step` (through `common.ScalelabStepper`, as `fit` builds
it) on the same preset, data, initial weights and batch order; only `train.precision` differs.
bf16 runs the matrix multiplies in bfloat16 (oneDNN: AMX or AVX-512 BF16 where the CPU has them,
slow emulation where it has neither) and keeps fp32 weights, gradients and optimizer state.
Rounds alternate who goes first; the verdict per preset is the median of the per-round ratios.
The mean training loss of each side's steps is recorded beside it (both train the same batches).

    python benchmarks/cpu_precision.py [--presets ag_news_small,ag_news_large] [--threads 2]
        [--rounds 5] [--steps 20] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ScalelabStepper,
    add_round_arguments,
    default_out,
    load_preset,
    median,
    paired_rounds,
    positive_int,
    run_header,
    spread,
    write_result,
)

SIDES = ("fp32", "bf16")
WARMUP_STEPS = 2  # untimed steps per side before each round's timed ones


def measure_preset(
    preset: str, rounds: int, steps: int, cache: str, max_quiet_wait: float
) -> dict[str, Any]:
    from scalelab.data import prepare_data

    base = [f"data.cache_dir={cache}", "output.progress=none"]
    cfgs = {s: load_preset(preset, [*base, f"train.precision={s}"]) for s in SIDES}
    data = prepare_data(cfgs["fp32"])
    sides = {s: ScalelabStepper(cfgs[s], data, device=torch.device("cpu")) for s in SIDES}
    assert sides["fp32"].amp is None and sides["bf16"].amp == torch.bfloat16
    ab = paired_rounds(
        sides,
        rounds,
        steps,
        warmup_steps=WARMUP_STEPS,
        max_quiet_wait=max_quiet_wait,
        ratio=("fp32", "bf16"),
        label=f"{preset} ",
    )
    runs, ratios, quiet, phases = ab["runs"], ab["ratios"], ab["quiet"], ab["phases"]
    return {
        "timed_steps_per_round": steps,
        "rounds": rounds,
        "step_ms": {s: spread([x["step_ms"] for x in runs[s]]) for s in SIDES},
        "samples_per_s": {s: spread([x["samples_per_s"] for x in runs[s]]) for s in SIDES},
        "phase_ms_median": phases,
        # both sides trained the same batches in the same order: the losses should agree closely
        "mean_train_loss": {
            s: float(sides[s].loss_sum) / (rounds * (steps + WARMUP_STEPS)) for s in SIDES
        },
        "speedup_bf16_over_fp32_per_round": ratios,
        "speedup_bf16_over_fp32": median(ratios),
        "background_load_before_rounds": quiet,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="ag_news_small,ag_news_large")
    p.add_argument(
        "--threads", type=positive_int, default=2, help="torch threads (default: both cores)"
    )
    add_round_arguments(p, rounds=5, steps=20)
    args = p.parse_args(argv)
    rounds, steps = (2, 3) if args.quick else (args.rounds, args.steps)
    torch.set_num_threads(args.threads)
    presets = [name for name in args.presets.split(",") if name]
    header = run_header(argv)
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-precision-") as cache:
        per_preset = {
            name: measure_preset(name, rounds, steps, cache, args.max_quiet_wait)
            for name in presets
        }
    from scalelab.train import cpu_bf16_support

    result = {
        **header,
        "quick": args.quick,
        "torch_threads": args.threads,
        "cpu_bf16_support": cpu_bf16_support(),
        "presets": per_preset,
    }
    out = args.out or default_out("-cpu-precision" + ("-quick" if args.quick else ""))
    write_result(out, result)
    for name, res in per_preset.items():
        for s in SIDES:
            parts = " + ".join(
                f"{k.removesuffix('_ms')} {v:.2f}" for k, v in res["phase_ms_median"][s].items()
            )
            print(f"{name} {s}: step {res['step_ms'][s]['median']:.2f} ms = {parts}")
        print(f"{name}: bf16 vs fp32 {res['speedup_bf16_over_fp32']:.3f}x faster per step")
    print(f"CPU bf16 support: {result['cpu_bf16_support']}  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
