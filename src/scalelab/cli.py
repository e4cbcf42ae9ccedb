"""`scalelab train | sweep | slurm | demo | report | predict | commbench | data | config`.

User errors (bad config, data, checkpoint, run folder, launch, a bad flag) print one line and
exit 2; a sweep or demo that SIGTERM/SIGUSR1 stopped prints one line and exits 128 + the signal,
as `scalelab train` does; Ctrl-C (SIGINT) prints one line, "scalelab: interrupted" and how to
continue where that applies, and exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import math
import sys
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


#: where each user-error class lives: one a command raised was imported with its module
_USER_ERRORS = (
    ("scalelab.config", "ConfigError"),
    ("scalelab.data.sources", "DataError"),
    ("scalelab.checkpoint", "CheckpointError"),
    ("scalelab.host", "LaunchError"),
    ("scalelab.analysis.collect", "AnalysisError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes of the modules this command imported: importing the others (torch,
    via checkpoint) would cost seconds, and libgomp would print its complaint about a bad
    OMP_NUM_THREADS before the error line."""
    return tuple(
        getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules
    )


def find_config(name: str) -> Path:
    """A preset name (ag_news_small) or a path to a YAML file."""
    if not name.strip():  # `--config "$PRESET"` with PRESET unset: was the defaults, silently
        from scalelab.config import ConfigError

        raise ConfigError("--config is empty: give a preset name or a YAML path")
    p = Path(name)
    if p.is_file():
        return p
    # ./configs first (a user's own presets), then the presets installed with the package
    for base in (Path.cwd() / "configs", PACKAGE_DIR / "configs"):
        cand = base / f"{name.removesuffix('.yaml')}.yaml"
        if cand.is_file():
            return cand
    from scalelab.config import ConfigError

    if p.is_dir():  # no preset of that name either (was "config not found" of a path that exists)
        raise ConfigError(f"{p}: is a folder, not a YAML config file")
    raise ConfigError(f"config not found: {name} (give a YAML path or a preset name from configs/)")


def _load_config(args: argparse.Namespace) -> Any:
    """The Config of a command's --config (preset or YAML; none: the defaults) and overrides."""
    from scalelab.config import load_config

    path = find_config(args.config) if args.config is not None else None
    return load_config(path, args.overrides)


def cmd_train(args: argparse.Namespace) -> int:
    import time

    cfg = _load_config(args)
    from scalelab.host import no_gpu_visible, omp_threads_error

    # before torch's import, at which libgomp would print its own line about the variable (a CPU
    # run only: a GPU run ignores it, and train._set_threads checks it once the device is known)
    if no_gpu_visible() and (why := omp_threads_error(cfg.train.num_threads)) is not None:
        from scalelab.config import ConfigError

        raise ConfigError(why)
    started = time.time()
    try:
        from scalelab.train import fit

        fit(cfg)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(_train_interrupted(cfg, started)) from None
    return 0


def _train_interrupted(cfg: Any, started: float) -> str:
    """What an interrupted `train` leaves: the command that continues it from its last
    checkpoint, or that it wrote none (checkpoints are written atomically: never half of one)."""
    checkpoint = sys.modules.get("scalelab.checkpoint")
    if checkpoint is None:  # interrupted while importing torch: no run folder yet
        return ""
    name, out = checkpoint.CHECKPOINT_NAME, Path(cfg.output.dir).expanduser()
    try:
        if cfg.output.run_name:
            run_dir: Path | None = out / cfg.output.run_name
            found = [run_dir / name] if (run_dir / name).is_file() else []
        else:  # a timestamped run folder (train._run_dir) with a checkpoint of this invocation
            mtimes = {
                p: p.stat().st_mtime for p in out.glob(f"{glob.escape(cfg.name)}-ws*-*/{name}")
            }
            found = sorted((p for p, t in mtimes.items() if t >= started - 1), key=mtimes.get)
            run_dir = found[-1].parent if found else None
    except OSError:
        return ""
    if found:
        return (
            f"continue from its last checkpoint ({found[-1]}) with train.resume=auto "
            f"output.dir={run_dir.parent} output.run_name={run_dir.name}"
        )
    if run_dir is not None and run_dir.is_dir():
        return f"no checkpoint was written to {run_dir}, so the run cannot be continued"
    return ""


def cmd_config(args: argparse.Namespace) -> int:
    from scalelab.config import ConfigError, describe, save_config

    if args.config is not None or args.overrides:  # overrides alone: the defaults, checked
        cfg = _load_config(args)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            save_config(cfg, Path(d) / "c.yaml")
            text = (Path(d) / "c.yaml").read_text()
    else:
        text = describe() + "\n"
    try:  # its output is the product: `scalelab config > my.yaml` on a full disk must say so
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # `scalelab config | head`: _run's quiet exit
    except OSError as exc:
        raise ConfigError(f"cannot write the config to standard output ({exc.strerror})") from None
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Prepare (tokenise + cache) the data of a config and print what it holds."""
    from scalelab.config import ConfigError
    from scalelab.data import prepare_data

    if args.older_than_days is not None and not args.clear:
        raise ConfigError("--older-than-days needs --clear (it picks the cache files to delete)")
    if args.list and args.clear:
        raise ConfigError("--list and --clear: give one (--list shows the cache, --clear deletes)")
    cfg = _load_config(args)
    if args.list or args.clear:
        from scalelab.data import default_cache_dir

        return _cache_command(default_cache_dir(cfg.data.cache_dir), args)
    data = prepare_data(cfg)
    print(
        f"{data.description}\n  train {len(data.train):,} examples, test {len(data.test):,}, "
        f"{data.num_classes} classes, vocab {data.vocab_size:,}\n"
        f"  mean length {data.train.lengths.mean():.1f} tokens (max_seq_len {cfg.model.max_seq_len})\n"
        f"  cache {'hit' if data.cache_hit else 'built'}: {data.cache_path} ({data.prep_time_s:.2f} s)"
    )
    for warning in data.warnings:
        print(f"  warning: {warning}")
    return 0


def _cache_command(folder: Path, args: argparse.Namespace) -> int:
    """`scalelab data --list` / `--clear [--older-than-days D]` on the cache folder."""
    import math
    import time

    from scalelab.config import ConfigError
    from scalelab.data import clear_cache, list_cache

    days = 0.0 if args.older_than_days is None else args.older_than_days
    if not math.isfinite(days) or days < 0:  # nan passes < 0
        raise ConfigError(f"--older-than-days must be a finite number of days >= 0, got {days}")
    if args.clear:
        gone = clear_cache(folder, older_than_s=days * 86400.0)
        freed = sum(size for _, size in gone) / 2**20
        print(f"removed {len(gone)} file(s), {freed:.1f} MB, from {folder}")
        return 0
    entries = list_cache(folder)
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.modified))
        stale = (
            ""
            if e.current
            else "  [older cache version: never read again]"
            if e.readable
            else "  [a run that needs it rebuilds it; --clear removes it]"
        )
        print(f"{e.size_bytes / 2**20:9.1f} MB  {when}  {e.path.name}  {e.description}{stale}")
    total = sum(e.size_bytes for e in entries) / 2**20
    print(f"{len(entries)} cache file(s), {total:.1f} MB in {folder}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from scalelab.launch.local import sweep_main

    return sweep_main(args.rest)


def cmd_slurm(args: argparse.Namespace) -> int:
    from scalelab.launch.slurm import slurm_main

    return slurm_main(args.rest)


def cmd_commbench(args: argparse.Namespace) -> int:
    from scalelab.commbench import commbench_main

    return commbench_main(args.rest)


def cmd_report(args: argparse.Namespace) -> int:
    from scalelab.analysis import AnalysisError
    from scalelab.analysis.collect import REQUIRED_FILES
    from scalelab.analysis.report import write_report
    from scalelab.config import not_a_folder

    if not args.out.strip():
        raise AnalysisError("--out is empty: give the folder the report goes into")
    why = not_a_folder(args.out)
    if why:
        raise AnalysisError(f"--out {args.out}: {why}")
    held = [n for n in REQUIRED_FILES if (Path(args.out) / n).is_file()]
    if held:  # its report files would sit among the run's own, and a rerun would replace them
        raise AnalysisError(
            f"--out {args.out} is a run folder (it holds {held[0]}): choose a folder of its own, "
            f"e.g. {Path(args.out) / 'report'}"
        )
    outputs = write_report(
        args.runs,
        Path(args.out),
        commbench=args.commbench,
        busbw_gbps=args.busbw_gbps,
        alpha_ms=args.alpha_ms,
    )
    print(f"report written to {args.out}/")
    for name, path in outputs.items():
        print(f"  {name}: {path}")
    print(f"open in a browser: {outputs['html']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from scalelab.analysis.collect import load_run
    from scalelab.analysis.predict import (
        commbench_caveats,
        load_commbench,
        load_sync_latency,
        predict_scaling,
    )
    from scalelab.analysis.report import cpu_prediction_notes, format_predictions
    from scalelab.analysis.scaling import cpu_threads_per_rank
    from scalelab.config import ConfigError, is_number

    run = load_run(args.run)
    sync = None
    # as `scalelab report`: a bandwidth the user gives wins over a commbench file
    if args.busbw_gbps is not None:
        alpha_ms, busbw = args.alpha_ms or 0.0, args.busbw_gbps
    elif args.commbench:
        alpha_ms, busbw, _ = load_commbench(args.commbench)
        sync = load_sync_latency(args.commbench)
    else:
        raise ConfigError(
            "predict needs --commbench FILE or --busbw-gbps (and optionally --alpha-ms)"
        )
    # the prediction keeps the base run's global batch: a world size it does not split over
    # is a run the trainer refuses (train.batch_size not divisible by ranks x accumulation)
    batch, accum = run.summary.get("global_batch"), int(run.summary.get("grad_accum_steps") or 1)

    def splits(n: int) -> bool:
        return n < 1 or not is_number(batch) or batch % (n * accum) == 0

    if args.world_sizes is None:  # the default sizes the batch splits over (1 always does)
        args.world_sizes = [n for n in (1, 2, 4, 8) if splits(n)]
    uneven = [n for n in args.world_sizes if not splits(n)]
    if uneven:
        raise ConfigError(
            f"global batch {batch:g} of run {run.name} does not split over {uneven[0]} ranks x "
            f"{accum} accumulation step(s): the trainer refuses such a run; choose world sizes "
            f"whose product with {accum} divides {batch:g}"
        )
    threads = args.threads_per_rank
    if threads is not None:
        if cpu_threads_per_rank(run.summary) is None:
            where = run.summary.get("device_type") or "an unknown device"
            raise ConfigError(
                f"--threads-per-rank applies to CPU runs with a recorded thread count; "
                f"run {run.name} ran on {where}"
            )
        if not (math.isfinite(threads) and threads > 0):
            raise ConfigError(f"--threads-per-rank must be a number > 0, got {threads:g}")
    preds = predict_scaling(
        run.summary,
        args.world_sizes,
        busbw_gbps=busbw,
        alpha_ms=alpha_ms,
        overlap=args.overlap,
        sync_latency=sync,
        threads_per_rank=None if threads is None else dict.fromkeys(args.world_sizes, threads),
    )
    print(format_predictions(preds))
    wake = max((p.wake_ms for p in preds), default=0.0)
    if wake > 0:
        print(
            f"note: comm T_ar includes {wake:.3g} ms per step because the step's first "
            "all-reduce is reached from compute (the commbench's after-compute time at its size "
            "less its back-to-back time)"
        )
    if args.busbw_gbps is None:
        mismatch, scope = commbench_caveats(args.commbench, run, args.world_sizes)
        if mismatch:
            warnings.warn(mismatch, stacklevel=1)
        if scope:
            print(f"note: {scope}")
    for line in cpu_prediction_notes(run.summary, preds, given=threads is not None):  # CPU only
        out = sys.stderr if line.startswith("warning:") else sys.stdout
        print(line, file=out, flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the small preset on the bundled AG News sample with 1 and 2 CPU processes, then report.

    The runs and the bandwidth measurement use the CPU (gloo) even on a machine with GPUs: their
    processes get CUDA_VISIBLE_DEVICES="" (only the demo's; `scalelab sweep` uses what it finds).
    """
    from scalelab.analysis.report import write_report
    from scalelab.launch.local import check_sweep, commbench_wait, run_commbench, run_sweep

    out = Path(args.out or f"experiments/demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    config = find_config("ag_news_small")
    if any(o.partition("=")[0].strip() == "train.epochs" for o in args.overrides):
        from scalelab.config import ConfigError  # it overrode --epochs, silently

        raise ConfigError("demo: give the epochs as --epochs N, not train.epochs=N")
    overrides = ["data.source=sample", f"train.epochs={args.epochs}", *args.overrides]
    _, cfg = check_sweep(config, [1, 2], overrides, out)  # before the line that says it starts
    print(
        f"scalelab demo: {config.stem} on the bundled AG News sample, "
        f"1 and 2 CPU processes -> {out}/",
        flush=True,
    )
    # One thread per rank: the 1-rank baseline gets the same resources as each of the 2 ranks.
    run_dirs = run_sweep(
        str(config), [1, 2], overrides, out_dir=str(out), threads_per_rank=1, cpu_only=True
    )
    bench = run_commbench(
        2, out / "commbench", max_bytes="16M", cpu_only=True, wait=commbench_wait(cfg)
    )
    outputs = write_report(run_dirs, out / "report", commbench=bench)
    print("\nruns:")
    for d in run_dirs:
        print(f"  {d}")
    print(f"all-reduce bandwidth: {bench}")
    print(f"report: {outputs['markdown']}")
    print(f"open in a browser: {outputs['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from scalelab.arguments import ArgumentParser
    from scalelab.launch.local import parse_world_sizes

    p = ArgumentParser(prog="scalelab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser, required: bool) -> None:
        sp.add_argument("--config", "-c", required=required, help="preset name or YAML path")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=128")

    sp = sub.add_parser("train", help="train one run (one process, or each rank under torchrun)")
    with_config(sp, required=False)
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("config", help="print the config reference, or a resolved preset")
    with_config(sp, required=False)
    sp.set_defaults(fn=cmd_config)

    sp = sub.add_parser(
        "data",
        help="prepare and cache a config's data; print its statistics (or list/clear the cache)",
    )
    with_config(sp, required=False)
    sp.add_argument("--list", action="store_true", help="list the cache folder's encoded datasets")
    sp.add_argument(
        "--clear", action="store_true", help="delete the cache folder's encoded datasets"
    )
    sp.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        help="with --clear: only those last written more than this many days ago",
    )
    sp.set_defaults(fn=cmd_data)

    # Listed for --help only; main() hands their arguments to their own parsers.
    sub.add_parser(
        "sweep",
        help="train a preset at several world sizes with torchrun, then report (see sweep --help)",
    )
    sub.add_parser(
        "slurm",
        help="write and submit an sbatch job (srun + torchrun, requeue on preemption; slurm --help)",
    )
    sub.add_parser(
        "commbench", help="all-reduce bandwidth sweep, run under torchrun (see commbench --help)"
    )

    sp = sub.add_parser(
        "report", help="speedup/efficiency tables, plots, diagnosis, HTML and LaTeX"
    )
    sp.add_argument("runs", nargs="+", help="run folders, or folders containing run folders")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--commbench", help="commbench.json for predictions")
    sp.add_argument(
        "--busbw-gbps", type=float, help="link bus bandwidth (GB/s); overrides --commbench"
    )
    sp.add_argument("--alpha-ms", type=float, help="all-reduce latency (ms), with --busbw-gbps")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("predict", help="predict speedup at N ranks from a 1-rank run + bandwidth")
    sp.add_argument("run", help="a 1-rank run folder")
    sp.add_argument("--commbench", help="commbench.json")
    sp.add_argument(
        "--busbw-gbps", type=float, help="link bus bandwidth (GB/s); overrides --commbench"
    )
    sp.add_argument("--alpha-ms", type=float, help="all-reduce latency (ms), with --busbw-gbps")
    sp.add_argument(
        "--overlap",
        type=float,
        help="fraction of all-reduce hidden behind backward (default: modelled)",
    )
    sp.add_argument(
        "--world-sizes",
        type=parse_world_sizes,
        default=None,
        help="e.g. 2,4,8 (default: those of 1, 2, 4, 8 the global batch splits over)",
    )
    sp.add_argument(
        "--threads-per-rank",
        type=float,
        help="CPU runs: threads each rank gets at every world size (default: the base run's)",
    )
    sp.set_defaults(fn=cmd_predict)

    sp = sub.add_parser(
        "demo",
        help="the main job: 1- and 2-process CPU runs of the small preset + report "
        "(GPUs hidden: CUDA_VISIBLE_DEVICES='')",
        description="Train ag_news_small on the bundled AG News sample with 1 and then 2 "
        "processes on the CPU (gloo; GPUs are hidden from them with CUDA_VISIBLE_DEVICES=''), "
        "measure all-reduce bandwidth and write the report.",
    )
    sp.add_argument("--out", help="output folder (default experiments/demo-<time>)")
    sp.add_argument("--epochs", type=int, default=3)
    sp.add_argument("overrides", nargs="*")
    sp.set_defaults(fn=cmd_demo)
    return p


# Subcommands with their own argparse; everything after the name is theirs.
PASSTHROUGH = {"sweep": cmd_sweep, "slurm": cmd_slurm, "commbench": cmd_commbench}


_python_warning_format = warnings.formatwarning


def _warning_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line=None
) -> str:
    """scalelab's own warnings as one line, as its errors (Python's format adds the file, line
    number and source line); other libraries' keep Python's format, which names where."""
    if Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        return f"scalelab: warning: {message}\n"
    return _python_warning_format(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _warning_line
    try:
        code = _run(argv)
    except KeyboardInterrupt as exc:  # e.g. while the parser imports torch, before any command
        code = _interrupted(exc)
    except Exception:  # a bug, not a user error: show it, then leave as exit_process says
        traceback.print_exc()
        code = 1
    # only a command that imported torch.distributed can have joined a process group; the others
    # (config, report, ...) never import torch
    distributed = sys.modules.get("scalelab.distributed")
    return distributed.exit_process(code) if distributed else code


def _interrupted(exc: KeyboardInterrupt) -> int:
    """One line for Ctrl-C (a command's KeyboardInterrupt may carry what to do next); exit 130."""
    from scalelab.host import is_main_process  # torch-free: Ctrl-C may have cut its import

    # every rank of a torchrun or srun job gets the terminal's SIGINT: one line, from rank 0
    if is_main_process():
        how = str(exc)
        with contextlib.suppress(OSError, ValueError):  # stderr closed
            print(f"scalelab: interrupted{'; ' + how if how else ''}", file=sys.stderr, flush=True)
    return 130


def _training_stopped() -> tuple[type[BaseException], ...]:
    """TrainingStopped, where a command imported checkpoint (only a training run raises it; the
    import would cost torch's, see `_user_errors`)."""
    checkpoint = sys.modules.get("scalelab.checkpoint")
    return (checkpoint.TrainingStopped,) if checkpoint else ()


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASSTHROUGH:
        args = argparse.Namespace(fn=PASSTHROUGH[argv[0]], rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)  # overrides on both sides of the flags
    try:
        return args.fn(args)
    # first: the clauses after it import torch, which a second Ctrl-C would interrupt
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except _training_stopped() as exc:  # checkpointed; rank 0 said how to resume
        return exc.exit_code
    except _user_errors() as exc:
        from scalelab.host import is_main_process  # torch-free: the error may come before torch

        if is_main_process() or getattr(exc, "every_rank", False):
            print(f"scalelab: error: {exc}", file=sys.stderr, flush=True)
        # a sweep a signal stopped (demo's runs): 128 + the signal, as `scalelab sweep` exits
        return getattr(exc, "exit_code", 2)
    except BrokenPipeError:  # e.g. `scalelab config | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
