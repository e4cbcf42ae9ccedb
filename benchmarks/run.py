"""scalelab's CPU benchmark: the one entry point (`python benchmarks/run.py [--quick]`).

Figures, each printed with PASS/FAIL against its target and written to one JSON file:

1. Training samples/s, scalelab's loop vs the study's way (`study_baseline.py`), same model,
   same global batch, same tokenised data, one process, torch's default threads. scalelab is
   timed through its own `train_step` (`common.ScalelabStepper`). The study's way runs twice:
   with the textbook kernels the study's model had (F.dropout, SDPA: the verdict) and with
   scalelab's CPU kernels (`pipeline only`: what the loop alone buys). All sides run the same
   number of timed steps after the same warm-up, in rotating order within each round of this
   one process, so load from other users of the machine hits them alike; ratios are medians
   of the per-round ratios.
2. Data preparation: tokenizer training + encoding of the full IMDB (50k reviews) and the
   AG News files from the shared data folder into a fresh cache, cold and then warm.
3. CPU data parallelism (small preset): 2 ranks x 1 thread under torchrun vs 1 rank x 1
   thread and 1 rank x 2 threads, from the trainer's own metrics.csv (epoch 2, so start-up
   and warm-up are excluded); 2x1 once more with distributed.pin_cpus=true (what binding each
   rank to its own core buys); the ceiling of 2x1 on these cores: two independent 1-rank
   runs at the per-rank batch started together (no communication, no waiting on each other);
   and the 2x1 step split into compute, the DDP wrapper, synchronisation and gradient
   communication (`ddp_lockstep.py`: the same ranks on the unwrapped model, through DDP
   without any collective, with one 4-byte all-reduce per step, and with scalelab's train_step).
4. Evaluation throughput of `scalelab.train.evaluate` and the runs' peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `common`, `study_baseline`

import torch  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_SHARED_DATA,
    REPO,
    ScalelabStepper,
    busy_text,
    default_out,
    load_preset,
    median,
    print_table,
    run_header,
    shared_data_overrides,
    spread,
    verdict,
    wait_for_quiet,
    write_result,
)
from study_baseline import StudyTrainer, train_study_way  # noqa: E402

TARGETS = {
    "speedup_ag_news_small": 4.0,  # scalelab / study samples/s, at least
    "speedup_ag_news_large": 3.0,
    "prep_cold_s": 20.0,  # at most
    "prep_warm_s": 1.0,  # at most
    "ddp_speedup_2x1_vs_1x1": 1.8,  # at least (90 % efficiency)
    "ddp_2x1_vs_1x2": 1.0,  # 2 ranks x 1 thread no slower than 1 rank x 2 threads
}

# Longest wait for other users' load to drop before a timed block (--max-quiet-wait).
QUIET_WAIT_S = 30.0

#: The sections `--skip` names.
SECTIONS = ("throughput", "prep", "ddp")

# (timed steps per round, rounds, warm-up steps per round) per preset, full and --quick.
# The large preset's study-way step takes tens of seconds on 2 cores, hence few steps.
THROUGHPUT_PLAN = {
    False: {"ag_news_small": (40, 5, 3), "ag_news_large": (2, 3, 1)},
    True: {"ag_news_small": (8, 2, 2), "ag_news_large": (1, 1, 1)},
}


# ----------------------------------------------------------------------------- 1. throughput


def bench_throughput(
    preset: str, data_overrides: list[str], cache_dir: Path, quick: bool
) -> dict[str, Any]:
    """scalelab vs the study's way on one preset; rotating rounds, median of per-round ratios."""
    from scalelab.data import prepare_data
    from scalelab.train import evaluate

    steps, rounds, warmup = THROUGHPUT_PLAN[quick][preset]
    cfg = load_preset(
        preset, [*data_overrides, f"data.cache_dir={cache_dir}", "output.progress=none"]
    )
    data = prepare_data(cfg)
    scalelab = ScalelabStepper(cfg, data)
    study = StudyTrainer(cfg, data, kernels="textbook")
    pipeline = StudyTrainer(cfg, data, kernels="scalelab")
    sides = ("scalelab", "study", "pipeline")
    runs: dict[str, list[dict[str, Any]]] = {who: [] for who in sides}
    ratios, pipeline_ratios, quiet = [], [], []
    for r in range(rounds):
        # Rotate who goes first so a load change mid-round does not always hit one side.
        order = sides[r % 3 :] + sides[: r % 3]
        quiet.append(wait_for_quiet(max_wait_s=QUIET_WAIT_S))
        for who in order:
            if who == "scalelab":
                runs[who].append(scalelab.run(steps, warmup_steps=warmup))
            else:
                tr = study if who == "study" else pipeline
                runs[who].append(train_study_way(cfg, data, steps, warmup_steps=warmup, trainer=tr))
        sps = {who: runs[who][-1]["samples_per_s"] for who in sides}
        ratios.append(sps["scalelab"] / sps["study"])
        pipeline_ratios.append(sps["scalelab"] / sps["pipeline"])
        print(
            f"  {preset} round {r + 1}/{rounds}: scalelab {sps['scalelab']:,.1f} samples/s, "
            f"study {sps['study']:,.1f} (ratio {ratios[-1]:.2f}), study loop on scalelab's "
            f"kernels {sps['pipeline']:,.1f} (ratio {pipeline_ratios[-1]:.2f}) "
            f"(background busy before: {busy_text(quiet[-1])}, waited {quiet[-1]['waited_s']} s)",
            flush=True,
        )
    sl_runs, st_runs = runs["scalelab"], runs["study"]
    # Evaluation throughput of the trainer's own `evaluate` (scalelab's model after training).
    eval_sps = []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        evaluate(scalelab.net, scalelab.data, cfg, scalelab.env, scalelab.amp)
        eval_sps.append(len(data.test) / (time.perf_counter() - t0))
    sl_sps = [x["samples_per_s"] for x in sl_runs]
    st_sps = [x["samples_per_s"] for x in st_runs]
    pl_sps = [x["samples_per_s"] for x in runs["pipeline"]]
    phase_keys = sl_runs[0]["phase_ms"].keys()
    return {
        "preset": preset,
        "data": data.description,
        "num_train": len(data.train),
        "num_test": len(data.test),
        "num_params": scalelab.num_params,
        "global_batch": cfg.train.batch_size,
        "max_seq_len": cfg.model.max_seq_len,
        "torch_threads": torch.get_num_threads(),
        "timed_steps_per_round": steps,
        "warmup_steps_per_round": warmup,
        "rounds": rounds,
        "scalelab_samples_per_s": spread(sl_sps),
        "study_samples_per_s": spread(st_sps),
        "study_kernels": "textbook (F.dropout, SDPA with dropout_p): the study's implementation",
        "ratio_per_round": ratios,
        "ratio": median(ratios),
        "ratio_of_medians": median(sl_sps) / median(st_sps),
        "pipeline_only": {
            "what": "the study's loop on scalelab's CPU kernels: what the loop alone buys",
            "study_samples_per_s": spread(pl_sps),
            "ratio_per_round": pipeline_ratios,
            "ratio": median(pipeline_ratios),
        },
        "scalelab_real_tokens_per_step": sum(x["real_tokens"] for x in sl_runs) / (steps * rounds),
        "scalelab_padded_tokens_per_step": sum(x["padded_tokens"] for x in sl_runs)
        / (steps * rounds),
        "study_padded_tokens_per_step": sum(x["padded_tokens"] for x in st_runs) / (steps * rounds),
        "scalelab_phase_ms_median": {
            k: median([x["phase_ms"][k] for x in sl_runs]) for k in phase_keys
        },
        "eval_examples_per_s": spread(eval_sps),
        "study_dataloader_workers": study.loader.num_workers,
        "background_load_before_rounds": quiet,
    }


# ----------------------------------------------------------------------------- 2. data prep


def bench_data_prep(shared: Path, quick: bool) -> dict[str, Any]:
    """Cold (fresh cache: tokenizer training + encoding) and warm (cache hit) preparation."""
    from scalelab.data import prepare_data

    if not (shared / "imdb" / "train.csv.gz").is_file():
        return {"skipped": f"shared data folder not found: {shared} (give --shared-data)"}
    jobs = [
        ("imdb_small", "imdb"),  # 25k + 25k reviews
        ("ag_news_small", "ag_news"),  # 10,429 + 7,600 rows
    ]
    cold_repeats = 1 if quick else 2
    cold_totals, warm_totals, per_job, quiet = [], [], {}, []
    for rep in range(cold_repeats):
        quiet.append(wait_for_quiet(max_wait_s=QUIET_WAIT_S))
        cache = Path(tempfile.mkdtemp(prefix="scalelab-bench-prep-"))
        try:
            cold_total = 0.0
            cfgs = []
            for preset, dataset in jobs:
                cfg = load_preset(
                    preset, [*shared_data_overrides(shared, dataset), f"data.cache_dir={cache}"]
                )
                cfgs.append((preset, cfg))
                t0 = time.perf_counter()
                data = prepare_data(cfg)
                dt = time.perf_counter() - t0
                assert not data.cache_hit, "a fresh cache folder must miss"
                cold_total += dt
                per_job.setdefault(preset, {"cold_s": [], "warm_s": []})["cold_s"].append(dt)
                per_job[preset].update(num_train=len(data.train), num_test=len(data.test))
            cold_totals.append(cold_total)
            for _ in range(3):  # warm: the same calls again hit the cache
                warm_total = 0.0
                for preset, cfg in cfgs:
                    t0 = time.perf_counter()
                    data = prepare_data(cfg)
                    dt = time.perf_counter() - t0
                    assert data.cache_hit, "the second call must hit the cache"
                    warm_total += dt
                    per_job[preset]["warm_s"].append(dt)
                warm_totals.append(warm_total)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(
            f"  data prep repeat {rep + 1}/{cold_repeats}: cold {cold_totals[-1]:.2f} s, "
            f"warm {median(warm_totals[-3:]):.3f} s (background busy before: "
            f"{busy_text(quiet[-1])}, waited {quiet[-1]['waited_s']} s)",
            flush=True,
        )
    return {
        "what": "imdb_small (IMDB 25k+25k, max_seq_len 512) + ag_news_small (AG News 10,429+7,600) "
        "from data.source=files; cold = tokenizer training + encoding + cache write into a fresh "
        "cache_dir; warm = the same prepare_data calls again (cache hit)",
        "cold_s": spread(cold_totals),
        "warm_s": spread(warm_totals),
        "per_preset": per_job,
        "background_load_before_repeats": quiet,
    }


# ----------------------------------------------------------------------------- 3. DDP on CPU


def _train_runs(
    specs: list[tuple[int, int, str]], out_dir: Path, overrides: list[str]
) -> list[dict[str, Any]]:
    """`scalelab train` runs started together through scalelab's launcher, one per
    (ranks, threads, name); epoch-2 metrics and summary of each once all have finished."""
    from scalelab.launch.local import torchrun_argv

    # Linux carries a parent's peak RSS into a forked+exec'd child's ru_maxrss (what the trainer
    # reports as peak_mem_mb), so a 1-rank run started straight from this big process would
    # report this process's peak. A small trampoline process isolates it, as torchrun's own
    # parent process does for the 2-rank runs.
    trampoline = [
        sys.executable,
        "-c",
        "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))",
    ]
    started = []
    for nproc, threads, name in specs:
        module_args = [
            "train",
            "--config",
            "ag_news_small",
            f"output.dir={out_dir}",
            f"output.run_name={name}",
            f"train.num_threads={threads}",
            *overrides,
        ]
        argv = torchrun_argv(nproc, module_args)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [*trampoline, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: torchrun and its ranks with it
        )
        started.append((nproc, threads, name, argv, proc, time.perf_counter()))
    results = []
    try:
        for nproc, threads, name, argv, proc, t0 in started:
            out, err = proc.communicate(timeout=1800)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed ({proc.returncode}): {(err or out)[-2000:]}")
            results.append(_run_figures(out_dir / name, nproc, threads, wall, argv))
    except BaseException:
        # a failed, hung or interrupted run: stop the others (and their ranks) before the
        # caller removes the folder they write into
        for *_, proc, _ in started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return results


def _run_figures(
    run: Path, nproc: int, threads: int, wall: float, argv: list[str]
) -> dict[str, Any]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = {k: float(v) for k, v in rows[-1].items()}
    summary = json.loads((run / "summary.json").read_text())
    return {
        "ranks": nproc,
        "threads_per_rank": threads,
        "epoch": int(last["epoch"]),
        "samples_per_s": last["samples_per_s"],
        "epoch_time_s": last["epoch_time_s"],
        "eval_time_s": last["eval_time_s"],
        "eval_examples_per_s": summary["num_test_samples"] / last["eval_time_s"],
        "step_ms": last["step_ms"],
        # where a step's time goes (mean over ranks; backward includes exposed all-reduce)
        "phase_ms": {p: last[f"{p}_ms"] for p in ("data", "forward", "backward", "optimizer")},
        "peak_mem_mb": last["peak_mem_mb"],
        "val_acc": last["val_acc"],
        "exposed_comm_ms": summary["comm"].get("exposed_comm_ms"),
        # the calibration's figure, and the steps' own timing of a fused all-reduce (or None)
        "calibrated_exposed_comm_ms": summary["comm"].get("calibrated_exposed_comm_ms"),
        "step_allreduce_ms": summary["timing"].get("step_allreduce_ms"),
        "allreduce_ms": summary["comm"].get("allreduce_ms"),
        "grad_sync": summary["comm"].get("grad_sync"),  # fused or buckets (distributed.grad_sync)
        "collective_wait": summary["comm"].get("collective_wait"),  # spin, block or None (1 rank)
        "bound_cpus": summary["system"].get("bound_cpus"),  # rank 0's, under distributed.pin_cpus
        "wall_s": wall,
        "command": " ".join(argv),
    }


def bench_ddp(cache_dir: Path, data_overrides: list[str], quick: bool) -> dict[str, Any]:
    """1x1, 1x2 and 2x1 (ranks x threads) runs of the small preset, repeated in rotating order."""
    overrides = [
        *data_overrides,
        f"data.cache_dir={cache_dir}",
        "train.epochs=2",
        "train.batch_size=32",
        "train.save_checkpoint=false",
        "output.progress=none",
    ]
    if quick:
        overrides += [
            "train.max_steps_per_epoch=20",
            "train.comm_calibration_steps=2",
            "data.max_test_samples=200",
        ]
    from scalelab.data import prepare_data

    # Build the cache here, so no run's peak memory includes tokenizer training.
    prepare_data(load_preset("ag_news_small", overrides))
    # (key, ranks, threads, extra overrides); "2x1-pinned": each rank bound to its own core
    # (distributed.pin_cpus=true) instead of left to the OS scheduler, what the binding buys;
    # "2x1-buckets": DDP's bucket all-reduces and then the embedding rows' (two collectives per
    # step) instead of the default one fused all-reduce (distributed.grad_sync), what fusing buys;
    # "2x1-block": that all-reduce waited for in gloo's wait() instead of spinning
    # (distributed.collective_wait), what spinning buys
    layouts = [
        ("1x1", 1, 1, []),
        ("1x2", 1, 2, []),
        ("2x1", 2, 1, []),
        ("2x1-pinned", 2, 1, ["distributed.pin_cpus=true"]),
        ("2x1-buckets", 2, 1, ["distributed.grad_sync=buckets"]),
        ("2x1-block", 2, 1, ["distributed.collective_wait=block"]),
    ]
    repeats = 1 if quick else 3
    out_dir = Path(tempfile.mkdtemp(prefix="scalelab-bench-ddp-"))
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in layouts}
    per_rank_batch = 32 // 2
    ceiling: list[float] = []  # samples/s of two independent runs side by side, per repeat
    ceiling_quiet: list[dict[str, Any]] = []  # the background load before each pair
    try:
        for rep in range(repeats):
            for k in range(len(layouts)):
                key, n, t, extra = layouts[(k + rep) % len(layouts)]  # rotate the order each repeat
                quiet = wait_for_quiet(max_wait_s=QUIET_WAIT_S)
                (r,) = _train_runs([(n, t, f"{key}-rep{rep}")], out_dir, [*overrides, *extra])
                r["background_load_before"] = quiet
                runs[key].append(r)
                print(
                    f"  ddp {key} (ranks x threads) repeat {rep + 1}/{repeats}: epoch {r['epoch']} "
                    f"{r['samples_per_s']:,.1f} samples/s, epoch {r['epoch_time_s']:.2f} s, "
                    f"peak {r['peak_mem_mb']:.0f} MB (background busy before: "
                    f"{busy_text(quiet)}, waited {quiet['waited_s']} s)",
                    flush=True,
                )
            # The ceiling: two independent 1-thread runs at the per-rank batch, side by side. What
            # 2 ranks x 1 thread would reach with free communication and no waiting on each other.
            quiet = wait_for_quiet(max_wait_s=QUIET_WAIT_S)
            pair = _train_runs(
                [(1, 1, f"solo-a-rep{rep}"), (1, 1, f"solo-b-rep{rep}")],
                out_dir,
                [*overrides, f"train.batch_size={per_rank_batch}"],
            )
            ceiling.append(sum(r["samples_per_s"] for r in pair))
            ceiling_quiet.append(quiet)
            each = " + ".join(f"{r['samples_per_s']:,.1f}" for r in pair)
            print(
                f"  2 independent 1-thread runs at batch {per_rank_batch}, side by side, repeat "
                f"{rep + 1}/{repeats}: {each} "
                f"samples/s (background busy before: {busy_text(quiet)})",
                flush=True,
            )
        decomposition = _lockstep(overrides, out_dir, quick)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    def med(key: str, field: str) -> float:
        return median([r[field] for r in runs[key]])

    sps = {k: med(k, "samples_per_s") for k in runs}

    def paired(key: str, base: str) -> list[float]:  # samples/s of key / base, repeat by repeat
        return [
            a["samples_per_s"] / b["samples_per_s"]
            for a, b in zip(runs[key], runs[base], strict=True)
        ]

    pinned_ratios = paired("2x1-pinned", "2x1")
    fused_ratios = paired("2x1", "2x1-buckets")
    spin_ratios = paired("2x1", "2x1-block")
    speedup = sps["2x1"] / sps["1x1"]
    return {
        "what": "ag_news_small, global batch 32, train.epochs=2; figures are epoch 2 of each run "
        "(metrics.csv samples_per_s), median over repeats",
        "overrides": overrides,
        "samples_per_s": sps,
        "epoch_time_s": {k: med(k, "epoch_time_s") for k in runs},
        "step_ms": {k: med(k, "step_ms") for k in runs},
        "phase_ms": {
            k: {p: median([r["phase_ms"][p] for r in runs[k]]) for p in runs[k][0]["phase_ms"]}
            for k in runs
        },
        # 2x1's exposed communication (timed in its steps), the calibration's figure, and the
        # same all-reduce back to back: medians over the repeats
        **{
            f"{field}_2x1": median(
                [r[field] for r in runs["2x1"] if r[field] is not None] or [float("nan")]
            )
            for field in ("exposed_comm_ms", "calibrated_exposed_comm_ms", "allreduce_ms")
        },
        "eval_examples_per_s": {k: med(k, "eval_examples_per_s") for k in runs},
        "peak_mem_mb": {k: max(r["peak_mem_mb"] for r in runs[k]) for k in runs},
        "speedup_2x1_vs_1x1": speedup,
        "efficiency_2x1": speedup / 2,
        "two_independent_runs": {
            "what": "two 1-rank x 1-thread runs at the per-rank batch (16) started together: "
            "their summed epoch-2 samples/s, the most 2x1 can reach on these cores "
            "(no communication, no waiting for the other rank)",
            "samples_per_s": ceiling,
            "ceiling_vs_1x1": median(ceiling) / sps["1x1"],
            "speedup_2x1_of_ceiling": sps["2x1"] / median(ceiling),
            "background_load_before": ceiling_quiet,
        },
        "ratio_2x1_vs_1x2": sps["2x1"] / sps["1x2"],
        "pinned_vs_unpinned_2x1": {
            "what": "2x1 with distributed.pin_cpus=true (each rank's threads bound to its own "
            "core) against 2x1 as run by default (placement left to the OS scheduler): the "
            "samples/s ratio of each repeat's pair and their median",
            "ratio": median(pinned_ratios),
            "per_repeat": pinned_ratios,
        },
        "fused_vs_buckets_2x1": {
            "what": "2x1 as run by default (distributed.grad_sync=auto: one all-reduce per step "
            "of DDP's bucket and the embedding rows) against distributed.grad_sync=buckets "
            "(DDP's bucket all-reduce, then the rows'): the samples/s ratio of each repeat's "
            "pair and their median",
            "ratio": median(fused_ratios),
            "per_repeat": fused_ratios,
        },
        "spin_vs_block_2x1": {
            "what": "2x1 as run by default (distributed.collective_wait=auto: each rank waits "
            "for the step's all-reduce yielding the CPU in a loop) against "
            "distributed.collective_wait=block (gloo's wait()): the samples/s ratio of each "
            "repeat's pair and their median",
            "ratio": median(spin_ratios),
            "per_repeat": spin_ratios,
        },
        "step_decomposition_2x1": decomposition,
        "runs": runs,
    }


def _lockstep(overrides: list[str], out_dir: Path, quick: bool) -> dict[str, Any]:
    """benchmarks/ddp_lockstep.py under torchrun (2 ranks x 1 thread): the 2x1 step split into
    compute, the DDP wrapper's own cost, synchronisation and gradient communication."""
    out = out_dir / "lockstep.json"
    script = str(Path(__file__).resolve().parent / "ddp_lockstep.py")
    plan = ["--blocks", "3", "--steps", "2"] if quick else ["--blocks", "30", "--steps", "5"]
    keep = [o for o in overrides if o.startswith(("data.", "train.batch_size"))]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            script, "--out", str(out), *plan, "train.num_threads=1", *keep]  # fmt: skip
    quiet = wait_for_quiet(max_wait_s=QUIET_WAIT_S)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError("ddp_lockstep.py failed:\n" + "\n".join(tail))
    print("  2x1 " + proc.stdout.strip().splitlines()[-1], flush=True)
    result = json.loads(out.read_text())
    result["command"] = " ".join(argv)
    result["background_load_before"] = quiet
    return result


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    global QUIET_WAIT_S
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and repeats (a smoke run)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default benchmarks/results/<date>-<host>.json)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="train on <dir>/ag_news files instead of the bundled sample",
    )
    p.add_argument(
        "--shared-data",
        type=Path,
        default=DEFAULT_SHARED_DATA,
        help="for the data-prep figure (default ../shared/data)",
    )
    p.add_argument(
        "--presets", default="ag_news_small,ag_news_large", help="throughput presets (comma list)"
    )
    p.add_argument("--skip", default="", help="comma list of sections to skip: throughput,prep,ddp")
    p.add_argument(
        "--max-quiet-wait",
        type=float,
        default=QUIET_WAIT_S,
        help="seconds to wait for a quiet machine before each timed block (default 30)",
    )
    args = p.parse_args(argv)
    QUIET_WAIT_S = args.max_quiet_wait
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := sorted(skip - set(SECTIONS)):  # a typo would run the section anyway
        p.error(f"--skip: no section {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    if unknown := [x for x in presets if x not in THROUGHPUT_PLAN[args.quick]]:
        p.error(
            f"--presets: no throughput plan for {', '.join(unknown)} "
            f"(benchmarked presets: {', '.join(THROUGHPUT_PLAN[args.quick])})"
        )
    if args.data_dir is not None and not (args.data_dir / "ag_news").is_dir():
        p.error(f"--data-dir {args.data_dir}: no ag_news folder in it (see ../shared/data)")
    out = args.out or default_out("-quick" if args.quick else "")
    header = run_header(None if argv is None else [sys.argv[0], *argv])
    data_overrides = (
        shared_data_overrides(args.data_dir) if args.data_dir else ["data.source=sample"]
    )
    result: dict[str, Any] = {
        **header,
        "quick": args.quick,
        "targets": TARGETS,
        "training_data": "bundled AG News sample" if not args.data_dir else str(args.data_dir),
    }
    cache_dir = Path(tempfile.mkdtemp(prefix="scalelab-bench-cache-"))
    checks: list[list[str]] = []
    try:
        if "throughput" not in skip:
            print("[1/3] training throughput: scalelab vs the study's way", flush=True)
            result["throughput"] = {}
            for preset in presets:
                tp = bench_throughput(preset, data_overrides, cache_dir, args.quick)
                result["throughput"][preset] = tp
                target = TARGETS.get(f"speedup_{preset}", float("nan"))
                checks.append(
                    [
                        f"train samples/s {preset}",
                        f"scalelab {tp['scalelab_samples_per_s']['median']:,.1f} vs study "
                        f"{tp['study_samples_per_s']['median']:,.1f}: {tp['ratio']:.2f}x",
                        f">= {target:g}x",
                        verdict(tp["ratio"], target),
                    ]
                )
                pl = tp["pipeline_only"]
                checks.append(
                    [
                        f"  of which the loop alone {preset}",
                        f"scalelab vs study loop on scalelab's kernels "
                        f"{pl['study_samples_per_s']['median']:,.1f}: {pl['ratio']:.2f}x",
                        "-",
                        "info",
                    ]
                )
                checks.append(
                    [
                        f"evaluate examples/s {preset}",
                        f"{tp['eval_examples_per_s']['median']:,.1f}",
                        "-",
                        "info",
                    ]
                )
        if "prep" not in skip:
            print("[2/3] data preparation (IMDB 50k + AG News files)", flush=True)
            prep = bench_data_prep(args.shared_data, args.quick)
            result["data_prep"] = prep
            if "skipped" in prep:
                print(f"  SKIPPED: {prep['skipped']}")
                checks.append(["data prep", prep["skipped"], "-", "SKIP"])
            else:
                cold, warm = prep["cold_s"]["median"], prep["warm_s"]["median"]
                checks.append(
                    [
                        "data prep cold (s)",
                        f"{cold:.2f}",
                        f"<= {TARGETS['prep_cold_s']:g}",
                        verdict(cold, TARGETS["prep_cold_s"], False),
                    ]
                )
                checks.append(
                    [
                        "data prep warm (s)",
                        f"{warm:.3f}",
                        f"<= {TARGETS['prep_warm_s']:g}",
                        verdict(warm, TARGETS["prep_warm_s"], False),
                    ]
                )
        if "ddp" not in skip:
            print("[3/3] CPU data parallelism, ag_news_small (ranks x threads)", flush=True)
            ddp = bench_ddp(cache_dir, data_overrides, args.quick)
            result["ddp_cpu"] = ddp
            s = ddp["samples_per_s"]
            checks.append(
                [
                    "DDP 2x1 vs 1x1 (speedup)",
                    f"{s['2x1']:,.1f} vs {s['1x1']:,.1f}: {ddp['speedup_2x1_vs_1x1']:.2f}x "
                    f"({100 * ddp['efficiency_2x1']:.0f} % eff.)",
                    f">= {TARGETS['ddp_speedup_2x1_vs_1x1']:g}x",
                    verdict(ddp["speedup_2x1_vs_1x1"], TARGETS["ddp_speedup_2x1_vs_1x1"]),
                ]
            )
            two = ddp["two_independent_runs"]
            checks.append(
                [
                    "ceiling: 2 independent 1x1 runs vs 1x1",
                    f"{median(two['samples_per_s']):,.1f} vs {s['1x1']:,.1f}: "
                    f"{two['ceiling_vs_1x1']:.2f}x (2x1 reaches {100 * two['speedup_2x1_of_ceiling']:.0f} %)",
                    "-",
                    "info",
                ]
            )
            checks.append(
                [
                    "DDP 2x1 vs 1x2",
                    f"{s['2x1']:,.1f} vs {s['1x2']:,.1f}: {ddp['ratio_2x1_vs_1x2']:.2f}x",
                    f">= {TARGETS['ddp_2x1_vs_1x2']:.1f}x",
                    verdict(ddp["ratio_2x1_vs_1x2"], TARGETS["ddp_2x1_vs_1x2"]),
                ]
            )
            # paired 2x1 variants: (figure, label, layout, against)
            for field, label, key, base in (
                ("pinned_vs_unpinned_2x1", "pinned vs unpinned (distributed.pin_cpus)",
                 "2x1-pinned", "2x1"),
                ("fused_vs_buckets_2x1", "one fused all-reduce vs two (distributed.grad_sync)",
                 "2x1", "2x1-buckets"),
                ("spin_vs_block_2x1", "spinning vs blocking wait (distributed.collective_wait)",
                 "2x1", "2x1-block"),
            ):  # fmt: skip
                pair = ddp[field]
                checks.append(
                    [
                        f"DDP 2x1 {label}",
                        f"{s[key]:,.1f} vs {s[base]:,.1f}: {pair['ratio']:.2f}x (median of "
                        "repeats " + ", ".join(f"{x:.2f}" for x in pair["per_repeat"]) + ")",
                        "-",
                        "info",
                    ]
                )
            checks.append(
                [
                    "2x1 exposed comm ms: in the steps / calibrated / back to back",
                    f"{ddp['exposed_comm_ms_2x1']:.2f} / {ddp['calibrated_exposed_comm_ms_2x1']:.2f}"
                    f" / {ddp['allreduce_ms_2x1']:.2f}",
                    "-",
                    "info",
                ]
            )
            dec = ddp["step_decomposition_2x1"]
            st = dec["step_ms"]
            checks.append(
                [
                    "2x1 step ms: compute + DDP wrapper + sync + gradients",
                    f"{st['ddp']:.1f} = {st['plain']:.1f} + {dec['ddp_wrapper_ms']:.1f} + "
                    f"{dec['synchronisation_ms']:.1f} + {dec['gradient_communication_ms']:.1f} "
                    "(ddp_lockstep.py)",
                    "-",
                    "info",
                ]
            )
            for k, ph in ddp["phase_ms"].items():
                parts = " + ".join(f"{p} {v:.1f}" for p, v in ph.items())
                checks.append(
                    [f"step ms (fit, {k})", f"{ddp['step_ms'][k]:.1f} = {parts}", "-", "info"]
                )
            for k, v in ddp["eval_examples_per_s"].items():
                checks.append([f"evaluate examples/s (fit, {k})", f"{v:,.1f}", "-", "info"])
            for k, v in ddp["peak_mem_mb"].items():
                checks.append([f"peak memory MB (fit, {k}, per rank)", f"{v:,.0f}", "-", "info"])
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    result["checks"] = [
        dict(zip(("figure", "measured", "target", "verdict"), c, strict=True)) for c in checks
    ]
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print()
    print_table(checks, ["figure", "measured", "target", "verdict"])
    if args.quick:
        print("\n(--quick: few steps and repeats; a smoke run, not a measurement)")
    write_result(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
