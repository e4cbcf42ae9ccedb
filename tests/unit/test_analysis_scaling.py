"""Reading run folders and the scaling maths (speedup, efficiency, Amdahl, Karp–Flatt, R)."""

from __future__ import annotations

import pytest

from scalelab.analysis import AnalysisError, load_run, load_runs
from scalelab.analysis.scaling import amdahl_speedup, analyse, fit_amdahl, karp_flatt
from tests.unit.runfolders import write_run, write_sweep


def test_load_run_parses_numbers(tmp_path):
    run = load_run(write_run(tmp_path, "r1", world_size=2))
    assert run.name == "r1" and run.world_size == 2 and run.preset == "ag_news_small"
    assert len(run.metrics) == 3
    assert isinstance(run.metrics[0]["epoch"], int)
    assert run.metrics[0]["step_ms"] == pytest.approx(54.5)
    assert run.config["train"]["batch_size"] == 64
    assert run.phase("forward_ms") == pytest.approx(15.0)
    assert run.comm_value("allreduce_ms") == pytest.approx(4.0)


@pytest.mark.parametrize("missing", ["summary.json", "metrics.csv"])
def test_incomplete_run_folder_is_a_one_line_error(tmp_path, missing):
    folder = write_run(tmp_path, "broken")
    (folder / missing).unlink()
    with pytest.raises(AnalysisError) as err:
        load_run(folder)
    message = str(err.value)
    assert str(folder) in message and missing in message and "\n" not in message


def test_not_a_folder(tmp_path):
    with pytest.raises(AnalysisError, match="does not exist"):
        load_runs([tmp_path / "nope"])


def test_sweep_folder_loads_children_and_skips_incomplete(tmp_path):
    write_sweep(tmp_path, [1, 2, 4])
    crashed = write_run(tmp_path, "crashed", world_size=8)
    (crashed / "summary.json").unlink()
    with pytest.warns(UserWarning, match="crashed"):
        runs = load_runs([tmp_path])
    assert sorted(r.world_size for r in runs) == [1, 2, 4]


def test_empty_sweep_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no run folders"):
        load_runs([tmp_path / "empty"])


def test_speedup_and_efficiency(tmp_path):
    for n, t in ((1, 100.0), (2, 60.0), (4, 40.0)):
        write_run(tmp_path, f"r{n}", world_size=n, epoch_time_s=t)
    (group,) = analyse(load_runs([tmp_path]))
    assert group.has_single_rank_baseline
    got = {p.world_size: p for p in group.points}
    assert got[2].speedup == pytest.approx(100 / 60)
    assert got[4].speedup == pytest.approx(2.5)
    assert got[2].efficiency == pytest.approx(100 / 60 / 2)
    assert got[4].efficiency == pytest.approx(0.625)
    assert got[1].karp_flatt is None
    # e(4) = (1/2.5 - 1/4) / (1 - 1/4) = 0.2
    assert got[4].karp_flatt == pytest.approx(0.2)


@pytest.mark.parametrize("s", [0.0, 0.05, 0.1, 0.3])
def test_amdahl_fit_recovers_known_serial_fraction(tmp_path, s):
    t1 = 120.0
    for n in (1, 2, 4, 8, 16):
        write_run(tmp_path, f"r{n}", world_size=n, epoch_time_s=t1 * (s + (1 - s) / n))
    (group,) = analyse(load_runs([tmp_path]))
    assert group.amdahl.serial_fraction == pytest.approx(s, abs=2e-4)
    assert group.amdahl.note == ""
    # For exact Amdahl data the Karp–Flatt metric is the serial fraction at every n.
    for p in group.points[1:]:
        assert p.karp_flatt == pytest.approx(s, abs=1e-9)


def test_amdahl_clips_negative_scaling_to_one():
    fit = fit_amdahl([1, 2, 4], [1.0, 0.8, 0.6])
    assert fit.serial_fraction == 1.0
    assert "negative scaling" in fit.note


def test_amdahl_relative_to_larger_baseline():
    s, n0 = 0.2, 2
    sizes = [2, 4, 8]
    fit = fit_amdahl(sizes, [amdahl_speedup(s, n, n0) for n in sizes], n0)
    assert fit.serial_fraction == pytest.approx(s, abs=2e-4)


def test_karp_flatt_formula():
    assert karp_flatt(2.0, 2) == pytest.approx(0.0)
    assert karp_flatt(1.0, 4) == pytest.approx(1.0)
    assert karp_flatt(1.0, 1) is None


def test_baseline_without_single_rank_run(tmp_path):
    write_run(tmp_path, "r2", world_size=2, epoch_time_s=50.0)
    write_run(tmp_path, "r4", world_size=4, epoch_time_s=30.0)
    (group,) = analyse(load_runs([tmp_path]))
    assert group.baseline_world_size == 2 and not group.has_single_rank_baseline
    p4 = group.points[-1]
    assert p4.ideal_speedup == 2.0
    assert p4.speedup == pytest.approx(50 / 30)
    assert p4.efficiency == pytest.approx(50 / 30 / 2)
    assert "smallest world size (2 ranks" in group.baseline_statement()


def test_runs_doing_different_work_are_separate_groups(tmp_path):
    write_sweep(tmp_path, [1, 2])
    write_run(tmp_path, "big", world_size=2, summary={"global_batch": 256})
    groups = analyse(load_runs([tmp_path]))
    assert sorted(len(g.points) for g in groups) == [1, 2]


def test_same_preset_with_another_model_size_is_not_compared(tmp_path):
    # e.g. `train model.d_model=256` under the ag_news_small preset: another model, not a speedup
    write_sweep(tmp_path, [1, 2])
    write_run(tmp_path, "wide", world_size=2, summary={"num_params": 8_000_000})
    groups = analyse(load_runs([tmp_path]))
    assert sorted(len(g.points) for g in groups) == [1, 2]


def test_compute_to_comm_ratio(tmp_path):
    write_run(tmp_path, "given", world_size=2)  # compute 45 ms, all-reduce 4 ms
    write_run(tmp_path, "derived", world_size=4, summary={"comm": {"compute_to_comm_ratio": None}})
    points = {p.run.name: p for g in analyse(load_runs([tmp_path])) for p in g.points}
    assert points["given"].compute_to_comm_ratio == pytest.approx(45 / 4)
    assert points["derived"].compute_to_comm_ratio == pytest.approx(22.5 / 4)


def _cpu(threads: int) -> dict:
    return {"device_type": "cpu", "device_name": "AMD EPYC",
            "system": {"num_cpus": 2, "num_threads_per_rank": threads}}  # fmt: skip


def test_cpu_baselines_with_other_threads_per_rank_are_not_averaged(tmp_path):
    """1 x 1 (11.6 s) and 1 x 2 (6.6 s): the baseline is the faster layout, not their mean."""
    write_run(tmp_path, "r-1x1", world_size=1, epoch_time_s=11.6, summary=_cpu(1))
    write_run(tmp_path, "r-1x2", world_size=1, epoch_time_s=6.6, summary=_cpu(2))
    write_run(tmp_path, "r-2x1", world_size=2, epoch_time_s=7.4, summary=_cpu(1))
    (group,) = analyse(load_runs([tmp_path]))
    assert group.baseline_epoch_time_s == pytest.approx(6.6)
    assert [r.name for r in group.baseline_runs()] == ["r-1x2"]
    speedup = {p.run.name: p.speedup for p in group.points}
    assert speedup["r-2x1"] == pytest.approx(6.6 / 7.4)
    assert speedup["r-1x1"] == pytest.approx(6.6 / 11.6)
    statement = group.baseline_statement()
    assert "2 thread(s) per rank" in statement and "r-1x1" in statement


def test_repeats_of_one_layout_are_averaged(tmp_path):
    for name, t in (("a", 10.0), ("b", 12.0)):
        write_run(tmp_path, f"r-1x2{name}", world_size=1, epoch_time_s=t, summary=_cpu(2))
    write_run(tmp_path, "r-2x1", world_size=2, epoch_time_s=6.0, summary=_cpu(1))
    (group,) = analyse(load_runs([tmp_path]))
    assert group.baseline_epoch_time_s == pytest.approx(11.0)
    assert "mean of 2 1-rank runs" in group.baseline_statement()


def test_single_epoch_runs_are_not_compared_with_multi_epoch_runs(tmp_path):
    """A 1-epoch run's mean includes epoch 1 (warm-up, compilation); a 3-epoch run's does not."""
    write_run(tmp_path, "e-ws1", world_size=1, num_epochs=1, epoch_time_s=35.0)
    write_run(tmp_path, "e-ws2", world_size=2, num_epochs=3)
    groups = analyse(load_runs([tmp_path]))
    assert sorted(len(g.points) for g in groups) == [1, 1]


def test_a_run_without_a_finite_epoch_time_is_left_out(tmp_path):
    write_run(tmp_path, "f-ws1", world_size=1, summary={"mean_epoch_time_s": float("nan")})
    write_run(tmp_path, "f-ws1b", world_size=1, epoch_time_s=10.0)
    write_run(tmp_path, "f-ws2", world_size=2, epoch_time_s=6.0)
    (group,) = analyse(load_runs([tmp_path]))
    assert [p.run.name for p in group.points] == ["f-ws1b", "f-ws2"]
    assert group.points[1].speedup == pytest.approx(10.0 / 6.0)


def test_runs_without_an_epoch_time_are_named_not_dropped_silently(tmp_path) -> None:
    write_run(tmp_path, "ws1", world_size=1, summary={"mean_epoch_time_s": float("nan")})
    write_run(tmp_path, "ws2", world_size=2)
    write_run(tmp_path, "ws4", world_size=4)
    (group,) = analyse(load_runs([tmp_path]))
    text = group.baseline_statement()
    assert text.startswith("Baseline: no timed 1-rank run in this group")
    assert "Left out of the scaling figures: ws1 (1 rank), without a finite epoch time" in text
