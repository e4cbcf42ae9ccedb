"""Local world-size sweeps with the real launcher: one `train` run per world size, via torchrun.

Every multi-rank run goes through ``python -m torch.distributed.run --standalone`` (torchrun), so a
sweep exercises exactly what a user types by hand; the 1-rank run is a plain process with no process
group, the baseline that speedups are measured against.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from scalelab.arguments import ArgumentParser, folder
from scalelab.config import Config, ConfigError, load_config, not_a_folder
from scalelab.host import LaunchError, available_cpus

# run_sweep sets these itself; a user override would make the returned run folders wrong
_RESERVED_OVERRIDES = ("output.dir", "output.run_name")


class SweepError(LaunchError):
    """A sweep cannot start or one of its runs failed (one line; the CLI prints it and exits 2)."""


class SweepStopped(SweepError):
    """A signal stopped the sweep after its running run checkpointed: the CLI prints the line and
    exits 128 + the signal (143 for SIGTERM, 138 for SIGUSR1), as `scalelab train` does, so a
    scheduler can tell a preemption from a user error."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value


def torchrun_argv(
    nproc: int,
    module_args: list[str],
    *,
    nnodes: int = 1,
    standalone: bool = True,
    python: str = sys.executable,
) -> list[str]:
    """Command line running ``python -m scalelab <module_args>`` on `nproc` ranks per node.

    One rank on one node is a plain process (no torchrun, no process group): the honest baseline.
    """
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got nproc={nproc}, nnodes={nnodes}")
    if nproc == 1 and nnodes == 1:
        return [python, "-m", "scalelab", *module_args]
    if standalone and nnodes > 1:
        raise ValueError(
            "--standalone rendezvous is single-node; nnodes > 1 needs a rendezvous endpoint"
        )
    argv = [python, "-m", "torch.distributed.run"]
    if standalone:
        argv.append("--standalone")  # torchrun picks a free port on localhost itself
    if nnodes > 1:
        argv.append(f"--nnodes={nnodes}")
    return [*argv, f"--nproc_per_node={nproc}", "-m", "scalelab", *module_args]


#: Seconds torchrun waits for its ranks to exit after a stop signal before it kills them.
SHUTDOWN_TIMEOUT_S = 120

#: Seconds a sweep waits after Ctrl-C for its child to end by itself before it sends SIGTERM.
_INTERRUPT_GRACE_S = 10.0

# Forwarded to the running child: preemption (SIGTERM) and SLURM's time-limit warning (SIGUSR1).
# The ranks checkpoint and exit with 128 + the signal; the sweep then stops (see run_sweep).
_FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def _run_child(
    argv: list[str], env: dict[str, str], *, torchrun: bool = False
) -> tuple[int, str | None]:
    """Run one child (it inherits stdout/stderr); return its exit code and the name of the signal
    passed on to it, if any. SIGTERM/SIGUSR1 sent to this process go to the child, so a killed
    sweep leaves no orphaned training run (torchrun itself exits 1 after forwarding one).

    A `torchrun` child gets SIGTERM for either: torchrun forwards SIGTERM to its ranks, while
    SIGUSR1 would kill torchrun itself (it handles only TERM, INT, HUP and QUIT by default) and
    leave its ranks, in their own sessions, training on as orphans. The ranks treat both alike.
    """
    proc = subprocess.Popen(argv, env=env)
    forwarded: list[str] = []

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signal.Signals(signum).name)
        proc.send_signal(signal.SIGTERM if torchrun else signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in _FORWARDED:
            previous[s] = signal.signal(s, forward)
    try:
        try:
            return proc.wait(), (forwarded[0] if forwarded else None)
        except KeyboardInterrupt:
            # A terminal's Ctrl-C reached the child too (one process group): let it end first,
            # so no rank writes on after this sweep has said it stopped. A SIGINT sent to this
            # process alone did not: then ask the child to stop as on preemption (it checkpoints).
            try:
                proc.wait(timeout=_INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def rank_threads(world_size: int, threads: int | None = None, cpus: int | None = None) -> int:
    """OMP threads per rank: the explicit value, else the node's CPUs split evenly (at least 1).

    Oversubscribing (ranks x threads > cores) makes the ranks fight for cores and the measured
    scaling says more about the OS scheduler than about DDP.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads per rank must be >= 1, got {threads}")
        return threads
    return max(1, (cpus if cpus is not None else available_cpus()) // world_size)


def _check_devices(
    world_sizes: list[int], cpu_only: bool, threads: dict[int, int] | None = None
) -> None:
    """Refuse world sizes with more ranks than GPUs (each rank needs its own); on CPU, warn of
    those whose ranks x threads per rank (`threads`: world size -> threads; 1 if not given) are
    more than the CPUs this process may use: the ranks then share cores, and their timings
    measure the OS scheduler rather than DDP. A warning, not an error: it may be the point."""
    import torch

    if not cpu_only and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if max(world_sizes) > gpus:
            raise SweepError(
                f"world size {max(world_sizes)} needs {max(world_sizes)} GPUs, this machine has "
                f"{gpus}: two ranks would share one GPU (use --world-sizes up to {gpus})"
            )
        return
    cpus = available_cpus()
    for n in world_sizes:
        t = (threads or {}).get(n, 1)
        if n * t > cpus:
            print(
                f"[sweep] warning: world size {n} x {t} thread(s) per rank = {n * t} threads on "
                f"{cpus} available CPU(s): the ranks oversubscribe the CPUs, so its timings "
                "measure the OS scheduler more than DDP and its speedup means little "
                "(lower --threads-per-rank or the world size)",
                flush=True,
            )


def check_sweep(
    config_path: str | Path,
    world_sizes: list[int],
    overrides: list[str],
    out_dir: str | Path | None = None,
) -> tuple[Path, Config]:
    """Validate the whole sweep before the first run starts; return (config file, its config)."""
    from scalelab.cli import find_config  # same preset-name lookup as `scalelab train --config`

    if not world_sizes:
        raise SweepError("no world sizes given")
    if any(n < 1 for n in world_sizes) or len(set(world_sizes)) != len(world_sizes):
        raise SweepError(f"world sizes must be distinct and >= 1, got {world_sizes}")
    for item in overrides:
        if item.partition("=")[0].strip() in _RESERVED_OVERRIDES:
            raise SweepError(f"override '{item}' is set by the sweep itself; use --out instead")
    try:
        path = find_config(str(config_path))
        cfg = load_config(path, overrides)
        # e.g. a batch size that does not divide by 4 fails now, not after the 1- and 2-rank runs
        for n in world_sizes:
            cfg.validate(world_size=n)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if cfg.train.stop_after_steps:
        # every run would stop early and the report would then refuse the unfinished folders
        raise SweepError(
            f"train.stop_after_steps={cfg.train.stop_after_steps} would stop every run of the "
            "sweep early, leaving nothing to compare; remove it (a sweep stopped by SIGTERM "
            "continues with train.resume=auto)"
        )
    why = not_a_folder(out_dir) if out_dir is not None else None
    if why:
        raise SweepError(f"--out {out_dir}: {why}")
    from scalelab.checkpoint import holds_run

    if out_dir is not None and holds_run(Path(out_dir)):
        # its runs would nest inside another run's folder, where report reads that run alone
        raise SweepError(
            f"--out {out_dir} is a run folder (it holds a run of its own): choose a folder "
            "for the sweep's runs, e.g. one beside it"
        )
    if out_dir is not None and not cfg.train.resume:
        # `train` would refuse these folders too, but only after the earlier runs had finished,
        # and with its own error line on top of the sweep's
        for n in world_sizes:
            run_dir = Path(out_dir) / f"{cfg.name}-ws{n}"
            if holds_run(run_dir):
                raise SweepError(
                    f"{run_dir} already holds a run; choose another --out "
                    "(or add train.resume=auto to continue the sweep)"
                )
    return path, cfg


def run_sweep(
    config_path: str | Path,
    world_sizes: list[int],
    overrides: list[str],
    *,
    out_dir: str | Path,
    threads_per_rank: int | None,
    cpu_only: bool = False,
) -> list[Path]:
    """Train once per world size (sequentially, output streamed); return the run folders.

    `config_path` is a YAML file or a preset name from configs/ (as for `scalelab train`).
    `cpu_only` hides any GPU from the runs (CUDA_VISIBLE_DEVICES=""): CPU processes with gloo.

    Raises SweepError naming the world size and exit code of the first run that fails.
    """
    config_file, cfg = check_sweep(config_path, world_sizes, overrides, out_dir)
    # train.num_threads, when set, wins over the OMP_NUM_THREADS a sweep gives (train._set_threads)
    threads = {n: cfg.train.num_threads or rank_threads(n, threads_per_rank) for n in world_sizes}
    _check_devices(world_sizes, cpu_only, threads)
    runs: list[Path] = []
    for n in world_sizes:
        run_name = f"{cfg.name}-ws{n}"
        module_args = [
            "train",
            "--config",
            str(config_file),
            f"output.dir={out_dir}",
            f"output.run_name={run_name}",
            *overrides,
        ]
        argv = torchrun_argv(n, module_args)
        env = _child_env(threads[n], cpu_only)
        print(
            f"[sweep] world size {n} ({threads[n]} thread(s)/rank): {shlex.join(argv)}", flush=True
        )
        try:
            code, stopped_by = _run_child(argv, env, torchrun=n > 1)
        except KeyboardInterrupt:  # Ctrl-C: the run has ended (see _run_child); no further run
            raise KeyboardInterrupt(
                f"the sweep stopped during the world-size-{n} run; "
                + _how_to_continue(Path(out_dir) / run_name, runs)
            ) from None
        if stopped_by:  # the run checkpointed (or finished); start no further run
            raise SweepStopped(
                f"sweep stopped by {stopped_by} during the world-size-{n} run; "
                + _how_to_continue(Path(out_dir) / run_name, runs),
                stopped_by,
            )
        if code != 0:
            raise SweepError(f"sweep stopped: the world-size-{n} run failed with exit code {code}")
        runs.append(Path(out_dir) / run_name)
    return runs


def _how_to_continue(run_dir: Path, finished: list[Path]) -> str:
    """How to continue a sweep stopped during the run of `run_dir`, after the `finished` ones."""
    from scalelab.checkpoint import CHECKPOINT_NAME

    if (run_dir / CHECKPOINT_NAME).is_file():
        return "run the same command with train.resume=auto to continue"
    if finished:  # without resume=auto the sweep would refuse their folders
        return (
            "run the same command with train.resume=auto to continue (this run wrote no "
            "checkpoint: it starts over)"
        )
    return "it stopped before writing a checkpoint: run the same command again"


def _child_env(threads: int, cpu_only: bool) -> dict[str, str]:
    """Environment of a sweep's child: its threads per rank (torchrun would force
    OMP_NUM_THREADS=1), unbuffered output so it streams line by line, GPUs hidden if `cpu_only`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    # torchrun SIGKILLs its ranks this long after forwarding a SIGTERM (default 30 s): enough for
    # the ranks to finish a step, a stop poll (train.STOP_POLL_S) and their checkpoint
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_commbench(
    nproc: int,
    out_dir: str | Path,
    *,
    max_bytes: str = "64M",
    cpu_only: bool = False,
    wait: str = "spin",
) -> Path:
    """All-reduce sweep on `nproc` local ranks (torchrun); returns the commbench.json path.

    `cpu_only` hides any GPU (CUDA_VISIBLE_DEVICES=""): gloo on the CPU, as the CPU runs use.
    `wait`: how its after-compute all-reduces are waited for, as the runs' collective_wait.
    """
    argv = torchrun_argv(
        nproc,
        ["commbench", "--out", str(out_dir), "--max-bytes", max_bytes, "--wait", wait],
    )
    env = _child_env(rank_threads(nproc), cpu_only)
    print(f"[sweep] all-reduce bandwidth on {nproc} ranks: {shlex.join(argv)}", flush=True)
    code, stopped_by = _run_child(argv, env, torchrun=nproc > 1)
    if stopped_by:  # nothing to checkpoint: the finished runs stay, the measurement reruns
        raise SweepStopped(
            f"sweep stopped by {stopped_by} during the all-reduce measurement on {nproc} ranks "
            "(its runs are complete); run the same command with train.resume=auto to measure "
            "again and write the report",
            stopped_by,
        )
    if code != 0:
        raise SweepError(f"commbench on {nproc} ranks failed with exit code {code}")
    return Path(out_dir) / "commbench.json"


def commbench_wait(cfg: Config) -> str:
    """commbench's --wait for runs of `cfg`: its after-compute all-reduces are waited for as
    the runs wait for theirs (distributed.collective_wait)."""
    return "block" if cfg.distributed.collective_wait == "block" else "spin"


def parse_world_sizes(text: str) -> list[int]:
    try:
        # every part a number: "2,,4" is a typo (was read as 2,4); a trailing comma is fine
        sizes = (
            [int(part) for part in text.strip().removesuffix(",").split(",")]
            if text.strip()
            else []
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--world-sizes must be comma-separated integers like 1,2,4, got {text!r}"
        ) from None
    if not sizes:
        raise argparse.ArgumentTypeError("--world-sizes is empty")
    if len(set(sizes)) < len(sizes):  # each size once: its run (or prediction) is one row
        raise argparse.ArgumentTypeError(f"--world-sizes lists a size twice: {text!r}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="scalelab sweep",
        description="Train the same config at several world sizes on this machine (torchrun "
        "--standalone for >1 rank) and write a scaling report.",
    )
    p.add_argument("--config", required=True, help="YAML preset, e.g. configs/ag_news_small.yaml")
    p.add_argument("--world-sizes", type=parse_world_sizes, default=[1, 2], help="e.g. 1,2,4 (1,2)")
    p.add_argument(
        "--out", type=folder, default="experiments/sweep", help="parent folder of the run folders"
    )
    p.add_argument(
        "--threads-per-rank", type=int, default=None, help="OMP threads per rank (CPUs / ranks)"
    )
    p.add_argument(
        "--commbench",
        action="store_true",
        help="also measure all-reduce bandwidth at the largest world size; predictions use it",
    )
    p.add_argument("overrides", nargs="*", help="config overrides like train.epochs=1")
    return p


def sweep_main(argv: list[str]) -> int:
    """CLI entry point for `scalelab sweep`; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.threads_per_rank is not None and args.threads_per_rank < 1:
            raise SweepError(f"--threads-per-rank must be >= 1, got {args.threads_per_rank}")
        runs = run_sweep(
            args.config,
            args.world_sizes,
            args.overrides,
            out_dir=args.out,
            threads_per_rank=args.threads_per_rank,
        )
        big = max(args.world_sizes)
        bench = None
        if args.commbench and big > 1:
            _, cfg = check_sweep(args.config, args.world_sizes, args.overrides)  # the runs' config
            bench = run_commbench(big, Path(args.out) / "commbench", wait=commbench_wait(cfg))
    except SweepError as exc:
        print(f"scalelab: error: {exc}", file=sys.stderr)  # the CLI's one-line format
        return getattr(exc, "exit_code", 2)  # SweepStopped: 128 + the signal
    print("[sweep] runs: " + ", ".join(str(r) for r in runs))
    from scalelab.analysis.report import write_report

    outputs = write_report(runs, Path(args.out) / "report", commbench=bench)
    print(f"[sweep] report: {outputs['html']}")
    return 0
