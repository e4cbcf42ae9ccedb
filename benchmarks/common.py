"""Shared benchmark helpers: presets, machine info, timing statistics and result JSON files.

Every benchmark script writes one JSON file holding the machine it ran on, the exact command,
the git commit and every measured figure, so a number can always be traced back to a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

# one definition each for run folders and benchmark results
from scalelab.distributed import available_cpus
from scalelab.train import cpu_model, git_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_SHARED_DATA = REPO.parent / "shared" / "data"


def load_preset(name: str, overrides: list[str] | None = None):  # -> scalelab.config.Config
    """A configs/ preset (by name or path) with dotted overrides, as `scalelab train` loads it."""
    from scalelab.cli import find_config
    from scalelab.config import load_config

    return load_config(find_config(name), overrides or [])


def shared_data_overrides(shared: Path, dataset: str = "ag_news") -> list[str]:
    """Overrides that point a preset at the full files in the shared data folder."""
    return [
        "data.source=files",
        f"data.train_path={shared / dataset / 'train.csv.gz'}",
        f"data.test_path={shared / dataset / 'test.csv.gz'}",
    ]


def git_dirty() -> bool | None:
    """True if tracked files differ from the commit (figures then belong to uncommitted code)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured."""
    cuda = torch.cuda.is_available()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "hostname": socket.gethostname(),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu: {cpu_model()}",
        "device_type": "cuda" if cuda else "cpu",
        "num_cpus": available_cpus(),  # the CPUs this process may use (affinity, cgroup)
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
    }


def run_header(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line, date, git commit and machine: the first keys of every result file."""
    argv = sys.argv if argv is None else argv
    return {
        "command": shlex.join([Path(sys.executable).name, *argv]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        **machine_info(),
    }


def default_out(suffix: str = "") -> Path:
    """benchmarks/results/<date>-<hostname><suffix>.json, or with the time of day added
    (<date>-<hostname><suffix>-<HHMMSS>.json) where that file exists: a second run on the same
    day (this VM's hosts are all named alike) must not replace the first."""
    now = datetime.now()
    path = RESULTS_DIR / f"{now:%Y-%m-%d}-{socket.gethostname()}{suffix}.json"
    return path.with_name(f"{path.stem}-{now:%H%M%S}.json") if path.exists() else path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def write_result(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as indented JSON (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the raw repeats: noisy shared machines need all of them."""
    return {
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "repeats": list(values),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    """PASS / FAIL against a target; SKIP when nothing was measured."""
    if value is None or value != value:
        return "SKIP"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "FAIL"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    """Plain fixed-width table (no dependency; readable in CI logs)."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    line = "  ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(f"{str(c):<{w}}" for c, w in zip(r, widths, strict=True)))


# ----------------------------------------------------------------------------- scalelab's own loop


def padded_width(
    longest: int, pad_to: int | None = None, pad_multiple: int = 1, max_len: int | None = None
) -> int:
    """The width `scalelab.data.make_batch` pads a batch whose longest sequence is `longest` to.

    The same arithmetic as make_batch (which has no separate function for it): `pad_to` when
    given (`data.pad_to_max_len`), else `longest` rounded up to a multiple of `pad_multiple`,
    capped at `max_len` but never below `longest`. The keyword arguments are
    `scalelab.train.batch_padding(cfg)`, what `train_step` passes to make_batch.
    """
    if pad_to is not None:
        return pad_to
    width = -(-longest // pad_multiple) * pad_multiple
    if max_len is not None:
        width = max(longest, min(width, max_len))
    return width


class ScalelabStepper:
    """scalelab's trainer pieces, driven step by step: the exact `train_step` that `fit` runs.

    Built like `fit` builds them (model, `_make_optimizer`, `_make_scheduler`, length-bucketed
    `TrainBatchSampler`, `StepTimer`), for one process without a process group. Measuring
    through these pieces (rather than `fit`) lets a benchmark interleave scalelab's steps
    with the baseline's in one process, so machine noise hits both alike.
    """

    def __init__(self, cfg, data, device: torch.device | None = None) -> None:
        from scalelab import distributed as D
        from scalelab.models import build_model
        from scalelab.timing import StepTimer
        from scalelab.train import (
            _make_optimizer,
            _make_scheduler,
            _resolve_precision,
            compile_model,
            make_embedding_rows,
            make_sampler,
        )

        self.cfg = cfg
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.env = D.DistEnv(device=self.device)
        # as fit: with data.on_device on CUDA both splits live on the GPU
        on_gpu = cfg.data.on_device and self.device.type == "cuda"
        self.data = data.to(self.device) if on_gpu else data
        self.amp = _resolve_precision(cfg, self.device)
        torch.manual_seed(cfg.train.seed)
        classes = cfg.model.num_classes or data.num_classes
        model = build_model(cfg.model, data.vocab_size, classes, data.train.pad_id)
        self.model = model.to(self.device)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.net = self.model
        # as fit: the token embedding's gradient row-wise where that is the default (CPU)
        self.emb_rows = make_embedding_rows(self.model, cfg, self.env, data.train.tokens.cpu())
        if cfg.train.compile:  # train.compile_mode as fit uses it
            self.net = compile_model(self.model, cfg)
        self.sampler = make_sampler(cfg, self.env, data.train.lengths)
        self.opt = _make_optimizer(self.net, cfg, self.device)
        total = max(1, len(self.sampler) * cfg.train.epochs)
        self.sched = _make_scheduler(self.opt, cfg, total)
        self.timer = StepTimer(self.device, warmup_steps=0)
        self.net.train()  # once, as fit does per epoch (evaluate restores it)
        self.loss_sum = torch.zeros((), device=self.device)
        self.epoch = 0
        self._it = None
        self.tokens = 0  # real (unpadded) tokens of the steps taken
        self.padded_tokens = 0  # what the batches cost (padded as make_batch pads them)
        self.real_tokens_sq = 0  # sum of squared real lengths (attention FLOPs)
        self.samples = 0  # examples of the steps taken
        self.width_steps: Counter[int] = Counter()  # micro-batches per padded width (batch shape)

    def width(self, idx: np.ndarray, padding: dict[str, Any] | None = None) -> int:
        """The width `train_step` pads the micro-batch `idx` to (its tensors' sequence length);
        `padding`: `scalelab.train.batch_padding(cfg)`, if already at hand."""
        from scalelab.train import batch_padding

        padding = batch_padding(self.cfg) if padding is None else padding
        return padded_width(int(self.data.train.lengths[idx].max()), **padding)

    def _next(self):
        if self._it is None:
            self.sampler.set_epoch(self.epoch)
            self._it = iter(self.sampler)
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            self._it = iter(self.sampler)
            return next(self._it)

    def step(self, micro: list[np.ndarray] | None = None) -> None:
        """One optimizer step on the sampler's next batch, or on `micro` (this rank's
        micro-batches, e.g. to run a chosen batch shape; the sampler does not advance)."""
        from scalelab.train import batch_padding, train_step

        if micro is None:
            micro = self._next()
            global_batch = self.sampler.current_global_batch
        else:
            global_batch = np.concatenate(micro)
        self.loss_sum += train_step(
            self.net,
            micro,
            self.data,
            self.opt,
            self.sched,
            None,
            self.timer,
            self.cfg,
            self.env,
            self.amp,
            emb_rows=self.emb_rows,
            global_batch=global_batch,
        )
        self.timer.end_step()
        lengths = self.data.train.lengths
        padding = batch_padding(self.cfg)  # what train_step padded with
        for mb in micro:
            n = lengths[mb]
            width = padded_width(int(n.max()), **padding)
            self.tokens += int(n.sum())
            self.padded_tokens += len(mb) * width
            self.real_tokens_sq += int((n**2).sum())
            self.samples += len(mb)
            self.width_steps[width] += 1

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def run(self, num_steps: int, warmup_steps: int = 3) -> dict[str, Any]:
        """Time `num_steps` steps after `warmup_steps` untimed ones; per-phase ms from StepTimer."""
        for _ in range(warmup_steps):
            self.step()
        self.sync()
        self.timer.start_epoch()  # phase laps of the timed steps only
        tok0, pad0, sq0, n0 = self.tokens, self.padded_tokens, self.real_tokens_sq, self.samples
        widths0 = Counter(self.width_steps)
        t0 = time.perf_counter()
        for _ in range(num_steps):
            self.step()
        self.sync()
        elapsed = time.perf_counter() - t0
        phases = self.timer.epoch_summary()
        return {
            "samples_per_s": num_steps * self.cfg.train.batch_size / elapsed,
            "step_ms": 1000.0 * elapsed / num_steps,
            "num_steps": num_steps,
            "warmup_steps": warmup_steps,
            "elapsed_s": elapsed,
            "real_tokens": self.tokens - tok0,
            "padded_tokens": self.padded_tokens - pad0,
            "real_tokens_sq": self.real_tokens_sq - sq0,
            "samples": self.samples - n0,
            "widths": sorted(self.width_steps - widths0),  # padded widths of these steps
            "phase_ms": {k: v for k, v in phases.items() if k != "measured_steps"},
        }


# ----------------------------------------------------------------------------- shared-machine noise


def _cpu_times() -> tuple[float, float] | None:
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields), idle


def background_busy(interval_s: float = 1.0) -> float | None:
    """Fraction of all cores busy over `interval_s` while this process sleeps (= other users' load)."""
    a = _cpu_times()
    time.sleep(interval_s)
    b = _cpu_times()
    if a is None or b is None or b[0] <= a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def busy_text(quiet: dict[str, Any]) -> str:
    """A `wait_for_quiet` result for a progress line ("n/a" where /proc/stat was unreadable)."""
    busy = quiet.get("background_busy")
    return "n/a" if busy is None else f"{busy:.0%}"


def wait_for_quiet(threshold: float = 0.25, max_wait_s: float = 30.0) -> dict[str, Any]:
    """Wait (bounded) until other processes use < `threshold` of the cores; report what was seen.

    Multi-threaded CPU runs slow down far more than proportionally when another process takes
    a core (every parallel region waits for the descheduled thread), so a timed block is only
    started on a quiet machine when possible, and the background load is recorded either way.
    """
    t0 = time.perf_counter()
    busy = background_busy()
    while busy is not None and busy >= threshold and time.perf_counter() - t0 < max_wait_s:
        busy = background_busy(2.0)
    return {"background_busy": busy, "waited_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- paired A/B rounds


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 rounds or steps divided by zero later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_round_arguments(p: Any, rounds: int, steps: int) -> None:
    """The flags of a paired A/B benchmark (`paired_rounds`): rounds, steps, --quick, --out."""
    p.add_argument("--rounds", type=positive_int, default=rounds)
    p.add_argument(
        "--steps", type=positive_int, default=steps, help="timed steps per side per round"
    )
    p.add_argument("--quick", action="store_true", help="2 short rounds: a smoke run")
    p.add_argument("--max-quiet-wait", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=None)


def paired_rounds(
    sides: dict[str, ScalelabStepper],
    rounds: int,
    steps: int,
    *,
    warmup_steps: int,
    max_quiet_wait: float,
    ratio: tuple[str, str],
    label: str = "",
) -> dict[str, Any]:
    """Time two steppers in alternating order (the first of `sides` goes first in even rounds,
    the other in odd ones, so machine noise hits both alike): per side its runs and median
    phases, and per round the step-time ratio `ratio[0]` / `ratio[1]` (> 1: the second is
    faster)."""
    a, b = sides
    num, den = ratio
    runs: dict[str, list[dict[str, Any]]] = {a: [], b: []}
    ratios, quiet = [], []
    for r in range(rounds):
        quiet.append(wait_for_quiet(max_wait_s=max_quiet_wait))
        for side in (a, b) if r % 2 == 0 else (b, a):
            runs[side].append(sides[side].run(steps, warmup_steps=warmup_steps))
        ms = {side: runs[side][-1]["step_ms"] for side in runs}
        ratios.append(ms[num] / ms[den])
        print(
            f"  {label}round {r + 1}/{rounds}: step {a} {ms[a]:.2f} ms, {b} {ms[b]:.2f} ms "
            f"({num}/{den} {ratios[-1]:.3f})",
            flush=True,
        )
    phases = {
        side: {k: median([x["phase_ms"][k] for x in runs[side]]) for k in runs[side][0]["phase_ms"]}
        for side in runs
    }
    return {"runs": runs, "ratios": ratios, "quiet": quiet, "phases": phases}
