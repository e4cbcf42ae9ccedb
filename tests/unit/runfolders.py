"""Build fake run folders (config.yaml, metrics.csv, summary.json) with known numbers.

The folders follow the trainer's run-folder contract exactly, so analysis tests exercise the
same parsing path as real runs. Defaults describe a HEALTHY run: no diagnosis rule should fire.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

# The trainer's own column list: the fake folders follow the real contract.
from scalelab.train import METRIC_COLUMNS

GLOBAL_BATCH = 64
NUM_STEPS = 100  # optimizer steps per epoch; fixed across world sizes (global batch is fixed)
# 1-rank phases (ms per step). Everything except the optimizer scales as 1/n.
BASE_PHASES = {
    "data_ms": 2.0,
    "h2d_ms": 1.0,
    "forward_ms": 30.0,
    "backward_ms": 60.0,
    "optimizer_ms": 5.0,
}
OTHER_MS = 2.0
BUCKETS = [3_000_000, 3_000_000, 2_000_000]  # bytes, DDP order (last = first layers)
# Healthy sync: 1 ms exposed, 4 ms to all-reduce everything, compute 90 ms / n.
EXPOSED_MS = 1.0
ALLREDUCE_MS = 4.0


def healthy_timing(world_size: int) -> dict[str, float]:
    """Per-step phases of a well-scaling run at `world_size` ranks (exposed comm in backward)."""
    n = world_size
    t = {k: (v if k == "optimizer_ms" else v / n) for k, v in BASE_PHASES.items()}
    if n > 1:
        t["backward_ms"] += EXPOSED_MS
    t["step_ms"] = sum(t.values()) + OTHER_MS
    t["step_ms_max"] = t["step_ms"] * 1.02
    t["data_ms_max"] = t["data_ms"] * 1.1
    t["forward_ms_max"] = t["forward_ms"] * 1.05
    return t


def _merge(base: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (extra or {}).items():
        out[key] = (
            _merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def write_run(
    root: Path,
    name: str,
    *,
    world_size: int = 1,
    preset: str = "ag_news_small",
    timing: dict[str, float] | None = None,
    epoch_time_s: float | None = None,
    final_val_acc: float = 0.85,
    num_epochs: int = 3,
    summary: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write one run folder; `timing` overrides phases, `summary`/`config` are deep-merged."""
    n = world_size
    t = _merge(healthy_timing(n), timing)
    epoch = epoch_time_s if epoch_time_s is not None else t["step_ms"] * NUM_STEPS / 1000.0
    sync = n > 1
    compute = (BASE_PHASES["forward_ms"] + BASE_PHASES["backward_ms"]) / n
    full_config = _merge(
        {
            "name": preset,
            "model": {
                "arch": "transformer",
                "vocab_size": 20000,
                "d_model": 128,
                "num_layers": 2,
                "num_heads": 4,
                "d_ff": 256,
                "max_seq_len": 128,
            },
            "data": {
                "dataset": "ag_news",
                "source": "sample",
                "pad_to_max_len": False,
                "delay_per_batch_s": 0.0,
            },
            "train": {
                "epochs": num_epochs,
                "batch_size": GLOBAL_BATCH,
                "grad_accum_steps": 1,
                "lr": 5e-4,
                "precision": "fp32",
            },
            "distributed": {
                "backend": "gloo",
                "bucket_cap_mb": 25.0,
                "comm_hook": "none",
                "find_unused_parameters": False,
                "static_graph": False,
            },
            "output": {"dir": str(root), "run_name": name},
        },
        config,
    )
    full_summary = _merge(
        {
            "run_name": name,
            "preset": preset,
            "dataset": "ag_news",
            "model_arch": "transformer",
            "torch_version": "2.13.0",
            "device_type": "cuda",
            "device_name": "NVIDIA H100 80GB HBM3",
            "device_count": 8,
            "backend": "nccl" if sync else "none",
            "world_size": n,
            "num_nodes": 1,
            "local_world_size": n,
            "git_commit": "abc1234",
            "num_params": 2_000_000,
            "global_batch": GLOBAL_BATCH,
            "per_rank_batch": GLOBAL_BATCH // n,
            "grad_accum_steps": 1,
            "precision": "fp32",
            "num_epochs": num_epochs,
            "num_train_samples": GLOBAL_BATCH * NUM_STEPS,
            "num_test_samples": 1000,
            "mean_tokens_per_sample": 48.0,
            "final_val_acc": final_val_acc,
            "final_val_loss": 0.45,
            "mean_epoch_time_s": epoch,
            "samples_per_s": GLOBAL_BATCH * NUM_STEPS / epoch,
            "tokens_per_s": 48.0 * GLOBAL_BATCH * NUM_STEPS / epoch,
            "peak_mem_mb": 512.0,
            "timing": {"warmup_steps": 5, "warmup_time_s": 0.5, **t},
            "comm": {
                "grad_bytes": sum(BUCKETS),
                "bucket_bytes": list(BUCKETS),
                "num_buckets": len(BUCKETS),
                "bucket_cap_mb": 25.0,
                "comm_hook": "none",
                "allreduce_ms": ALLREDUCE_MS if sync else None,
                "exposed_comm_ms": EXPOSED_MS if sync else None,
                "compute_ms": compute if sync else None,
                "compute_to_comm_ratio": compute / ALLREDUCE_MS if sync else None,
                "overlap_fraction": 1 - EXPOSED_MS / ALLREDUCE_MS if sync else None,
                "method": "no_sync calibration",
            },
            "system": {
                "hostname": "node001",
                "num_cpus": 64,
                "num_threads_per_rank": 1,
                "num_loader_workers": 0,
                "find_unused_parameters": False,
            },
            "data": {
                "pad_to_max_len": False,
                "delay_per_batch_s": 0.0,
                "cache_hit": True,
                "prep_time_s": 0.1,
            },
        },
        summary,
    )
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(full_config))
    (folder / "summary.json").write_text(json.dumps(full_summary, indent=2))
    with (folder / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for epoch_idx in range(1, num_epochs + 1):
            row = {
                k: t[k]
                for k in (
                    "data_ms",
                    "h2d_ms",
                    "forward_ms",
                    "backward_ms",
                    "optimizer_ms",
                    "step_ms",
                    "step_ms_max",
                    "data_ms_max",
                    "forward_ms_max",
                )
            }
            acc = final_val_acc - 0.05 * (num_epochs - epoch_idx)
            row.update(
                epoch=epoch_idx,
                world_size=n,
                global_batch=GLOBAL_BATCH,
                num_steps=NUM_STEPS,
                train_loss=1.0 / epoch_idx,
                val_loss=0.6 / epoch_idx,
                val_acc=acc,
                epoch_time_s=epoch,
                eval_time_s=0.2,
                samples_per_s=full_summary["samples_per_s"],
                tokens_per_s=full_summary["tokens_per_s"],
                peak_mem_mb=512.0,
            )
            writer.writerow(row)
    return folder


def write_sweep(root: Path, world_sizes: list[int] = (1, 2, 4), **kwargs: Any) -> list[Path]:
    """A healthy sweep: one run per world size named '<preset>-ws<n>'."""
    preset = kwargs.pop("preset", "ag_news_small")
    return [
        write_run(root, f"{preset}-ws{n}", world_size=n, preset=preset, **kwargs)
        for n in world_sizes
    ]
