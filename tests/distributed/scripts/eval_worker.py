"""Evaluate fixed (seeded) weights on N ranks; rank 0 saves (val_loss, val_acc). Run under torchrun.

usage: eval_worker.py OUT_FILE key=value ...
"""

from __future__ import annotations

import sys

import torch

from scalelab import distributed as D
from scalelab.config import load_config
from scalelab.data import prepare_data
from scalelab.models import build_model
from scalelab.train import evaluate


def main() -> None:
    cfg = load_config(None, sys.argv[2:])
    env = D.init_distributed(cfg.distributed)
    try:
        torch.manual_seed(cfg.train.seed)
        data = prepare_data(cfg, is_main=env.is_main, barrier=lambda: D.barrier(env))
        model = build_model(cfg.model, data.vocab_size, data.num_classes)
        # A briefly perturbed init so predictions are not all one class.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        result = evaluate(model, data, cfg, env, None)
        if env.is_main:
            torch.save(result, sys.argv[1])
    finally:
        D.cleanup()


if __name__ == "__main__":
    main()
    raise SystemExit(D.exit_process(0))  # as the CLI does: skip gloo's teardown after DDP
