"""Where a 2-rank CPU step's time goes beyond the compute: run under torchrun (gloo, 1 thread).

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/ddp_lockstep.py --out F.json

The same ranks, model and batches (ag_news_small's trainer pieces, built as `scalelab.train` builds
them, with the same CPU binding) take steps in four modes, in blocks whose order rotates so that
machine noise and the slow first steps after each block's barrier hit all modes alike:

* ``plain``: forward + backward of the unwrapped model, gradient clipping (when
  ``train.max_grad_norm`` is set, as in `train_step`) and the optimizer step: no DDP and no
  collective, so each rank runs at its own pace (what two separate runs would do);
* ``independent``: the same through the DDP wrapper under its no_sync: what the wrapper's own
  forward and gradient hooks cost, still without any collective;
* ``lock_step``: the same plus one 4-byte all-reduce per step (waited for as `train_step` waits
  for its gradient all-reduce: distributed.collective_wait): the ranks now wait for each other
  once per step but move no gradient bytes;
* ``ddp``: scalelab's real `train_step` (DDP's gradient buckets and the embedding-row sum).

A mode's figure is its mean step time per rank, averaged over the ranks (in the two synchronised
modes both ranks' means equal the wall-clock time per step; a barrier, not timed, starts each
block). ``independent - plain`` is the DDP wrapper's own cost, ``lock_step - independent`` the
cost of synchronising ranks whose step times jitter apart, ``ddp - lock_step`` the cost of
moving and summing the gradients. The weights trained here mean nothing (the ranks drift apart
in the modes without gradient sums); only timings are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import load_preset, positive_int, run_header  # noqa: E402

MODES = ("plain", "independent", "lock_step", "ddp")


def at_least_2(text: str) -> int:
    """--blocks: the first block is warm-up, so one block would time nothing (NaN figures)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the first block is warm-up), got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    from scalelab import distributed as D
    from scalelab.data import make_batch, prepare_data
    from scalelab.models import build_model
    from scalelab.timing import StepTimer
    from scalelab.train import (
        _forward_loss,
        _make_optimizer,
        _make_scheduler,
        batch_padding,
        clip_grad_norm,
        make_embedding_rows,
        make_sampler,
        train_step,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="result JSON (written by rank 0)")
    p.add_argument("--blocks", type=at_least_2, default=30,
                   help="rounds over the modes (first: warm-up)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=5, help="steps per mode per round")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = p.parse_args(argv)

    cfg = load_preset("ag_news_small", ["data.source=sample", *args.overrides])
    torch.set_num_threads(cfg.train.num_threads or 1)
    env = D.init_distributed(cfg.distributed)
    if env.world_size < 2:
        raise SystemExit("ddp_lockstep.py: run it under torchrun with 2 or more processes")
    data = prepare_data(cfg, is_main=env.local_rank == 0, barrier=lambda: D.barrier(env))
    if cfg.distributed.pin_cpus:  # as the trainer does
        D.bind_cpus(env, torch.get_num_threads())
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.vocab_size, cfg.model.num_classes or data.num_classes)
    emb = make_embedding_rows(model, cfg, env, data.train.tokens)
    ddp = D.wrap_ddp(model, cfg.distributed, env, rows=emb)
    optimizer = _make_optimizer(ddp, cfg, env.device)
    scheduler = _make_scheduler(optimizer, cfg, 10**6)
    sampler = make_sampler(cfg, env, data.train.lengths)
    timer = StepTimer(env.device)
    padding = batch_padding(cfg)
    flag = torch.zeros(1)
    batches = iter(())

    def next_batch() -> list[np.ndarray]:
        nonlocal batches
        for micro in batches:
            return micro
        batches = iter(sampler)
        return next(batches)

    times: dict[str, list[float]] = {m: [] for m in MODES}
    ddp.train()
    for block in range(args.blocks):
        # Each block starts with another mode: a block's first steps after the barrier run slower
        # than the rest, and a fixed order charged that to one mode.
        for mode in MODES[block % len(MODES) :] + MODES[: block % len(MODES)]:
            D.barrier(env)  # all ranks start the block together
            for _ in range(args.steps):
                micro = next_batch()
                global_batch = sampler.current_global_batch
                t0 = time.perf_counter()
                if mode == "ddp":
                    train_step(ddp, micro, data, optimizer, scheduler, None, timer, cfg, env, None,
                               emb_rows=emb, global_batch=global_batch)  # fmt: skip
                else:
                    net = ddp.module if mode == "plain" else ddp
                    with contextlib.nullcontext() if mode == "plain" else ddp.no_sync():
                        for idx in micro:
                            batch = make_batch(data.train, idx, **padding)
                            _forward_loss(net, batch, None, env.device).backward()
                    if emb is not None:
                        emb.finish(global_batch, sync=False)
                    if mode == "lock_step":  # waited for as the trainer waits for its own
                        D.all_reduce_waiting(flag, emb is not None and emb.spin_wait)
                    if cfg.train.max_grad_norm:  # as train_step does (the preset's default: 1.0)
                        clip_grad_norm(net, cfg.train.max_grad_norm, emb)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if block > 0:  # the first round warms up
                    times[mode].append((time.perf_counter() - t0) * 1000.0)
    per_rank = D.gather_objects(times, env)
    result = None
    if env.is_main:
        mean = {m: float(np.mean([np.mean(r[m]) for r in per_rank])) for m in MODES}
        result = {
            **run_header(),  # command, date, commit, machine (run.py records its own command)
            "what": "ag_news_small trainer pieces on 2 ranks, steps in rotating blocks of four "
            "modes: plain (the unwrapped model, no collective), independent (through DDP under "
            "no_sync), lock_step (+ one 4-byte all-reduce per step), ddp (scalelab's "
            "train_step); mean step ms per rank, averaged over ranks",
            "world_size": env.world_size,
            "threads_per_rank": torch.get_num_threads(),
            "steps_per_mode": len(per_rank[0]["ddp"]),
            "step_ms": mean,
            "ddp_wrapper_ms": mean["independent"] - mean["plain"],
            "synchronisation_ms": mean["lock_step"] - mean["independent"],
            "gradient_communication_ms": mean["ddp"] - mean["lock_step"],
            "overrides": args.overrides,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(
            "step ms (mean per rank): "
            + ", ".join(f"{m} {mean[m]:.1f}" for m in MODES)
            + f" | DDP wrapper {result['ddp_wrapper_ms']:+.1f}, synchronisation "
            f"{result['synchronisation_ms']:+.1f}, gradient communication "
            f"{result['gradient_communication_ms']:+.1f}",
            flush=True,
        )
    D.cleanup()
    return 0


if __name__ == "__main__":
    from scalelab.distributed import exit_process

    # as the CLI does: leave without gloo's C++ teardown after DDP, which aborts now and then
    sys.exit(exit_process(main()))
