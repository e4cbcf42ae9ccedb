"""Worker run under the real launcher (torchrun) by tests/distributed/test_ddp.py.

Uses the trainer's own pieces (data, model, DDP wrapping, train_step, evaluate) and saves what the
test compares: every rank's parameters after K steps, the number of gradient all-reduces, the
batches each rank saw, and the evaluation result.

usage: ddp_worker.py OUT_DIR key=value ...   (config overrides)

LATE_RANK_MS=<ms> makes the last rank's forward that much slower in every step (a straggler):
the arrival spread the trainer records (`_epoch_phases`) must show it.
"""

import itertools
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from scalelab import distributed as D
from scalelab import train
from scalelab.config import load_config
from scalelab.data import TrainBatchSampler, prepare_data
from scalelab.models import build_model
from scalelab.timing import SPREAD_KEY, StepTimer
from scalelab.train import (
    _epoch_phases,
    _make_optimizer,
    _make_scheduler,
    evaluate,
    make_embedding_rows,
    train_step,
)


def counting_allreduce_hook(
    state: dict, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    # (no `from __future__ import annotations`: DDP checks these annotations at runtime)
    state["calls"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def main() -> None:
    out = Path(sys.argv[1])
    cfg = load_config(None, sys.argv[2:])
    env = D.init_distributed(cfg.distributed)
    try:
        cfg.validate(env.world_size)
        torch.manual_seed(cfg.train.seed)
        data = prepare_data(cfg, is_main=env.is_main, barrier=lambda: D.barrier(env))
        model = build_model(cfg.model, data.vocab_size, data.num_classes)
        # as the trainer: the embedding's rows summed outside DDP (gloo default), sparse backward
        emb_rows = make_embedding_rows(model, cfg, env, data.train.tokens)
        row_sync = emb_rows is not None and emb_rows.sync_rows
        model = D.wrap_ddp(model, cfg.distributed, env, rows=emb_rows)
        deferred = emb_rows.deferred if emb_rows is not None else None  # grad_sync=fused
        hook_state = {"calls": 0}
        if env.is_distributed and cfg.distributed.comm_hook == "none" and deferred is None:
            model.register_comm_hook(hook_state, counting_allreduce_hook)
        sampler = TrainBatchSampler(
            data.train.lengths,
            cfg.train.batch_size,
            env.world_size,
            env.rank,
            cfg.train.grad_accum_steps,
            cfg.train.seed,
            cfg.data.bucket_multiplier,
        )
        # SETTLE=1: first the resume's bucket-settling backward (train._settle_ddp_buckets)
        settled_left = None
        if os.environ.get("SETTLE") == "1":
            train._settle_ddp_buckets(model, data, sampler, cfg, env, None, emb_rows)
            settled_left = len(deferred.buckets) if deferred else None
            if deferred:
                deferred.calls = 0  # count the steps' hand-overs only
        steps = cfg.train.max_steps_per_epoch
        opt = _make_optimizer(model, cfg, env.device)
        sched = _make_scheduler(opt, cfg, steps)
        # as the trainer, warm-up steps are not timed: DDP rebuilds its buckets in the second
        # forward (a collective there)
        timer = StepTimer(env.device, warmup_steps=2)
        late_ms = float(os.environ.get("LATE_RANK_MS", 0))
        if late_ms and env.rank == env.world_size - 1:
            forward_loss = train._forward_loss

            def late_forward(*args, **kwargs):
                time.sleep(late_ms / 1000.0)
                return forward_loss(*args, **kwargs)

            train._forward_loss = late_forward
        sampler.set_epoch(0)
        seen, rows_used, calls = [], [], []

        def hook_calls() -> int:
            return deferred.calls if deferred else hook_state["calls"]

        for step, micro in enumerate(itertools.islice(sampler, steps)):
            gb = sampler.current_global_batch
            if row_sync:
                rows_used.append(int(D.embedding_rows(data.train.tokens, gb).numel()))
            train_step(
                model, micro, data, opt, sched, None, timer, cfg, env, None,
                # as the trainer: DDP(static_graph=True) records its graph on a synced first step
                sync_every_micro_step=cfg.distributed.static_graph and step == 0,
                emb_rows=emb_rows, global_batch=gb,
            )  # fmt: skip
            timer.end_step()
            calls.append(hook_calls() - sum(calls))
            seen.append([m.tolist() for m in micro])
        arrival_spread = _epoch_phases(None, timer, env)[SPREAD_KEY]  # a collective
        val_loss, val_acc = evaluate(model, data, cfg, env, None)
        net = getattr(model, "module", model)
        ddp_log = model._get_ddp_logging_data() if env.is_distributed else {}
        psgd = getattr(model, "scalelab_hook", None)  # PowerSGD's state holder, if registered
        result = {
            "comm_hook": ddp_log.get("comm_hook"),  # DDP's own record of the registered hook
            # PowerSGD compressed (error feedback exists) from its 2nd step, counted per step
            "powersgd_iter": psgd.state.iter if psgd else None,
            "powersgd_error_buckets": len(psgd.state.error_dict) if psgd else None,
            "params": {k: v.detach().clone() for k, v in net.state_dict().items()},
            # bucket hook calls: DDP's all-reduces, or (fused) the buckets it handed over
            "allreduce_calls": hook_calls(),
            "calls_per_step": calls,
            "fused": deferred is not None,
            "buckets_left_after_settling": settled_left,
            "row_sync": row_sync,
            "spin_wait": emb_rows is not None and emb_rows.spin_wait,
            "sparse_backward": emb_rows is not None and emb_rows.sparse_backward,
            "rows_per_step": rows_used,
            "embedding_in_ddp": not row_sync,
            "batches": seen,
            "arrival_spread_ms": arrival_spread,
            "arrivals": len(timer.arrivals_ms),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "num_buckets": len(
                D.ddp_bucket_sizes(model) or D.gradient_buckets(net, cfg.distributed.bucket_cap_mb)
            ),
        }
        out.mkdir(parents=True, exist_ok=True)
        torch.save(result, out / f"rank{env.rank}.pt")
    finally:
        D.cleanup()


if __name__ == "__main__":
    main()
    raise SystemExit(D.exit_process(0))  # as the CLI does: skip gloo's teardown after DDP
