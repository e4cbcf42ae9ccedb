"""What the row-sparse token-embedding gradient buys: `train.embedding_grad=rows` vs `dense`.

Both sides are scalelab's own `train_step` (through `common.ScalelabStepper`, as `fit` builds
it) on the same preset, data, weights and batches; only `train.embedding_grad` differs. The
update is the same (tests/distributed/test_ddp.py); this measures the step time. Rounds
alternate who goes first; the verdict is the median of the per-round ratios.

    python benchmarks/embedding_grad.py [--threads 1] [--rounds 7] [--steps 30] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ag_news_small")
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (1 = one rank's share)"
    )
    add_round_arguments(p, rounds=7, steps=30)
    args = p.parse_args(argv)
    rounds, steps = (2, 4) if args.quick else (args.rounds, args.steps)
    torch.set_num_threads(args.threads)

    from scalelab.data import prepare_data

    header = run_header(argv)
    with tempfile.TemporaryDirectory(prefix="scalelab-bench-embgrad-") as cache:
        base = [f"data.cache_dir={cache}", "output.progress=none"]
        cfgs = {
            m: load_preset(args.preset, [*base, f"train.embedding_grad={m}"])
            for m in ("rows", "dense")
        }
        data = prepare_data(cfgs["rows"])
        sides = {m: ScalelabStepper(cfgs[m], data, device=torch.device("cpu")) for m in cfgs}
        assert sides["rows"].emb_rows is not None and sides["rows"].emb_rows.sparse_backward
        assert sides["dense"].emb_rows is None
        ab = paired_rounds(
            sides,
            rounds,
            steps,
            warmup_steps=3,
            max_quiet_wait=args.max_quiet_wait,
            ratio=("dense", "rows"),
        )
    runs, ratios, quiet, phases = ab["runs"], ab["ratios"], ab["quiet"], ab["phases"]
    result = {
        **header,
        "quick": args.quick,
        "preset": args.preset,
        "torch_threads": args.threads,
        "rounds": rounds,
        "timed_steps_per_round": steps,
        "step_ms": {m: spread([x["step_ms"] for x in runs[m]]) for m in runs},
        "phase_ms_median": phases,
        "speedup_rows_over_dense_per_round": ratios,
        "speedup_rows_over_dense": median(ratios),
        "background_load_before_rounds": quiet,
    }
    out = args.out or default_out("-embedding-grad" + ("-quick" if args.quick else ""))
    write_result(out, result)
    for m in runs:
        parts = " + ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in phases[m].items())
        print(f"{m:>5}: step {result['step_ms'][m]['median']:.2f} ms = {parts}")
    print(f"rows vs dense: {result['speedup_rows_over_dense']:.3f}x faster per step  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
