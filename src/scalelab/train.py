"""The training loop: one code path for 1 process and for N ranks under torchrun.

Event points, in order (read `fit` top to bottom):

    init process group -> validate config for this world size -> resume_source
    -> _load_data (local rank 0 of each node builds the cache)
    -> _build_model (model, DDP wrapper, compile) -> optimizer/schedule
    -> _restore (a checkpoint's states) -> _open_run_folder
    for epoch:
        for step:                                   # StepTimer laps: data | h2d | forward | backward | optimizer
            for micro-step: batch -> forward -> backward (no_sync on all but the last micro-step)
            clip -> optimizer.step -> scheduler.step
            [every log_every_steps: read the loss (sync) and update progress]
            [every checkpoint_every_steps: checkpoint (its time is in no phase)]
            [every ~STOP_POLL_S: SIGTERM/SIGUSR1 on any rank? -> checkpoint and stop
             (exit 128 + signal); train.resume=auto continues]
        evaluate (exact under DDP) -> _epoch_row (timings reduced across ranks) -> checkpoint
        -> metrics.csv row
    after the last epoch: measure communication (calibration + bucket all-reduce) -> summary.json
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import platform
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scalelab import distributed as D
from scalelab.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    StopSignals,
    TrainingStopped,
    holds_run,
    load_checkpoint,
    load_error,
    lock_run_folder,
    move_aside,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_run_file,
)
from scalelab.config import (
    Config,
    ConfigError,
    first_line,
    is_number,
    not_a_folder,
    save_config,
)
from scalelab.data import (
    EncodedData,
    TrainBatchSampler,
    eval_shards,
    make_batch,
    prepare_data,
    to_device,
)
from scalelab.host import omp_threads_error
from scalelab.models import build_model, count_parameters
from scalelab.profiling import StepProfiler
from scalelab.resume import (
    LOAD_ERRORS,
    TIMED_KEYS,
    check_resume_config,
    load_states,
    resume_is_finished,
    resume_source,
    run_record,
    timed_changes,
    warmup_record,
)
from scalelab.timing import (
    COLLECTIVE_KEY,
    PHASES,
    SPREAD_KEY,
    StepTimer,
    Stopwatch,
    arrival_spread,
    crossover_difference,
    merge_phase_means,
)

METRIC_COLUMNS = [
    "epoch", "world_size", "global_batch", "num_steps", "train_loss", "val_loss", "val_acc",
    "epoch_time_s", "eval_time_s", "samples_per_s", "tokens_per_s", "peak_mem_mb",
    "data_ms", "h2d_ms", "forward_ms", "backward_ms", "optimizer_ms", "step_ms",
    "step_ms_max", "data_ms_max", "forward_ms_max", SPREAD_KEY, COLLECTIVE_KEY,
]  # fmt: skip


@dataclass
class TrainState:
    """Where the run is; saved in checkpoints so a resumed run continues exactly."""

    epoch: int = 0  # 0-based epoch to run next
    step_in_epoch: int = 0  # optimizer steps already done in `epoch`
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # loss summed over this rank's steps of the unfinished epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # Training time and this rank's real tokens of the unfinished epoch before a stop, so a
    # resumed epoch reports its whole time; None: saved by a version that did not record it.
    epoch_elapsed_s: float | None = 0.0
    epoch_tokens: int = 0
    # This rank's phase means of the epoch's steps before a stop (StepTimer.epoch_summary)
    epoch_phases: dict[str, float] | None = None


#: Seconds of training between two polls for a stop signal (one tiny collective each): a
#: preempted run checkpoints within about this long, well inside torchrun's shutdown timeout and
#: SLURM's warning, however long a step or train.log_every_steps is.
STOP_POLL_S = 5.0


# ----------------------------------------------------------------------------- setup helpers


def _resolve_precision(cfg: Config, device: torch.device) -> torch.dtype | None:
    p = cfg.train.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    if p == "fp32":
        return None
    if p == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision={p} needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.bfloat16 if p == "bf16" else torch.float16


def cpu_bf16_support() -> dict[str, bool]:
    """The CPU features oneDNN's fast bf16 kernels use (torch's own probes): with AMX tiles,
    bf16 autocast measured 1.1-2x faster per step here (benchmarks/cpu_precision.py)."""
    probes = {
        "amx_tile": getattr(torch.cpu, "_is_amx_tile_supported", None),
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
    }
    return {name: bool(probe()) if probe is not None else False for name, probe in probes.items()}


def _set_threads(cfg: Config, env: D.DistEnv) -> int:
    if env.device.type != "cpu":
        return torch.get_num_threads()
    n = cfg.train.num_threads
    if why := omp_threads_error(n):  # `scalelab train` checked before importing torch
        raise ConfigError(why)
    if not n:
        # An explicit OMP_NUM_THREADS (torchrun sets 1, sweeps set cores / ranks) already sized the
        # pool; otherwise split the cores between this node's ranks so they do not oversubscribe.
        n = (
            torch.get_num_threads()
            if os.environ.get("OMP_NUM_THREADS")
            else max(1, D.available_cpus() // env.local_world_size)
        )
    torch.set_num_threads(n)
    return n


def _make_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    # No weight decay on biases, norms and embeddings (the usual transformer recipe).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # Fused AdamW: one kernel per step (CUDA), and ~4x faster than foreach on CPU too.
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True)


def _make_scheduler(
    opt: torch.optim.Optimizer, cfg: Config, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(cfg.train.warmup_ratio * total_steps)
    kind = cfg.train.lr_schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _replan_lr(opt: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """After a resume that changed the schedule's length: set the learning rate of the next step
    from the new plan. The restored optimizer holds the one the old plan gave it (at the old
    run's end, 0 for cosine/linear), which the first step after the resume would otherwise use."""
    step = scheduler.last_epoch
    for group, base, fn in zip(
        opt.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * fn(step)
    scheduler._last_lr = [group["lr"] for group in opt.param_groups]


def git_commit() -> str | None:
    """HEAD of the checkout scalelab runs from, recorded with every result. Outside git (a copy
    of the tree without .git) $SCALELAB_GIT_COMMIT if set, else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        head = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        head = ""
    return head or os.environ.get("SCALELAB_GIT_COMMIT") or None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. 'AMD EPYC 7B13'), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # CPU: the process's peak resident set. VmHWM starts afresh at exec; ru_maxrss would report
    # the launching parent's peak when that was larger.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _ddp(model: nn.Module) -> nn.Module:
    """The DDP wrapper (or the plain model) inside a torch.compile wrapper."""
    return getattr(model, "_orig_mod", model)


def _run_dir(cfg: Config, env: D.DistEnv) -> Path:
    name = cfg.output.run_name
    if not name:
        name = f"{cfg.name}-ws{env.world_size}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    name = D.broadcast_object(
        name, env
    )  # ranks may start a second apart; rank 0's clock names the run
    return Path(cfg.output.dir).expanduser() / name


class Progress:
    """Rank 0 only: a tqdm bar on a TTY, plain lines otherwise."""

    def __init__(
        self, cfg: Config, env: D.DistEnv, total: int, epoch: int, num_epochs: int
    ) -> None:
        mode = cfg.output.progress
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "plain"
        self.mode = mode if env.is_main else "none"
        self.prefix = f"epoch {epoch + 1}/{num_epochs}"
        self.total = total
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.prefix, dynamic_ncols=True, leave=True)

    def update(self, step: int, n: int, loss: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:,.0f}")
        elif self.mode == "plain":
            print(
                f"{self.prefix} step {step}/{self.total} loss {loss:.4f} {samples_per_s:,.0f} samples/s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(env: D.DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


# ----------------------------------------------------------------------------- the step


def _forward_loss(
    model: nn.Module, batch: tuple[torch.Tensor, ...], amp: torch.dtype | None, device: torch.device
):
    ids, mask, labels = batch
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model(ids, mask)
    return F.cross_entropy(logits.float(), labels)


def clip_grad_norm(
    model: nn.Module, max_norm: float, emb_rows: D.EmbeddingRowGrad | None = None
) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` (L2), reading only the embedding rows `emb_rows` saw.

    Every other row's gradient is exactly zero, so the norm and the scaled gradient are the
    same; only the rows are read and written instead of all vocab_size x d_model values.
    """
    if emb_rows is None:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    emb = emb_rows.weight
    rows = emb_rows.rows
    compact = emb.grad.index_select(0, rows)
    grads = [p.grad for p in model.parameters() if p.grad is not None and p is not emb]
    grads.append(compact)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    # the same coefficient as clip_grad_norm_, applied without a host-device sync
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)
    emb.grad.index_copy_(0, rows, compact)
    return total


def _timed_settings(
    cfg: Config, env: D.DistEnv, num_threads: int, emb_rows: D.EmbeddingRowGrad | None
) -> dict[str, Any]:
    """How this invocation's steps run: the values of resume.TIMED_KEYS as resolved ('auto'
    and 0 as what they chose, a key that does nothing here as None), so that a resume which
    only spells a setting otherwise records no change (checkpoints keep these)."""
    raw = cfg.to_dict()
    out: dict[str, Any] = {f"{s}.{k}": raw[s][k] for s, k in TIMED_KEYS}
    out["train.compile_mode"] = cfg.train.compile_mode if cfg.train.compile else None
    out["data.pad_multiple"] = None if cfg.data.pad_to_max_len else cfg.data.pad_multiple
    out["train.num_threads"] = num_threads
    out["train.embedding_grad"] = "rows" if emb_rows and emb_rows.sparse_backward else "dense"
    out["data.on_device"] = bool(cfg.data.on_device and env.device.type == "cuda")
    if not env.is_distributed:  # one process: no DDP, no collective
        return {k: None if k.startswith("distributed.") else v for k, v in out.items()}
    out["distributed.backend"] = env.backend
    out["distributed.embedding_grad_sync"] = "rows" if emb_rows and emb_rows.sync_rows else "dense"
    out["distributed.grad_sync"] = "fused" if emb_rows and emb_rows.deferred else "buckets"
    waits = D.spins_waiting(cfg.distributed, env.backend)
    out["distributed.collective_wait"] = "spin" if waits else "block"
    return out


def make_embedding_rows(
    model: nn.Module, cfg: Config, env: D.DistEnv, host_tokens: torch.Tensor
) -> D.EmbeddingRowGrad | None:
    """The row-wise token-embedding gradient this run uses (`train.embedding_grad`,
    `distributed.embedding_grad_sync`), or None for PyTorch's dense path throughout."""
    sync = env.is_distributed and D.syncs_embedding_rows(cfg.distributed, env.backend)
    mode = cfg.train.embedding_grad
    if mode == "auto":
        # CPU only (measured there); DDP cannot bucket a sparse gradient, so only when the
        # embedding is outside DDP; torch.compile keeps the dense graph it knows.
        sparse = (
            env.device.type == "cpu" and (sync or not env.is_distributed) and not cfg.train.compile
        )
    else:
        sparse = mode == "rows"
    if sparse and env.is_distributed and not sync:
        raise ConfigError(
            "train.embedding_grad=rows needs distributed.embedding_grad_sync=rows with several "
            "ranks (DDP cannot all-reduce a sparse gradient in its buckets)"
        )
    if sparse and cfg.train.compile:
        raise ConfigError("train.embedding_grad=rows does not combine with train.compile=true")
    if not (sparse or sync):
        return None
    return D.EmbeddingRowGrad(
        model,
        host_tokens,
        env,
        sparse_backward=sparse,
        sync=sync,
        spin_wait=D.spins_waiting(cfg.distributed, env.backend),
    )


def _load_data(
    cfg: Config, env: D.DistEnv, num_threads: int
) -> tuple[EncodedData, torch.Tensor, tuple[int, list[int] | None]]:
    """The encoded data (on the GPU with data.on_device), its training tokens on the host, and
    (CPUs this job may use, rank's bound CPUs or None). Local rank 0 of every node builds a
    missing cache (nodes need not share data.cache_dir); the others wait."""
    data = prepare_data(cfg, is_main=env.local_rank == 0, barrier=lambda: D.barrier(env))
    _check_same_data(data, env)
    for warning in data.warnings:
        log(env, f"warning: {warning}")
    # After the data: preparing a missing cache may use every core.
    job_cpus = D.available_cpus()  # before binding narrows this rank's share
    bound_cpus = D.bind_cpus(env, num_threads) if cfg.distributed.pin_cpus else None
    host_train_tokens = data.train.tokens
    if cfg.data.on_device and env.device.type == "cuda":
        # whole encoded dataset on the GPU: batches are gathered there, only indices travel
        data = data.to(env.device)
    if len(data.train) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(data.train):,} examples): lower train.batch_size or use more data ("
            + (
                "raise data.max_train_samples, or 0 for every row"
                if cfg.data.max_train_samples
                else "a larger training file: every row is used already"
            )
            + ")"
        )
    return data, host_train_tokens, (job_cpus, bound_cpus)


def _build_model(
    cfg: Config, env: D.DistEnv, data: EncodedData, host_train_tokens: torch.Tensor
) -> tuple[nn.Module, int, D.EmbeddingRowGrad | None]:
    """The model on this rank's device, wrapped in DDP (and torch.compile), its parameter
    count, and the row-wise embedding gradient it uses (`make_embedding_rows`)."""
    num_classes = cfg.model.num_classes or data.num_classes
    if num_classes < data.num_classes:
        raise ConfigError(
            f"model.num_classes={num_classes} but the data has {data.num_classes} classes"
        )
    try:
        model = build_model(cfg.model, data.vocab_size, num_classes, data.train.pad_id)
        model = model.to(env.device)
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        err = ConfigError(
            f"the model ({cfg.model.arch}, d_model {cfg.model.d_model}, d_ff {cfg.model.d_ff}, "
            f"{cfg.model.num_layers} layers, vocab {data.vocab_size}) does not fit in memory on "
            f"{env.device} ({first_line(exc)[:120]}): choose smaller model sizes"
        )
        err.every_rank = True  # one rank's GPU may be fuller than the others'
        raise err from None
    num_params = count_parameters(model)
    emb_rows = make_embedding_rows(model, cfg, env, host_train_tokens)
    model = D.wrap_ddp(model, cfg.distributed, env, rows=emb_rows)
    if cfg.train.compile:
        # Compile the DDP-wrapped model: dynamo then splits the graph at bucket boundaries so the
        # all-reduce still overlaps the compiled backward (compiling inside DDP would not).
        model = compile_model(model, cfg)
        if note := cuda_graph_note(cfg, env.device):
            log(env, note)
    return model, num_params, emb_rows


def _check_same_data(data: EncodedData, env: D.DistEnv) -> None:
    """Every rank trains on the same encoding, or all stop with one line saying so.

    Each node reads its own cache (nodes need not share data.cache_dir); a node holding a cache
    written by another scalelab or tokenizers version would otherwise feed DDP different token
    ids without any error.
    """
    if not env.is_distributed:
        return
    mine = (
        hashlib.sha256(data.tokenizer_json.encode()).hexdigest()[:16],
        len(data.train),
        len(data.test),
        socket.gethostname(),
        str(data.cache_path),
    )
    every = D.gather_objects(mine, env)
    differ = [r for r, theirs in enumerate(every) if theirs[:3] != every[0][:3]]
    if differ:
        r = differ[0]
        raise D.LaunchError(
            f"rank {r} ({every[r][3]}: {every[r][4]}) holds other data than rank 0 "
            f"({every[0][3]}: {every[0][4]}): tokenizer {every[r][0]} vs {every[0][0]}, "
            f"{every[r][1]:,}/{every[r][2]:,} vs {every[0][1]:,}/{every[0][2]:,} train/test "
            "examples; delete those cache files (scalelab data --clear) or share data.cache_dir"
        )


def make_sampler(cfg: Config, env: D.DistEnv, lengths: np.ndarray) -> TrainBatchSampler:
    """This rank's sampler of the training split (its examples' `lengths`), per the config."""
    return TrainBatchSampler(
        lengths,
        global_batch=cfg.train.batch_size,
        world_size=env.world_size,
        rank=env.rank,
        grad_accum_steps=cfg.train.grad_accum_steps,
        seed=cfg.train.seed,
        bucket_multiplier=cfg.data.bucket_multiplier,
    )


def compile_model(model: nn.Module, cfg: Config) -> nn.Module:
    """torch.compile with ``train.compile_mode`` ('default' = torch's default mode)."""
    mode = cfg.train.compile_mode
    return torch.compile(model, mode=None if mode == "default" else mode)


def cuda_graph_note(cfg: Config, device: torch.device) -> str | None:
    """The note to log when CUDA graphs meet unbounded batch widths: torch.compile's
    reduce-overhead and max-autotune modes record a graph per batch shape, and batches padded
    to their longest sequence come in up to max_seq_len widths (memory and a recording each)."""
    t, d, m = cfg.train, cfg.data, cfg.model
    graphs = t.compile and t.compile_mode in ("reduce-overhead", "max-autotune")
    if not (graphs and device.type == "cuda" and d.pad_multiple == 1 and not d.pad_to_max_len):
        return None
    return (
        f"note: train.compile_mode={t.compile_mode} records a CUDA graph per batch width, up to "
        f"{m.max_seq_len} widths with data.pad_multiple=1; data.pad_multiple=16 bounds them to "
        f"{-(-m.max_seq_len // 16)}"
    )


def batch_padding(cfg: Config) -> dict[str, Any]:
    """`make_batch`'s padding arguments: to max_seq_len (the study's way), or to the batch's
    longest sequence rounded up to ``data.pad_multiple``."""
    return {
        "pad_to": cfg.model.max_seq_len if cfg.data.pad_to_max_len else None,
        "pad_multiple": cfg.data.pad_multiple,
        "max_len": cfg.model.max_seq_len,
    }


def train_step(
    model: nn.Module,
    micro_batches: list[np.ndarray],
    data: EncodedData,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
    timer: StepTimer,
    cfg: Config,
    env: D.DistEnv,
    amp: torch.dtype | None,
    sync_every_micro_step: bool = False,
    emb_rows: D.EmbeddingRowGrad | None = None,
    global_batch: np.ndarray | None = None,
) -> torch.Tensor:
    """One optimizer step over this rank's micro-batches. Returns the mean loss as a device tensor (no sync).

    ``sync_every_micro_step`` all-reduces after every micro-step instead of skipping all but the
    last with no_sync (the same gradients, more communication). DDP with static_graph=True needs it
    on its first iteration: it records the graph there and asserts inside no_sync.
    ``emb_rows`` (with the step's ``global_batch``, all ranks' examples) completes the
    token-embedding gradient row-wise (`make_embedding_rows`): densifies a sparse backward, sums
    the rows over ranks when DDP was told to leave the embedding alone, and lets clipping touch
    only those rows.
    """
    accum = len(micro_batches)
    padding = batch_padding(cfg)
    fused = emb_rows is not None and emb_rows.deferred is not None  # distributed.grad_sync
    loss_sum: torch.Tensor | None = None
    for i, idx in enumerate(micro_batches):
        if cfg.data.delay_per_batch_s:
            time.sleep(
                cfg.data.delay_per_batch_s
            )  # simulated slow input pipeline (diagnostics knob)
        batch = make_batch(data.train, idx, **padding)
        timer.lap("data")
        batch = tuple(to_device(t, env.device) for t in batch)  # no-ops with data.on_device
        timer.lap("h2d")
        # Only the last micro-step all-reduces: DDP's no_sync skips the others.
        last = i == accum - 1
        skip_sync = env.is_distributed and not last and not sync_every_micro_step
        sync_ctx = model.no_sync() if skip_sync else contextlib.nullcontext()
        with sync_ctx:
            loss = _forward_loss(model, batch, amp, env.device)
            if accum > 1:  # the mean over micro-batches (no kernel, and no autograd node, at 1)
                loss = loss / accum
            timer.lap("forward")
            if last and not fused:
                timer.arrive()  # DDP all-reduces its buckets in this backward
            (scaler.scale(loss) if scaler else loss).backward()
            timer.lap("backward")
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    if emb_rows is not None:
        assert global_batch is not None, "emb_rows needs the step's global batch"
        if fused:
            timer.arrive()  # all of the step's gradients in one all-reduce, from here
        emb_rows.finish(global_batch)  # may all-reduce (gradient communication): timed as backward
        timer.lap("backward")
        if fused:
            timer.collective(emb_rows.collective_ms)  # the step's exposed gradient sync
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.train.max_grad_norm:
        clip_grad_norm(model, cfg.train.max_grad_norm, emb_rows)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    timer.lap("optimizer")
    assert loss_sum is not None, "a step has at least one micro-batch"
    return loss_sum


@torch.no_grad()
def evaluate(
    model: nn.Module, data: EncodedData, cfg: Config, env: D.DistEnv, amp: torch.dtype | None
) -> tuple[float, float]:
    """Exact loss/accuracy under DDP: every test example is counted once, whatever the world size.

    Each rank evaluates a disjoint shard (no padding duplicates) with the unwrapped model, so no
    collective runs per batch and uneven shard sizes cannot hang; sums are all-reduced at the end.
    """
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    per_rank = cfg.train.eval_batch_size or 2 * cfg.train.per_rank_batch(env.world_size)
    padding = batch_padding(cfg)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    correct = torch.zeros((), dtype=torch.int64, device=env.device)
    count = 0
    for idx in eval_shards(data.test.lengths, env.world_size, env.rank, per_rank):
        ids, mask, labels = make_batch(data.test, idx, device=env.device, **padding)
        with torch.autocast(env.device.type, dtype=amp, enabled=amp is not None):
            logits = net(ids, mask).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(-1) == labels).sum()
        count += len(idx)
    net.train(was_training)
    # host-device sync: once per evaluation
    total_loss, total_correct, total = D.all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(count)], env
    )
    assert int(total) == len(data.test), "evaluation must see every test example exactly once"
    return total_loss / total, total_correct / total


# ----------------------------------------------------------------------------- communication measurement


def measure_communication(
    model: nn.Module,
    data: EncodedData,
    sampler: TrainBatchSampler,
    cfg: Config,
    env: D.DistEnv,
    amp: torch.dtype | None,
    emb_rows: D.EmbeddingRowGrad | None = None,
    in_step_ms: float = math.nan,
) -> dict[str, Any]:
    """Exposed all-reduce per step (calibration), and total all-reduce time of the real buckets.

    Calibration: each batch runs forward+backward once with gradient sync and once under
    no_sync, which of the two first alternating from batch to batch (a pair's second step finds
    warmer caches). The mean difference within the pairs, each order's mean weighed alike
    (`crossover_difference`), is the communication the backward pass could not hide. No
    optimizer step runs, so the trained weights are untouched. Where the training steps timed
    their one gradient all-reduce themselves (``in_step_ms``, COLLECTIVE_KEY: grad_sync=fused
    with gloo, whose all-reduce follows the backward, so nothing hides any of it), that mean is
    the exposed communication, measured in the steps it cost (the calibration's pairs run warm
    and start together: on the test VM 1.5-2.6 ms against 2.2-2.5 ms in the steps), and the
    calibration's figure is kept as ``calibrated_exposed_comm_ms``. The bucket list is what a
    multi-rank run of this config all-reduces per step (DDP's buckets, plus the token-embedding
    rows when `distributed.embedding_grad_sync` sums them row-wise), so a 1-rank run records it
    too, for predictions.
    """
    from scalelab.analysis.predict import wire_bucket_bytes
    from scalelab.commbench import measure_buckets

    net = _unwrap(model)
    emb = net.token_embedding().weight
    backend = env.backend if env.is_distributed else None  # None: the planned one (1 rank)
    rows_mode = D.syncs_embedding_rows(cfg.distributed, backend)
    spin = D.spins_waiting(cfg.distributed, backend)  # distributed.collective_wait
    # Mean rows a global batch uses (the sampler's batches do not depend on the world size).
    tokens = data.train.tokens.cpu()  # once per run
    rows_per_step = float(
        np.mean([len(D.embedding_rows(tokens, gb)) for gb in sampler.global_batches(0)[:64]])
    )
    row_bytes = int(rows_per_step * emb.shape[1] * emb.element_size())
    buckets = D.ddp_bucket_sizes(_ddp(model)) or D.gradient_buckets(
        net, cfg.distributed.bucket_cap_mb, exclude=[emb] if rows_mode else []
    )
    if rows_mode:
        buckets = [*buckets, row_bytes]  # one all-reduce after the backward
    fused = D.fuses_grad_sync(cfg.distributed, backend)
    if fused:
        buckets = [sum(buckets)]  # DDP's buckets and the rows in one all-reduce
    # what an fp16/bf16 hook puts on the wire (None: PowerSGD, whose traffic is not the buckets)
    wire = wire_bucket_bytes(buckets, cfg.distributed.comm_hook, rows_mode)
    comm: dict[str, Any] = {
        "grad_bytes": int(sum(buckets)),
        "bucket_bytes": buckets,
        "wire_bucket_bytes": wire,
        "num_buckets": len(buckets),
        "bucket_cap_mb": cfg.distributed.bucket_cap_mb,
        "comm_hook": cfg.distributed.comm_hook,
        "embedding_grad_sync": "rows" if rows_mode else "dense",
        "grad_sync": "fused" if fused else "buckets",
        # how a rank waits for the all-reduce of the rows (or the fused one): spin or block
        "collective_wait": ("spin" if spin else "block") if rows_mode else None,
        "embedding_grad": "rows" if emb_rows is not None and emb_rows.sparse_backward else "dense",
        "embedding_grad_bytes": emb.numel() * emb.element_size(),
        "embedding_rows_per_step": rows_per_step,
        "allreduce_ms": None,
        "exposed_comm_ms": None,
        "calibrated_exposed_comm_ms": None,
        "compute_ms": None,
        "compute_to_comm_ratio": None,
        "overlap_fraction": None,
        "method": "calibration: mean over batches of (fwd+bwd with DDP sync - fwd+bwd under "
        "no_sync on the same batch), the two orders weighed alike; "
        "allreduce_ms: gradient buckets all-reduced back to back"
        + ("" if wire is None else ", at the bytes the comm hook sends")
        + (" (grad_sync=fused: one all-reduce of all of them)" if fused else ""),
    }
    in_step = math.isfinite(in_step_ms)
    if in_step:
        comm["exposed_comm_ms"] = in_step_ms
        comm["method"] += (
            "; exposed_comm_ms: the step's one gradient all-reduce timed in every training "
            "step (grad_sync=fused), calibrated_exposed_comm_ms: the calibration's"
        )
    n = cfg.train.comm_calibration_steps
    if not env.is_distributed or n == 0:
        return comm
    model.train()
    padding = batch_padding(cfg)
    sampler.set_epoch(10_000)  # batches the run did not train on; only their timing matters
    sampler.set_start_step(0)
    batches = [(mb[-1], sampler.current_global_batch) for mb in itertools.islice(sampler, n + 1)]
    if len(batches) < 2:  # the first pair only warms up: nothing would be measured
        comm["method"] += " (not calibrated: fewer than 2 steps per epoch)"
        return comm
    sync_ms, nosync_ms, sync_first = [], [], []
    watch = Stopwatch(env.device)
    for i, (idx, global_batch) in enumerate(batches):
        # the order alternates: a pair's second step finds warmer caches (crossover_difference)
        order = (True, False) if i % 2 else (False, True)
        if i > 0:  # the first pair warms up
            sync_first.append(order[0])
        for use_sync in order:
            batch = make_batch(data.train, idx, device=env.device, **padding)
            # start aligned, so a late rank's wait is not counted as communication (released
            # as the step's own all-reduce is waited for: a rank woken from a barrier's sleep
            # would start late)
            D.barrier(env, spin=spin)
            watch.start()
            ctx = contextlib.nullcontext() if use_sync else model.no_sync()
            with ctx:
                _forward_loss(model, batch, amp, env.device).backward()
            if emb_rows is not None:  # densify in both, so only the all-reduce differs
                emb_rows.finish(global_batch, sync=use_sync)
            ms = watch.elapsed_s() * 1000.0
            if i > 0:  # the first pair warms up
                (sync_ms if use_sync else nosync_ms).append(ms)
            model.zero_grad(set_to_none=True)
    t_exposed = crossover_difference(sync_ms, nosync_ms, sync_first)
    t_nosync = float(np.median(nosync_ms))
    (t_exposed, t_nosync), _ = D.all_reduce_mean_max([t_exposed, t_nosync], env)
    allreduce_ms = measure_buckets(wire or buckets, env)
    calibrated = max(0.0, t_exposed)
    exposed = in_step_ms if in_step else calibrated
    # against PowerSGD's exposed time, the fp32 buckets' all-reduce time means nothing
    comparable = allreduce_ms > 0 and wire is not None
    comm.update(
        allreduce_ms=allreduce_ms,
        exposed_comm_ms=exposed,
        calibrated_exposed_comm_ms=calibrated,
        compute_ms=t_nosync,
        compute_to_comm_ratio=t_nosync / allreduce_ms if comparable else None,
        overlap_fraction=min(1.0, max(0.0, 1.0 - exposed / allreduce_ms)) if comparable else None,
    )
    if wire is None:
        comm["method"] += " (fp32 buckets: PowerSGD sends less; no R or overlap)"
    return comm


# ----------------------------------------------------------------------------- outputs


class _FolderLock:
    """Rank 0's hold on the run folder (`lock_run_folder`, kept in `held` until the run ends),
    taken once: before anything in the folder is read when it exists (what a resume decides
    from must not be another run's files in the making), else when `_open_run_folder` makes it."""

    def __init__(self, run_dir: Path, held: contextlib.ExitStack) -> None:
        self.run_dir, self.held, self.taken = run_dir, held, False

    def take(self) -> None:
        if not self.taken:
            lock = lock_run_folder(self.run_dir)
            if lock is not None:
                self.held.enter_context(lock)
            self.taken = True


def _open_run_folder(run_dir: Path, cfg: Config, folder_lock: _FolderLock) -> None:
    """Create the run folder (rank 0), lock it for this run unless that was done before the
    resume read it (a second run into it is refused before it changes a file), clear what a
    killed process left half-written, and write config.yaml."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. no permission to create it
        raise ConfigError(f"cannot create the run folder {run_dir}: {exc.strerror}") from None
    if not folder_lock.taken:
        folder_lock.take()
        # the folder did not exist when this run decided to start afresh: another run of the
        # same output.run_name may have made and finished it meanwhile
        if holds_run(run_dir):
            raise ConfigError(
                f"output folder {run_dir} came to hold another run while this one started (the "
                "same output.run_name); choose another output.run_name"
            )
    # temp files of a process killed while writing (each file is written aside, renamed)
    for name in (CHECKPOINT_NAME, "config.yaml", "metrics.csv", "summary.json"):
        for stale in run_dir.glob(f".{name}.*"):
            stale.unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")


def _epoch_row(
    epoch: int,
    phase: dict[str, float],
    cfg: Config,
    env: D.DistEnv,
    *,
    steps_done: int,
    steps_timed: int,
    carried_s: float | None,
    epoch_time_s: float,
    eval_time_s: float,
    train_loss_sum: float,
    tokens_all: float,
    val_loss: float,
    val_acc: float,
) -> dict[str, Any]:
    """The epoch's metrics.csv row (METRIC_COLUMNS). Collective: the phase times (this rank's,
    `phase`) and peak memory are reduced over the ranks. ``steps_timed``: the steps this
    invocation trained of the epoch's ``steps_done``; ``carried_s``: the epoch's training time
    before a resume (None: unknown)."""
    keys = [f"{p}_ms" for p in PHASES] + ["step_ms", COLLECTIVE_KEY]
    means, maxes = D.all_reduce_mean_max([phase.get(k, math.nan) for k in keys], env)
    mean_of = dict(zip(keys, means, strict=True))
    max_of = dict(zip(keys, maxes, strict=True))
    return {
        "epoch": epoch + 1,
        "world_size": env.world_size,
        "global_batch": cfg.train.batch_size,
        "num_steps": steps_done,
        "train_loss": train_loss_sum / (steps_done * env.world_size),
        "val_loss": val_loss,
        "val_acc": val_acc,
        "epoch_time_s": epoch_time_s,
        "eval_time_s": eval_time_s,
        # over the whole epoch; if a resumed epoch's earlier time is unknown (a checkpoint of
        # an older version), over this invocation's steps, or nan when none ran here
        "samples_per_s": (steps_done if carried_s is not None else steps_timed)
        * cfg.train.batch_size
        / epoch_time_s
        if steps_timed or carried_s
        else math.nan,
        "tokens_per_s": tokens_all / epoch_time_s
        if carried_s is not None and (steps_timed or carried_s)
        else math.nan,
        "peak_mem_mb": max(D.all_reduce_mean_max([_peak_mem_mb(env.device)], env)[1]),
        **mean_of,
        "step_ms_max": max_of["step_ms"],
        "data_ms_max": max_of["data_ms"],
        # the forward has no collective, so a slow rank shows here; under DDP every rank's
        # step lasts as long as the slowest one's (the others wait in their backward)
        "forward_ms_max": max_of["forward_ms"],
        # how late the last rank reached the step's first collective (the others wait)
        SPREAD_KEY: phase.get(SPREAD_KEY, math.nan),
    }


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_run_file(path, buf.getvalue())


def _check_metric_columns(rows: list[dict[str, Any]], path: Path | None) -> None:
    """A checkpoint's metrics rows go back into metrics.csv: a column scalelab does not write
    (a hand-edited or foreign checkpoint) is refused before anything is written. Missing ones,
    from a version that did not record them yet, stay empty."""
    known = set(METRIC_COLUMNS)
    for i, row in enumerate(rows):
        if unknown := sorted(set(row) - known):
            raise CheckpointError(
                f"{path}: checkpoint field metrics[{i}] has columns metrics.csv does not: "
                f"{', '.join(unknown)}"
            )


def _on_rank0(env: D.DistEnv, write: Callable[[], None]) -> None:
    """Run rank 0's writes into the run folder (`write`), and tell every rank whether they
    failed: each rank then raises the same one-line error (ConfigError, CheckpointError), where
    the others would otherwise die in their next collective with a traceback ("Connection closed
    by peer"). Collective (one small broadcast)."""
    failure: tuple[str, str] | None = None
    if env.is_main:
        try:
            write()
        except (CheckpointError, ConfigError) as exc:
            if not env.is_distributed:
                raise
            failure = (type(exc).__name__, str(exc))
    failure = D.broadcast_object(failure, env)
    if failure is not None:
        kind = {"CheckpointError": CheckpointError, "ConfigError": ConfigError}[failure[0]]
        raise kind(failure[1])


def _epoch_phases(
    before: dict[str, float] | None, timer: StepTimer, env: D.DistEnv
) -> dict[str, float]:
    """This rank's phase means of the steps since the last call (`StepTimer.epoch_summary`),
    merged with those of the epoch's earlier part (`before`), and the ranks' arrival spread
    (`arrival_spread`; 0 with one rank). A collective: every rank calls it after the same step."""
    phases = timer.epoch_summary()
    if env.is_distributed:
        phases[SPREAD_KEY] = arrival_spread(*D.all_reduce_mean_max(timer.arrivals_ms, env))
    else:
        phases[SPREAD_KEY] = 0.0  # no peer to wait for
    return merge_phase_means(before, phases)


def _mean_excluding_first(rows: list[dict[str, Any]], key: str) -> float:
    """Mean over the epochs after the first (warm caches, compiled graphs), skipping nan; the
    first epoch's value when no later one has one (e.g. a resumed epoch timed no step)."""

    def values(some: list[dict[str, Any]]) -> list[Any]:
        # .get: rows restored from a checkpoint of an older version may lack a newer column
        vals = [r.get(key, math.nan) for r in some]
        return [v for v in vals if not (isinstance(v, float) and math.isnan(v))]

    vals = values(rows[1:]) or values(rows[:1])
    return float(np.mean(vals)) if vals else float("nan")


# ----------------------------------------------------------------------------- fit


def fit(cfg: Config) -> Path:
    """Train per `cfg` (in this process and any torchrun peers) and return the run folder."""
    env = D.init_distributed(cfg.distributed)
    try:
        with StopSignals() as stops, contextlib.ExitStack() as held:
            return _fit(cfg, env, stops, held)
    finally:
        D.cleanup()


def _fit(cfg: Config, env: D.DistEnv, stops: StopSignals, held: contextlib.ExitStack) -> Path:
    """`held`: what the run holds until it ends (rank 0's lock on the run folder)."""
    cfg.validate(env.world_size)
    # Here, not in Config.validate: sweep and slurm validate the user's overrides before they add
    # output.run_name themselves.
    if cfg.train.resume == "auto" and not cfg.output.run_name:
        raise ConfigError(
            "train.resume=auto needs output.run_name: set output.run_name to the run to continue "
            "(without it every run gets a new timestamped folder and there is nothing to resume)"
        )
    amp = _resolve_precision(cfg, env.device)
    num_threads = _set_threads(cfg, env)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    run_dir = _run_dir(cfg, env)
    # the folders are made after the data and the model: a file in the way must fail now
    for folder, what in ((run_dir.parent, "output.dir"), (run_dir, "the run folder")):
        why = not_a_folder(folder)
        if why:
            raise ConfigError(f"{what} {folder}: {why}")
    ckpt_path = run_dir / CHECKPOINT_NAME
    folder_lock = _FolderLock(run_dir, held)
    # a run training into the folder now is refused before its files decide how this one starts
    _on_rank0(env, lambda: folder_lock.take() if run_dir.is_dir() else None)
    resume_from, elsewhere = resume_source(cfg, env, run_dir)
    resume_state = load_checkpoint(resume_from) if resume_from else None
    if resume_state is not None:
        _check_metric_columns(resume_state.get("metrics") or [], resume_from)

    # Data first: a bad data file must fail before anything is written.
    data, host_train_tokens, cpus = _load_data(cfg, env, num_threads)
    model, num_params, emb_rows = _build_model(cfg, env, data, host_train_tokens)
    # DDP broadcast rank 0's weights; from here each rank needs its own dropout stream.
    torch.manual_seed(cfg.train.seed + 1 + env.rank)

    sampler = make_sampler(cfg, env, data.train.lengths)
    steps_per_epoch = len(sampler)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.train.epochs
    optimizer = _make_optimizer(model, cfg, env.device)
    scheduler = _make_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    state = TrainState()
    settings = _timed_settings(cfg, env, num_threads, emb_rows)  # how the steps run
    config_changes: list[dict[str, Any]] = []  # timed settings resumes changed (timed_changes)
    summary_to_move, summarised = False, 0  # a finished run's summary.json, of that many epochs
    recorded: int | str = 0  # the epoch rows of the run folder's metrics.csv
    if resume_state is not None:
        state = _restore(
            resume_state,
            resume_from,
            model,
            optimizer,
            scheduler,
            scaler,
            data=data,
            sampler=sampler,
            cfg=cfg,
            env=env,
            amp=amp,
            steps_per_epoch=steps_per_epoch,
            emb_rows=emb_rows,
        )
        # What the run folder already records (rank 0 reads it; every rank decides alike)
        recorded, has_summary = D.broadcast_object(
            run_record(run_dir) if env.is_main else None, env
        )
        if isinstance(recorded, str):
            raise CheckpointError(recorded)
        # A finished run (its summary written): nothing to train, and re-measuring would overwrite
        # its summary with one that lost the timing warm-up of the original run.
        finished = resume_is_finished(
            state.epoch,
            recorded,
            has_summary,
            cfg.train.epochs,
            resume_from,
            run_dir,
            step_in_epoch=state.step_in_epoch,
        )
        if finished:
            log(env, finished)
            return run_dir
        if state.epoch >= cfg.train.epochs and elsewhere:
            # nothing would train, so no checkpoint would be written here: the new folder
            # would hold a summary that no train.resume=auto could ever continue
            raise CheckpointError(
                f"{resume_from}: its run finished all {cfg.train.epochs} epochs (train.epochs), "
                f"so nothing would train into {run_dir}; raise train.epochs to train it further"
            )
        # Training on past a finished run's summary: from the first file that records more than
        # it, summary.json would describe a run the folder no longer holds (move_summary_aside)
        summary_to_move, summarised = has_summary, recorded
        # after the refusals above: a refused resume re-plans nothing
        saved_epochs = ((resume_state.get("config") or {}).get("train") or {}).get("epochs")
        if saved_epochs not in (None, cfg.train.epochs):
            if cfg.train.lr_schedule != "constant":
                log(
                    env,
                    f"note: train.epochs {saved_epochs} -> {cfg.train.epochs} re-plans the "
                    f"{cfg.train.lr_schedule} learning-rate schedule over {total_steps} steps: "
                    f"from step {resume_state['global_step']} the learning rate follows the new "
                    "plan (higher than where the old one ended)",
                )
            # a constant schedule too: its warm-up is a share of all steps (warmup_ratio)
            _replan_lr(optimizer, scheduler)
        log(env, f"resumed {resume_from} at epoch {state.epoch + 1}, step {state.step_in_epoch}")
        # settings of how the steps run that this resume changes: the steps before were timed
        # with the saved values (summary.json's config_changes keeps every resume's)
        config_changes = list(resume_state.get("config_changes") or [])
        for change in timed_changes(resume_state, cfg, settings):
            config_changes.append({"epoch": state.epoch + 1, "step": state.step_in_epoch, **change})
            log(
                env,
                f"note: {change['key']} {change['before']} -> {change['after']} from epoch "
                f"{state.epoch + 1}, step {state.step_in_epoch}: the steps before were timed with "
                f"{change['before']}, so this run's timings mix both (summary.json: config_changes)",
            )

    def move_summary_aside() -> None:
        """Before the first write that records training beyond a finished run's summary.json,
        rename it summary.prev.json: the folder is then an unfinished run (scalelab report
        skips it) until this run writes its own summary."""
        nonlocal summary_to_move
        if summary_to_move and env.is_main and (run_dir / "summary.json").is_file():
            try:
                move_aside(run_dir / "summary.json", run_dir / "summary.prev.json")
            except OSError as exc:  # a read-only folder
                raise CheckpointError(
                    f"{run_dir}/summary.json: cannot move it aside to summary.prev.json "
                    f"({first_line(exc)}); it is unchanged"
                ) from None
            log(
                env,
                f"moved {run_dir}/summary.json aside to summary.prev.json: the run now trains "
                f"beyond the {summarised} epochs it summarised; a new summary.json is written "
                "when it finishes",
            )
        summary_to_move = False

    def open_folder() -> None:
        _open_run_folder(run_dir, cfg, folder_lock)
        if recorded < len(state.metrics):
            # stopped between an epoch's checkpoint and its metrics.csv row: the row is in the
            # checkpoint (and no epoch may be left to write it)
            move_summary_aside()
            _write_metrics(run_dir / "metrics.csv", state.metrics)

    _on_rank0(env, open_folder)
    log(
        env,
        f"run {run_dir} | {cfg.name}: {num_params:,} parameters | world size {env.world_size} "
        f"({env.backend}, {env.device.type}) | global batch {cfg.train.batch_size} = "
        f"{env.world_size} ranks x {cfg.train.per_rank_batch(env.world_size)} x {cfg.train.grad_accum_steps} accum | "
        f"{len(data.train):,} train / {len(data.test):,} test examples",
    )

    def checkpoint(st: TrainState, loss_sum_dev: torch.Tensor) -> None:
        if not cfg.train.save_checkpoint:
            return
        # host-device sync + one collective (every rank's own state): only at checkpoint time
        hook_state = D.comm_hook_state(_ddp(model))  # PowerSGD: per-rank error feedback
        mine = (
            rng_state(),
            float(loss_sum_dev.item()),
            st.epoch_tokens,
            st.epoch_phases,
            hook_state,
        )
        every = D.gather_objects(mine, env)
        rngs, sums, tokens, phases, hooks = (list(col) for col in zip(*every, strict=True))
        hook_states = hooks if hook_state is not None else None

        def write() -> None:
            move_summary_aside()
            save_checkpoint(
                ckpt_path,
                {
                    "model": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler else None,
                    "epoch": st.epoch,
                    "step_in_epoch": st.step_in_epoch,
                    "global_step": st.global_step,
                    "epoch_loss_sums": sums,
                    "epoch_elapsed_s": st.epoch_elapsed_s,  # rank 0's
                    "epoch_tokens": tokens,
                    "epoch_phases": phases,
                    "metrics": st.metrics,
                    "rng": rngs,
                    "comm_hook_state": hook_states,
                    "profile": profiler.result,  # train.profile_steps of an earlier invocation
                    # rank 0's steps left out of the timing so far, every invocation's warm-up
                    "timing_warmup": _warmup_so_far(warmup_before, timer),
                    "world_size": env.world_size,
                    "config": cfg.to_dict(),
                    "config_changes": config_changes,
                    "timed_settings": settings,
                    # the encoded data's cache key: its files, tokenizer and max_seq_len
                    "data_key": data.cache_path.name,
                },
            )

        _on_rank0(env, write)

    # Warm-up is excluded from timing, but never more than half of the first epoch (of what is
    # left of it, when resumed mid-epoch).
    warmup = min(cfg.train.timing_warmup_steps, (steps_per_epoch - state.step_in_epoch) // 2)
    # Profiled steps (a fresh run's, right after the warm-up) are slower: timed as warm-up too.
    n_profile = 0
    if cfg.train.profile_steps and state.global_step == 0:
        # at most half the rest of the first epoch; a 1-epoch run keeps at least one timed step
        room = (steps_per_epoch - warmup) // 2
        n_profile = min(cfg.train.profile_steps, max(1, room) if cfg.train.epochs > 1 else room)
        if not n_profile:
            log(env, f"note: train.profile_steps: {steps_per_epoch} steps are too few to profile "
                "and still time one; not profiled")  # fmt: skip
    profiler = StepProfiler(n_profile, warmup, env.device, run_dir / f"profile-rank{env.rank}.json")
    spin_wait = D.spins_waiting(cfg.distributed, env.backend)  # for the ranks' meetings below
    if resume_state is not None and resume_state.get("profile"):
        profiler.result = resume_state["profile"]  # profiled before the run was stopped
    timer = StepTimer(env.device, warmup_steps=warmup + n_profile)
    # the warm-up of the invocations before this one (each resumed invocation warms up again)
    warmup_before = warmup_record((resume_state or {}).get("timing_warmup"))
    train_split_lengths = data.train.lengths
    steps_this_invocation = 0
    stop_requested = False
    stopped_by: int | None = None  # the signal that stopped the run, if one did
    diverged = False  # a non-finite epoch loss was reported

    def max_over_ranks(x: float) -> float:
        return D.all_reduce_max(x, env)

    def poll_stop(seconds_per_step: float) -> tuple[int | None, int]:
        """Collective: the signal to stop for (any rank's), and the steps until the next poll,
        STOP_POLL_S of the slowest rank's steps (the same number on every rank)."""
        signum, slowest = D.all_reduce_maxes([float(stops.received or 0), seconds_per_step], env)
        return (int(signum) or None), max(1, int(STOP_POLL_S / max(slowest, 1e-9)))

    for epoch in range(state.epoch, cfg.train.epochs):
        sampler.set_epoch(epoch)
        sampler.set_start_step(state.step_in_epoch)
        model.train()
        progress = Progress(cfg, env, steps_per_epoch, epoch, cfg.train.epochs)
        loss_sum = torch.tensor(state.epoch_loss_sum, device=env.device)
        first_step = state.step_in_epoch
        num_tokens = state.epoch_tokens
        carried_s = state.epoch_elapsed_s  # trained in this epoch before a stop (None: unknown)
        watch = Stopwatch(env.device)
        watch.start()  # host-device sync: once per epoch (waits for queued work, then starts)
        timer.start_epoch()
        window_t, window_n = time.perf_counter(), 0
        # the first poll after one step: its time sets the interval (STOP_POLL_S)
        poll_every, since_poll, poll_t = 1, 0, time.perf_counter()

        for micro_batches in sampler:
            if state.step_in_epoch >= steps_per_epoch:
                break
            profiler.before_step(steps_this_invocation)
            loss_sum += train_step(
                model,
                micro_batches,
                data,
                optimizer,
                scheduler,
                scaler,
                timer,
                cfg,
                env,
                amp,
                # DDP's static graph is recorded on this DDP object's first iteration, which must
                # not run under no_sync (torch asserts "expect_autograd_hooks_").
                sync_every_micro_step=cfg.distributed.static_graph and steps_this_invocation == 0,
                emb_rows=emb_rows,
                global_batch=sampler.current_global_batch,
            )
            timer.end_step()
            if profiler.after_step():
                # every rank writes its own trace, some slower: they meet before the next step,
                # whose all-reduce would otherwise time a slow writer as the others' wait
                t_met = time.perf_counter()
                D.barrier(env, spin=spin_wait)
                # writing the trace, and waiting for a peer's, is not training time
                watch.exclude(profiler.export_s + time.perf_counter() - t_met)
                timer.untimed()  # nor the next step's data time
            num_tokens += int(sum(train_split_lengths[mb].sum() for mb in micro_batches))
            state.step_in_epoch += 1
            state.global_step += 1
            steps_this_invocation += 1
            window_n += 1
            log_now = (
                state.step_in_epoch % cfg.train.log_every_steps == 0
                or state.step_in_epoch == steps_per_epoch
            )
            if log_now and progress.mode != "none":
                # host-device sync: reading the loss; only every log_every_steps
                mean_loss = loss_sum.item() / state.step_in_epoch
                now = time.perf_counter()
                progress.update(
                    state.step_in_epoch,
                    window_n,
                    mean_loss,
                    window_n * cfg.train.batch_size / max(now - window_t, 1e-9),
                )
                window_t, window_n = now, 0
            if (
                cfg.train.checkpoint_every_steps
                and state.global_step % cfg.train.checkpoint_every_steps == 0
            ):
                watch.pause()  # host-device sync: writing the checkpoint is not training time
                _keep_position(state, num_tokens, carried_s, watch)
                # the phase times so far go into the checkpoint too, so an epoch resumed from
                # it after a crash keeps them (the epoch's end merges the rest)
                state.epoch_phases = _epoch_phases(state.epoch_phases, timer, env)
                checkpoint(state, loss_sum)
                # rank 0 writes it while the others would go on to the next step's all-reduce
                # and count the write as their wait there: every rank waits it out paused
                D.barrier(env, spin=spin_wait)
                watch.resume()
                timer.untimed()  # nor the next step's data time
            if cfg.train.stop_after_steps and steps_this_invocation >= cfg.train.stop_after_steps:
                stop_requested = True
            since_poll += 1
            if not stop_requested and since_poll >= poll_every:
                # collective (two floats) every ~STOP_POLL_S: did any rank get SIGTERM/SIGUSR1?
                now = time.perf_counter()
                stopped_by, poll_every = poll_stop((now - poll_t) / since_poll)
                stop_requested = stopped_by is not None
                since_poll, poll_t = 0, now
            if stop_requested and state.step_in_epoch < steps_per_epoch:
                break  # mid-epoch: checkpoint below; at an epoch's end, finish the epoch first
        if profiler.close():  # the epoch ended (or stopped) before the profiled steps did
            watch.exclude(profiler.export_s)
        train_time_s = watch.elapsed_s()  # host-device sync: once per epoch
        progress.close()
        if stop_requested and state.step_in_epoch < steps_per_epoch:
            _keep_position(state, num_tokens, carried_s, watch)
            # host-device sync: the phase times of the steps so far, kept for the resumed epoch
            state.epoch_phases = _epoch_phases(state.epoch_phases, timer, env)
            checkpoint(state, loss_sum)
            D.barrier(env)  # rank 0 has written it before any rank exits
            _stop(env, steps_this_invocation, run_dir, stopped_by, cfg.train.save_checkpoint)
            return run_dir
        # the whole epoch's training time when it was resumed (steps before the stop included)
        epoch_time_s = train_time_s + (carried_s or 0.0)

        steps_done = state.step_in_epoch
        steps_timed = steps_done - first_step
        # host-device sync: the epoch's loss, read once per epoch
        (train_loss_sum, tokens_all) = D.all_reduce_sum(
            [float(loss_sum.item()), float(num_tokens)], env
        )
        eval_watch = Stopwatch(env.device)
        eval_watch.start()  # host-device sync: once per epoch
        val_loss, val_acc = evaluate(model, data, cfg, env, amp)
        eval_time_s = eval_watch.elapsed_s()  # host-device sync: once per epoch
        row = _epoch_row(
            epoch,
            _epoch_phases(state.epoch_phases, timer, env),
            cfg,
            env,
            steps_done=steps_done,
            steps_timed=steps_timed,
            carried_s=carried_s,
            epoch_time_s=epoch_time_s,
            eval_time_s=eval_time_s,
            train_loss_sum=train_loss_sum,
            tokens_all=tokens_all,
            val_loss=val_loss,
            val_acc=val_acc,
        )
        state.metrics.append(row)
        log(
            env,
            f"epoch {epoch + 1}/{cfg.train.epochs}: train_loss {row['train_loss']:.4f} val_loss {val_loss:.4f} "
            f"val_acc {val_acc:.4f} | {epoch_time_s:.2f}s, {row['samples_per_s']:,.0f} samples/s | step "
            f"{row['step_ms']:.2f} ms = data {row['data_ms']:.2f} + h2d {row['h2d_ms']:.2f} + fwd "
            f"{row['forward_ms']:.2f} + bwd {row['backward_ms']:.2f} + opt {row['optimizer_ms']:.2f}",
        )
        if not (diverged or (math.isfinite(row["train_loss"]) and math.isfinite(val_loss))):
            diverged = True  # said once; the values were read to the host already: no sync
            log(
                env,
                f"warning: epoch {epoch + 1}'s loss is not finite: the run diverged (lower "
                "train.lr or raise train.warmup_ratio); its timings still count, its accuracy "
                "does not, and a checkpoint with NaN weights is not resumed",
            )
        state = TrainState(
            epoch=epoch + 1, step_in_epoch=0, global_step=state.global_step, metrics=state.metrics
        )
        # The checkpoint before metrics.csv: a crash (or a full disk) between the two leaves
        # metrics.csv an epoch behind, which the resume rewrites from the checkpoint's rows.
        # metrics.csv ahead of the checkpoint means epochs trained without checkpoints, which a
        # resume refuses to overwrite (resume_is_finished).
        checkpoint(state, torch.zeros((), device=env.device))

        def write_metrics(rows: list[dict[str, Any]] = state.metrics) -> None:
            move_summary_aside()
            _write_metrics(run_dir / "metrics.csv", rows)

        _on_rank0(env, write_metrics)
        if not stop_requested:
            stopped_by = stops.agreed(max_over_ranks)  # collective, once per epoch
            stop_requested = stopped_by is not None
        if stop_requested:
            _stop(env, steps_this_invocation, run_dir, stopped_by, cfg.train.save_checkpoint)
            return run_dir

    comm = measure_communication(
        model,
        data,
        sampler,
        cfg,
        env,
        amp,
        emb_rows,
        in_step_ms=_mean_excluding_first(state.metrics, COLLECTIVE_KEY),
    )

    def write_summary() -> None:
        summary = _summary(
            cfg,
            env,
            run_dir,
            data,
            state,
            comm,
            num_params,
            num_threads,
            timer,
            amp,
            cpus=cpus,
            warmup_before=warmup_before,
        )
        # timed settings a resume changed: the epochs before were timed with the old values
        summary["config_changes"] = config_changes
        if profiler.result is not None:
            summary["profile"] = profiler.result
        write_run_file(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        # what the folder holds (profile traces, summary.prev.json, a checkpoint from before
        # train.save_checkpoint was turned off), not what this invocation meant to write
        held = sorted(f.name for f in run_dir.iterdir() if f.is_file() and f.name[0] != ".")
        log(env, f"wrote {run_dir}/ ({', '.join(held)})")

    _on_rank0(env, write_summary)
    D.barrier(env)
    return run_dir


def _restore(
    resume_state: dict[str, Any],
    resume_from: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler | None,
    *,
    data: EncodedData,
    sampler: TrainBatchSampler,
    cfg: Config,
    env: D.DistEnv,
    amp: torch.dtype | None,
    steps_per_epoch: int,
    emb_rows: D.EmbeddingRowGrad | None = None,
) -> TrainState:
    """Load a checkpoint's states (model, optimizer, schedule, scaler, this rank's RNG and
    comm-hook state) and return where the run stands; refuses, with one line, a checkpoint this
    run cannot continue."""
    # the config's one line before any state loads (another vocab size would otherwise be a
    # tensor size mismatch) and before the settling steps spend time
    rngs = resume_state["rng"]
    if len(rngs) != env.world_size:
        raise CheckpointError(
            f"{resume_from}: saved with {len(rngs)} ranks, resumed with {env.world_size}; "
            "resume with the same world size"
        )
    check_resume_config(resume_state, cfg, resume_from, steps_per_epoch, data.cache_path.name)
    # before the checkpoint's RNG and comm-hook state are restored: its draws do not count
    _settle_ddp_buckets(model, data, sampler, cfg, env, amp, emb_rows)
    load_states(resume_state, resume_from, _unwrap(model), optimizer, scheduler, scaler)
    try:
        set_rng_state(rngs[env.rank])
    except LOAD_ERRORS as exc:
        raise CheckpointError(
            f"{resume_from}: its RNG state of rank {env.rank} does not load ({load_error(exc)})"
        ) from None
    if D.has_comm_hook_state(_ddp(model)):
        saved_hook = resume_state.get("comm_hook_state")
        if saved_hook is None:
            log(
                env,
                f"note: {resume_from} holds no distributed.comm_hook={cfg.distributed.comm_hook} "
                "state (saved with another hook); its error feedback starts afresh",
            )
        else:
            try:
                D.load_comm_hook_state(_ddp(model), saved_hook[env.rank], env.device)
            except LOAD_ERRORS as exc:
                raise CheckpointError(
                    f"{resume_from}: its distributed.comm_hook={cfg.distributed.comm_hook} "
                    f"state of rank {env.rank} does not load ({load_error(exc)})"
                ) from None
    # a per-rank field absent or None: saved by a version that did not record it
    per_rank = {
        key: resume_state.get(key) or [default] * env.world_size
        for key, default in (("epoch_loss_sums", 0.0), ("epoch_tokens", 0), ("epoch_phases", None))
    }
    return TrainState(
        epoch=resume_state["epoch"],
        step_in_epoch=resume_state["step_in_epoch"],
        global_step=resume_state["global_step"],
        epoch_loss_sum=per_rank["epoch_loss_sums"][env.rank],
        metrics=resume_state.get("metrics") or [],
        epoch_elapsed_s=resume_state.get(
            "epoch_elapsed_s", None if resume_state["step_in_epoch"] else 0.0
        ),
        epoch_tokens=per_rank["epoch_tokens"][env.rank],
        epoch_phases=per_rank["epoch_phases"][env.rank],
    )


def _settle_ddp_buckets(
    model: nn.Module,
    data: EncodedData,
    sampler: TrainBatchSampler,
    cfg: Config,
    env: D.DistEnv,
    amp: torch.dtype | None,
    emb_rows: D.EmbeddingRowGrad | None = None,
) -> None:
    """Let DDP rebuild its buckets before a resumed run's first step, so it is exact.

    DDP all-reduces its first step in one bucket layout (parameter order) and every later step
    in the layout it rebuilds from the first backward's gradient order. With 3 or more ranks the
    rounding of a sum depends on where a value sits in the bucket, so a resumed run's first step
    would not be the uninterrupted run's (2 ranks add two numbers: the same either way). One
    forward and backward with no optimizer step does the rebuild; its gradients are dropped, and
    the caller restores the RNG and comm-hook state it used from the checkpoint afterwards.
    """
    if not (env.is_distributed and isinstance(_ddp(model), D.DDP)):
        return
    sampler.set_epoch(0)
    sampler.set_start_step(0)
    idx = next(iter(sampler))[-1]
    batch = make_batch(data.train, idx, device=env.device, **batch_padding(cfg))
    model.train()
    _forward_loss(model, batch, amp, env.device).backward()
    model.zero_grad(set_to_none=True)
    if emb_rows is not None and emb_rows.deferred is not None:
        # grad_sync=fused: the buckets DDP handed over in the first layout; kept, the first
        # step's all-reduce would send them once more beside the rebuilt layout's
        emb_rows.deferred.discard()


def _keep_position(
    state: TrainState, num_tokens: int, carried_s: float | None, watch: Stopwatch
) -> None:
    """Put the epoch's training time and tokens so far into `state`, for a checkpoint."""
    state.epoch_tokens = num_tokens
    state.epoch_elapsed_s = (
        None if carried_s is None else carried_s + watch.elapsed_s()  # host-device sync
    )


def _warmup_so_far(before: dict[str, float], timer: StepTimer) -> dict[str, float]:
    """The steps excluded from the timing as warm-up (and their time), the earlier invocations'
    (`before`, `warmup_record`) plus this one's: the count of steps the phase means leave out."""
    return {
        "warmup_steps": int(before["warmup_steps"]) + min(timer.warmup_steps, timer.steps_seen),
        "warmup_time_s": before["warmup_time_s"] + timer.warmup_time_s,
        "warmup_invocations": int(before["warmup_invocations"]) + 1,
    }


def _stop(
    env: D.DistEnv, steps: int, run_dir: Path, signum: int | None, checkpointed: bool
) -> None:
    """Say where the run stopped and how to continue it; raise TrainingStopped for a signal."""
    why = f"on {signal.Signals(signum).name}" if signum else "as asked (train.stop_after_steps)"
    how = (
        f"continue with train.resume=auto output.dir={run_dir.parent} output.run_name={run_dir.name}"
        if checkpointed
        else "no checkpoint was written (train.save_checkpoint=false), so it cannot be continued"
    )
    log(env, f"stopped after {steps} steps {why}; {how}")
    if signum:
        raise TrainingStopped(signum)


def _summary(
    cfg: Config,
    env: D.DistEnv,
    run_dir: Path,
    data: EncodedData,
    state: TrainState,
    comm: dict[str, Any],
    num_params: int,
    num_threads: int,
    timer: StepTimer,
    amp: torch.dtype | None = None,
    *,
    cpus: tuple[int, list[int] | None],
    warmup_before: dict[str, float],
) -> dict[str, Any]:
    """summary.json. ``cpus``: how many CPUs the job may use, and rank 0's share of them under
    distributed.pin_cpus (every rank has its own slice; None = unbound). ``warmup_before``: the
    timing warm-up of the invocations before a resume (`warmup_record`)."""
    rows = state.metrics
    last = rows[-1] if rows else {}
    timing_keys = [f"{p}_ms" for p in PHASES] + [
        "step_ms", "step_ms_max", "data_ms_max", "forward_ms_max", SPREAD_KEY,
    ]  # fmt: skip
    cuda = env.device.type == "cuda"
    in_step = _mean_excluding_first(rows, COLLECTIVE_KEY)
    return {
        "run_name": run_dir.name,
        "preset": cfg.name,
        "dataset": cfg.data.dataset,
        "model_arch": cfg.model.arch,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device_type": env.device.type,
        "device_name": torch.cuda.get_device_name(env.device) if cuda else cpu_model(),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "backend": env.backend,
        "world_size": env.world_size,
        "num_nodes": env.num_nodes,
        "local_world_size": env.local_world_size,
        "git_commit": git_commit(),
        "num_params": num_params,
        "global_batch": cfg.train.batch_size,
        "per_rank_batch": cfg.train.per_rank_batch(env.world_size),
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "steps_per_epoch": last.get("num_steps"),
        "compile": cfg.train.compile_mode if cfg.train.compile else None,
        # resolved ('auto' -> bf16/fp32), so an 'auto' run groups with its explicit twin in reports
        "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32"),
        "num_epochs": len(rows),
        "num_train_samples": len(data.train),
        "num_test_samples": len(data.test),
        "mean_tokens_per_sample": float(data.train.lengths.mean()),
        "final_val_acc": last.get("val_acc"),
        "final_val_loss": last.get("val_loss"),
        "mean_epoch_time_s": _mean_excluding_first(rows, "epoch_time_s"),
        "samples_per_s": _mean_excluding_first(rows, "samples_per_s"),
        "tokens_per_s": _mean_excluding_first(rows, "tokens_per_s"),
        "peak_mem_mb": max(
            (r["peak_mem_mb"] for r in rows if is_number(r.get("peak_mem_mb"))), default=None
        ),
        "timing": {
            # steps left out as warm-up (capped at half an epoch's), over every invocation
            **_warmup_so_far(warmup_before, timer),
            **{k: _mean_excluding_first(rows, k) for k in timing_keys},
            # null where the steps did not time it (DDP's buckets, NCCL, one rank)
            COLLECTIVE_KEY: in_step if math.isfinite(in_step) else None,
        },
        "comm": comm,
        "system": {
            "hostname": socket.gethostname(),
            "num_cpus": cpus[0],
            "bound_cpus": cpus[1],
            "num_threads_per_rank": num_threads,
            "num_loader_workers": 0,
            "find_unused_parameters": cfg.distributed.find_unused_parameters,
            "cpu_bf16": cpu_bf16_support() if env.device.type == "cpu" else None,
        },
        "data": {
            "pad_to_max_len": cfg.data.pad_to_max_len,
            "pad_multiple": cfg.data.pad_multiple,
            "on_device": bool(cfg.data.on_device and env.device.type == "cuda"),  # CUDA only
            "delay_per_batch_s": cfg.data.delay_per_batch_s,
            "cache_hit": data.cache_hit,
            "prep_time_s": data.prep_time_s,
            "description": data.description,
            "warnings": list(data.warnings),
        },
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
