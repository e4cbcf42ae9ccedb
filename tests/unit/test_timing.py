"""timing.merge_phase_means: one epoch trained in two parts (stopped, resumed); the
calibration's crossover estimate."""

from __future__ import annotations

import math

import pytest

from scalelab.timing import crossover_difference


def test_phase_means_of_a_stopped_and_resumed_epoch_weigh_both_parts() -> None:
    from scalelab.timing import PHASES, merge_phase_means

    def part(ms: float, steps: int) -> dict[str, float]:
        out = {f"{p}_ms": ms for p in PHASES}
        out["step_ms"] = ms * len(PHASES)
        out["measured_steps"] = float(steps)
        return out

    nan_part = {**part(float("nan"), 0), "measured_steps": 0.0}  # resumed, no step timed
    merged = merge_phase_means(part(1.0, 3), part(5.0, 1))
    assert merged["forward_ms"] == 2.0 and merged["measured_steps"] == 4
    assert merged["step_ms"] == 2.0 * len(PHASES)
    assert merge_phase_means(part(1.0, 3), nan_part)["data_ms"] == 1.0
    assert merge_phase_means(None, part(5.0, 1))["data_ms"] == 5.0


def test_stopwatch_leaves_out_paused_and_excluded_time(monkeypatch) -> None:
    import torch

    from scalelab import timing

    now = [100.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    watch = timing.Stopwatch(torch.device("cpu"))
    watch.start()
    now[0] += 2.0  # training
    watch.pause()
    now[0] += 5.0  # e.g. a checkpoint being written
    assert watch.elapsed_s() == 2.0  # read while paused: up to the pause
    watch.resume()
    now[0] += 1.0
    watch.exclude(0.25)  # e.g. a profiler trace export timed by the profiler
    watch.exclude(-3.0)  # never adds time
    assert watch.elapsed_s() == 2.75
    watch.resume()  # not paused: no-op
    watch.start()  # a new interval forgets what the last one left out
    now[0] += 1.5
    assert watch.elapsed_s() == 1.5


def test_epoch_time_leaves_out_the_profiler_trace_export(tmp_path, monkeypatch) -> None:
    """A slow trace export (here 1.5 s) is neither training time nor in samples/s."""
    import csv
    import time

    from scalelab import profiling
    from scalelab.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "SLURM_NTASKS", "SLURM_PROCID"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    real = profiling.summarize
    exports = []

    def slow_summarize(*args, **kwargs):
        exports.append(1)
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(profiling, "summarize", slow_summarize)
    argv = ["train", "data.max_train_samples=64", "data.max_test_samples=16",
            "train.batch_size=16", "train.epochs=1", "train.profile_steps=1",
            "train.save_checkpoint=false", "model.vocab_size=500", "model.d_model=16",
            "model.num_layers=1", "model.num_heads=2", "model.d_ff=16", "model.max_seq_len=32",
            "train.num_threads=1", "output.progress=none", "output.run_name=r",
            f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
    assert main(argv) == 0
    assert exports == [1]  # the slow export really ran, once
    with open(tmp_path / "exp" / "r" / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["num_steps"]) == 4
    # 4 steps of a 1-layer, 16-wide model: far below the 1.5 s the export took
    assert float(row["epoch_time_s"]) < 1.0, row
    assert float(row["samples_per_s"]) == pytest.approx(64 / float(row["epoch_time_s"]), rel=1e-3)


def test_arrival_is_the_previous_optimizer_and_the_laps_before_arrive(monkeypatch) -> None:
    """StepTimer.arrivals_ms: per measured step, the previous step's optimizer and the step's
    laps before arrive() (where the rank reaches the step's first all-reduce: before the
    backward with DDP's buckets, after it with grad_sync=fused); untimed laps do not count."""
    import torch

    from scalelab import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    timer = timing.StepTimer(torch.device("cpu"), warmup_steps=1)
    timer.start_epoch()

    def lap(phase: str, ms: float) -> None:
        now[0] += ms / 1000.0
        timer.untimed() if phase == "untimed" else timer.lap(phase)

    for step in range(4):
        if step == 3:
            lap("untimed", 100)  # e.g. a profiler trace written between steps
        lap("data", 1 + step)
        lap("h2d", 0)
        lap("forward", 10)
        if step != 2:
            timer.arrive()  # buckets: before the backward
        lap("backward", 20)
        if step == 2:
            timer.arrive()  # fused: after it
        lap("optimizer", 3 + step)
        timer.end_step()
    out = timer.epoch_summary()
    assert out["measured_steps"] == 3  # step 0 is warm-up, but its optimizer precedes step 1
    assert out["data_ms"] == pytest.approx(3.0) and out["optimizer_ms"] == pytest.approx(5.0)
    assert timer.arrivals_ms == pytest.approx([3 + 2 + 10, 4 + 3 + 10 + 20, 5 + 4 + 10])
    timer.lap("data")
    timer.end_step()  # a step that never arrives (one process: no collective)
    timer.epoch_summary()
    assert timer.arrivals_ms == []


def test_arrival_spread_is_the_mean_lateness_of_the_last_rank() -> None:
    from scalelab.timing import arrival_spread

    # two steps; per step the ranks' mean and max arrival
    assert arrival_spread([10.0, 12.0], [11.0, 15.0]) == pytest.approx(2.0)
    assert arrival_spread([5.0], [5.0 - 1e-15]) == 0.0  # rounding never makes it negative
    assert arrival_spread([], []) != arrival_spread([], [])  # NaN: nothing measured


def test_merged_phases_weigh_the_arrival_spread_of_both_parts() -> None:
    from scalelab.timing import PHASES, SPREAD_KEY, merge_phase_means

    def part(spread: float | None, steps: int) -> dict[str, float]:
        out = {f"{p}_ms": 1.0 for p in PHASES}
        out["step_ms"], out["measured_steps"] = float(len(PHASES)), float(steps)
        return out if spread is None else {**out, SPREAD_KEY: spread}

    assert merge_phase_means(part(1.0, 3), part(5.0, 1))[SPREAD_KEY] == 2.0
    # a checkpoint of an older version (no spread), or a part without arrivals (NaN)
    assert merge_phase_means(part(None, 3), part(5.0, 1))[SPREAD_KEY] == 5.0
    assert merge_phase_means(part(float("nan"), 3), part(5.0, 1))[SPREAD_KEY] == 5.0
    assert SPREAD_KEY not in merge_phase_means(part(None, 3), part(None, 1))


def test_crossover_difference_cancels_the_order_and_the_batches() -> None:
    # batches of 10 to 30 ms, a 1.5 ms all-reduce, and a pair's second step 1 ms faster (warm
    # caches): sync first reads 2.5 ms, no_sync first 0.5 ms; the crossover gives the 1.5 ms
    batch = [10.0, 20.0, 30.0, 20.0]
    first = [True, False, True, False]  # sync first in pairs 0 and 2
    sync = [b + 1.5 - (0.0 if f else 1.0) for b, f in zip(batch, first, strict=True)]
    nosync = [b - (1.0 if f else 0.0) for b, f in zip(batch, first, strict=True)]
    assert crossover_difference(sync, nosync, first) == pytest.approx(1.5)
    # one order alone keeps its bias
    assert crossover_difference(sync[::2], nosync[::2], first[::2]) == pytest.approx(2.5)
    # unequal groups weigh alike: three sync-first pairs and one no_sync-first pair
    assert crossover_difference([3.0, 3.0, 3.0, 1.0], [0.0] * 4, [True] * 3 + [False]) == 2.0
    # a slow call counts (a mean, not a median): it is part of what a step pays
    assert crossover_difference([1.0, 1.0, 10.0], [0.0] * 3, [True] * 3) == pytest.approx(4.0)
    for bad in (([1.0, 2.0], [1.0], [True, False]), ([], [], []), ([1.0], [1.0], [])):
        with pytest.raises(ValueError, match="need pairs"):
            crossover_difference(*bad)


def test_the_steps_all_reduce_is_averaged_over_the_measured_steps_only_when_each_has_one() -> None:
    """StepTimer.collective: the step's one gradient all-reduce (grad_sync=fused), averaged
    over the measured steps (warm-up excluded), NaN unless every measured step timed it; an
    epoch in two parts (stopped, resumed) weighs both, and is NaN where a part did not."""
    import torch

    from scalelab.timing import COLLECTIVE_KEY, StepTimer, merge_phase_means

    def epoch(values: list[float | None], warmup: int = 0) -> dict[str, float]:
        timer = StepTimer(torch.device("cpu"), warmup_steps=warmup)
        timer.start_epoch()
        for ms in values:
            timer.lap("data")
            timer.collective(ms)
            timer.lap("backward")
            timer.end_step()
        return timer.epoch_summary()

    assert epoch([50.0, 2.0, 4.0], warmup=1)[COLLECTIVE_KEY] == pytest.approx(3.0)
    assert math.isnan(epoch([2.0, None, 4.0])[COLLECTIVE_KEY])  # a step without one
    assert math.isnan(epoch([None, None])[COLLECTIVE_KEY])  # DDP's buckets, NCCL, one rank
    assert math.isnan(epoch([])[COLLECTIVE_KEY])
    two_parts = merge_phase_means(epoch([1.0, 1.0, 1.0]), epoch([5.0]))
    assert two_parts[COLLECTIVE_KEY] == pytest.approx(2.0)
    older = {k: v for k, v in epoch([1.0]).items() if k != COLLECTIVE_KEY}  # an older checkpoint
    assert math.isnan(merge_phase_means(older, epoch([5.0]))[COLLECTIVE_KEY])
