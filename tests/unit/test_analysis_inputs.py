"""Analysis edge cases found in review: which runs group together, what the report's numbers and
tips rest on, and bad run folders or commbench files as one-line errors (not tracebacks)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scalelab.analysis import AnalysisError, load_runs
from scalelab.analysis.collect import load_run
from scalelab.analysis.diagnose import diagnose
from scalelab.analysis.predict import (
    SyncLatency,
    load_commbench,
    load_sync_latency,
    predict_scaling,
)
from scalelab.analysis.report import _amdahl_text, analyse_runs, csv_rows, write_report
from scalelab.analysis.scaling import analyse
from tests.unit.runfolders import write_run, write_sweep

CPU = {"device_type": "cpu", "device_name": "AMD EPYC", "backend": "gloo"}


def test_cpu_and_gpu_runs_are_separate_groups(tmp_path: Path) -> None:
    write_sweep(tmp_path, [1, 2])  # GPU runs
    write_run(tmp_path, "cpu-ws1", epoch_time_s=100.0, summary=CPU)
    groups = analyse(load_runs([tmp_path]))
    assert len(groups) == 2
    gpu = next(g for g in groups if "H100" in g.label)
    cpu = next(g for g in groups if "AMD EPYC" in g.label)
    assert [p.world_size for p in cpu.points] == [1]
    # the GPU 2-rank run is measured against the GPU 1-rank run, not the 100 s CPU run
    assert gpu.points[1].speedup < 2.5


def test_groups_whose_short_labels_coincide_keep_their_own_predictions(tmp_path: Path) -> None:
    # two sweeps that differ only in the training-set size; sweeps name runs <preset>-ws<n>
    write_sweep(tmp_path / "a", [1, 2])
    write_sweep(
        tmp_path / "b", [1, 2], timing={"forward_ms": 300.0}, summary={"num_train_samples": 999}
    )
    analysis = analyse_runs(load_runs([tmp_path / "a", tmp_path / "b"]), busbw_gbps=10.0)
    labels = [g.label for g in analysis.groups]
    assert len(set(labels)) == 2 and any("999 training examples" in x for x in labels)
    assert set(analysis.predictions) == set(labels)
    # each run's CSV row carries its own group's prediction (names repeat across the sweeps)
    in_row_order = sorted(analysis.runs, key=lambda r: (r.preset, r.world_size, r.name))
    for row, run in zip(csv_rows(analysis), in_row_order, strict=True):
        assert row["run_name"] == run.name
        if run.world_size != 2:
            continue
        group = next(g for g in analysis.groups if run in g.runs)
        (pred,) = [p for p in analysis.predictions[group.label] if p.world_size == 2]
        assert row["predicted_step_ms"] == pytest.approx(pred.step_ms, rel=1e-3), run.path


def test_amdahl_limit_is_relative_to_a_multi_rank_baseline(tmp_path: Path) -> None:
    # exact Amdahl epoch times with s = 0.1, measured from 2 ranks up
    for n in (2, 4, 8, 64):
        write_run(tmp_path, f"ws{n}", world_size=n, epoch_time_s=100.0 * (0.1 + 0.9 / n))
    (group,) = analyse(load_runs([tmp_path]))
    assert group.amdahl.serial_fraction == pytest.approx(0.1, abs=2e-3)
    text = _amdahl_text(group)
    # (s + (1-s)/2) / s = 5.5 over the 2-rank baseline, not 1/s = 10
    assert "upper bound on speedup of 5.5x over the 2-rank baseline" in text
    assert "units of the 2-rank baseline" in text


def test_the_sync_wake_up_is_paid_in_full_whatever_the_overlap(tmp_path: Path) -> None:
    write_run(tmp_path, "cpu-ws1", summary=CPU)
    summary = load_run(tmp_path / "cpu-ws1").summary
    kw = {"busbw_gbps": 1.0, "alpha_ms": 0.1}
    (plain,) = predict_scaling(summary, [2], overlap=0.5, **kw)
    (woken,) = predict_scaling(
        summary, [2], overlap=0.5, sync_latency=SyncLatency(((4, 5.1),), 2), **kw
    )
    # the 5.0 ms above alpha is added once, not halved by the overlap
    assert woken.exposed_comm_ms - plain.exposed_comm_ms == pytest.approx(5.0)
    assert woken.comm_ms - plain.comm_ms == pytest.approx(5.0)


def test_comm_bound_tips_follow_from_the_run(tmp_path: Path) -> None:
    write_run(tmp_path, "ws1")
    comm = {"exposed_comm_ms": 25.0, "allreduce_ms": 26.0, "overlap_fraction": 0.04,
            "num_buckets": 1, "bucket_bytes": [8_000_000]}  # fmt: skip
    write_run(
        tmp_path, "ws2", world_size=2, timing={"backward_ms": 55.0, "step_ms": 78.5},
        summary={"comm": comm},
    )  # fmt: skip
    runs = load_runs([tmp_path])
    (f,) = [f for f in diagnose(runs) if f.rule == "comm_bound"]
    # one bucket already: a larger cap cannot mean fewer all-reduces
    assert "bucket_cap_mb" not in f.recommendation
    assert "at the same global batch accumulation does not cut communication" in f.recommendation


def test_cpu_ranks_that_split_the_same_cores_are_not_called_launch_bound(tmp_path: Path) -> None:
    # 1 rank x 2 threads -> 2 ranks x 1 thread: per-rank forward cannot shrink
    cpu1 = {**CPU, "system": {"num_threads_per_rank": 2}}
    cpu2 = {**CPU, "system": {"num_threads_per_rank": 1}}
    write_run(tmp_path, "ws1", summary=cpu1, epoch_time_s=9.6)
    write_run(tmp_path, "ws2", world_size=2, summary=cpu2, epoch_time_s=9.6,
              timing={"forward_ms": 29.0, "step_ms": 96.0})  # fmt: skip
    findings = diagnose(load_runs([tmp_path]))
    assert not [f for f in findings if f.rule == "launch_bound"]
    (sub,) = [f for f in findings if f.rule == "sublinear_scaling"]
    assert "share 2 CPU threads in all, no more than the baseline's 2" in sub.recommendation
    # with cores added (1 thread per rank at both sizes) the rule still fires
    for name in ("ws1", "ws2"):
        path = tmp_path / name / "summary.json"
        s = json.loads(path.read_text())
        s["system"]["num_threads_per_rank"] = 1
        path.write_text(json.dumps(s))
    findings = diagnose(load_runs([tmp_path]))
    assert [f for f in findings if f.rule == "launch_bound"]


def _break_summary(folder: Path, **fields: object) -> None:
    path = folder / "summary.json"
    s = json.loads(path.read_text())
    s.update(fields)
    path.write_text(json.dumps(s))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"world_size": "two"}, "field 'world_size' should be a number"),
        ({"world_size": 0}, "field 'world_size' should be at least 1"),
        ({"mean_epoch_time_s": "fast"}, "field 'mean_epoch_time_s' should be a number"),
        ({"samples_per_s": "n/a"}, "field 'samples_per_s' should be a number"),
        ({"preset": ["x"]}, "field 'preset' should be text"),
        ({"timing": "broken"}, "field 'timing' should be an object"),
        ({"timing": {"step_ms": "slow"}}, "field 'timing.step_ms' should be a number"),
        ({"comm": {"allreduce_ms": "1 ms"}}, "field 'comm.allreduce_ms' should be a number"),
        ({"comm": {"bucket_bytes": ["a"]}}, "field 'comm.bucket_bytes' should be a list"),
        # each was a traceback in predict or report (int(nan), sum([None]), hash of a list)
        ({"comm": {"bucket_bytes": [float("nan")]}}, "'comm.bucket_bytes' should be a list of"),
        ({"comm": {"wire_bucket_bytes": [None]}}, "'comm.wire_bucket_bytes' should be a list"),
        ({"comm": {"wire_bucket_bytes": 5}}, "'comm.wire_bucket_bytes' should be a list of byte"),
        ({"comm": {"comm_hook": ["none"]}}, "'comm.comm_hook' should be one of none, fp16, bf16"),
        ({"comm": {"grad_sync": "sometimes"}}, "'comm.grad_sync' should be one of fused, buckets"),
        ({"grad_accum_steps": float("nan")}, "field 'grad_accum_steps' should be a whole number"),
        ({"local_world_size": float("nan")}, "field 'local_world_size' should be a whole number"),
        ({"world_size": 2.5}, "field 'world_size' should be a whole number"),
        ({"steps_per_epoch": [3]}, "field 'steps_per_epoch' should be a number"),
        ({"compile": {"mode": "default"}}, "field 'compile' should be text"),
        # numbers no run can record: predict printed a speedup from a negative forward
        ({"timing": {"forward_ms": -3}}, "field 'timing.forward_ms' should be a number >= 0"),
        ({"global_batch": 0}, "field 'global_batch' should be at least 1"),
        ({"mean_epoch_time_s": 0}, "field 'mean_epoch_time_s' should be a time > 0 s"),
        # read as 1 rank, a 4-rank run became its own baseline
        ({"world_size": None}, "field 'world_size' is missing"),
        # no run records these: the tables printed -5 parameters and 0 samples per rank
        ({"num_params": -5}, "field 'num_params' should be at least 0, got -5"),
        ({"per_rank_batch": 0}, "field 'per_rank_batch' should be at least 1, got 0"),
        # the diagnosis multiplies and compares these: a traceback, or a rule silently off
        ({"system": {"num_loader_workers": "abc"}}, "'system.num_loader_workers' should be a"),
        ({"system": {"num_cpus": 2.5}}, "'system.num_cpus' should be a whole number >= 1"),
        ({"system": {"num_threads_per_rank": 0}}, "'system.num_threads_per_rank' should be"),
        ({"system": {"find_unused_parameters": "yes"}}, "should be true or false, got 'yes'"),
        ({"data": {"pad_multiple": 0}}, "field 'data.pad_multiple' should be a whole number"),
        ({"data": {"delay_per_batch_s": -1}}, "'data.delay_per_batch_s' should be a number >= 0"),
        # values the trainer never writes: "tpu" was analysed as a GPU, "fp64" as a group
        ({"device_type": "tpu"}, "field 'device_type' should be one of cpu, cuda, got 'tpu'"),
        ({"backend": "mpi"}, "field 'backend' should be one of none, gloo, nccl, got 'mpi'"),
        ({"precision": "fp64"}, "field 'precision' should be one of fp32, bf16, fp16, got 'fp64'"),
    ],
)
def test_wrongly_typed_summary_fields_are_one_line(
    tmp_path: Path, fields: dict, fragment: str
) -> None:
    write_run(tmp_path, "ws1")
    _break_summary(tmp_path / "ws1", **fields)
    with pytest.raises(AnalysisError, match=fragment) as exc:
        load_runs([tmp_path])
    assert "summary.json" in str(exc.value) and "\n" not in str(exc.value)


def test_unreadable_or_odd_files_in_a_run_folder_are_one_line(tmp_path: Path) -> None:
    write_run(tmp_path, "ws1")
    run = tmp_path / "ws1"
    good = (run / "summary.json").read_bytes()
    (run / "summary.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(AnalysisError, match="summary.json: unreadable JSON"):
        load_run(run)
    (run / "summary.json").write_bytes(good)
    (run / "config.yaml").write_bytes(b"name: \xff\n")
    with pytest.raises(AnalysisError, match="config.yaml: unreadable YAML"):
        load_run(run)
    (run / "config.yaml").write_text("- a\n- b\n")
    with pytest.raises(AnalysisError, match="config.yaml: expected a mapping"):
        load_run(run)
    (run / "config.yaml").unlink()
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("val_acc")] = "0.8x"
    (run / "metrics.csv").write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(
        AnalysisError, match=r"metrics.csv: line 2, column 'val_acc' is not a number"
    ):
        load_run(run)


def test_a_cut_off_or_mismatched_metrics_csv_is_one_line(tmp_path: Path) -> None:
    write_run(tmp_path, "ws1", num_epochs=3)
    path = tmp_path / "ws1" / "metrics.csv"
    good = path.read_text()
    lines = good.splitlines()
    # a copy cut off mid-row: its missing cells must not read as empty figures
    path.write_text("\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n")
    with pytest.raises(AnalysisError, match=r"metrics.csv: line 4 has \d+ cells but the header"):
        load_run(tmp_path / "ws1")
    path.write_text("")
    with pytest.raises(AnalysisError, match=r"metrics.csv: empty \(no header line\)"):
        load_run(tmp_path / "ws1")
    path.write_text("1,2,3\n")
    with pytest.raises(AnalysisError, match=r"line 1 is not a metrics.csv header"):
        load_run(tmp_path / "ws1")
    # a negative figure, or rows of another world size than the summary's
    table = [row.split(",") for row in lines]
    col = table[0].index("epoch_time_s")
    path.write_text("\n".join(",".join(r[:col] + ["-1"] + r[col + 1 :]) if i == 2 else ",".join(r)
                              for i, r in enumerate(table)) + "\n")  # fmt: skip
    with pytest.raises(
        AnalysisError, match=r"metrics.csv: line 3, column 'epoch_time_s' is negative"
    ):
        load_run(tmp_path / "ws1")
    col = table[0].index("world_size")
    path.write_text("\n".join(",".join(r[:col] + ["4"] + r[col + 1 :]) if i else ",".join(r)
                              for i, r in enumerate(table)) + "\n")  # fmt: skip
    with pytest.raises(
        AnalysisError, match=r"rows of world size 4, but summary.json is of a 1-rank"
    ):
        load_run(tmp_path / "ws1")
    # a column dropped in an edit: the accuracy plot silently left the run out
    table = [row.split(",") for row in lines]
    drop = table[0].index("val_acc")
    path.write_text("\n".join(",".join(r[:drop] + r[drop + 1 :]) for r in table) + "\n")
    with pytest.raises(AnalysisError, match=r"metrics.csv: no 'val_acc' column in the header"):
        load_run(tmp_path / "ws1")
    # rows lost (header only) or added after summary.json was written (a run continued)
    fourth = ",".join(["4", *lines[-1].split(",")[1:]])
    for text in (lines[0] + "\n", "\n".join(lines[:3]) + "\n", good + fourth + "\n"):
        path.write_text(text)
        with pytest.raises(
            AnalysisError, match=r"epoch row\(s\), but summary.json is of a run of 3"
        ):
            load_run(tmp_path / "ws1")
    # a row copied twice, an emptied row, rows out of order: the tables index rows by epoch
    rows = lines[1:]
    blank = ",".join([""] * len(table[0]))
    for body, says in (
        ([*rows[:2], rows[1]], "line 4: epoch 2, expected 3"),
        ([rows[0], blank, rows[2]], "line 3: epoch None, expected 2"),
        ([rows[1], rows[0], rows[2]], "line 2: epoch 2, expected 1"),
    ):
        path.write_text("\n".join([lines[0], *body]) + "\n")
        with pytest.raises(AnalysisError, match=re.escape(f"metrics.csv: {says} (one row per")):
            load_run(tmp_path / "ws1")
    path.write_text(good + "\n")  # a trailing blank line is harmless
    assert len(load_run(tmp_path / "ws1").metrics) == 3


def test_a_failed_report_leaves_the_previous_one_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sweep(tmp_path / "runs", [1, 2])
    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out, busbw_gbps=10.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "speedup.png" in before and "report.tex" in before

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError("rendering failed")

    monkeypatch.setattr("scalelab.analysis.report.render_latex", fail)  # the last file written
    write_run(tmp_path / "runs", "ag_news_small-ws4", world_size=4)
    with pytest.raises(RuntimeError, match="rendering failed"):
        write_report([tmp_path / "runs"], out, busbw_gbps=10.0)
    # every file as it was (plots included), and no staging folder left behind
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_report_out_with_a_name_too_long_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from scalelab.cli import main

    write_sweep(tmp_path / "runs", [1])  # was an OSError traceback (File name too long)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / ("a" * 300))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be made (a name in it is 300 bytes; at most 255)" in err


def test_report_out_below_a_file_is_one_line(tmp_path: Path) -> None:
    write_sweep(tmp_path / "runs", [1])
    (tmp_path / "afile").write_text("x")
    # refused before the runs are read and the figures drawn (was at the first write)
    with pytest.raises(AnalysisError, match=r"sub: cannot be made \(.*afile is not a folder\)"):
        write_report([tmp_path / "runs"], tmp_path / "afile" / "sub")


def test_a_report_file_that_cannot_be_written_is_one_line_and_stale_staging_goes(
    tmp_path: Path,
) -> None:
    import os

    write_sweep(tmp_path / "runs", [1, 2])
    out = tmp_path / "out"
    (out / "report.tex").mkdir(parents=True)  # a folder where a report file goes
    stale = out / ".report-staging-old"
    stale.mkdir()
    os.utime(stale, (0, 0))  # left by a report killed long ago
    with pytest.raises(AnalysisError, match=r"--out .*: cannot write the report \(.*report\.tex"):
        write_report([tmp_path / "runs"], out, busbw_gbps=10.0)
    assert not stale.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".report-staging")] == []


def test_a_report_file_name_taken_by_a_folder_replaces_nothing(tmp_path: Path) -> None:
    write_sweep(tmp_path / "runs", [1, 2])
    out = tmp_path / "out"
    write_report([tmp_path / "runs"], out, busbw_gbps=10.0)
    (out / "report.tex").unlink()
    (out / "report.tex").mkdir()  # the last file renamed into place
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    write_run(tmp_path / "runs", "ag_news_small-ws4", world_size=4)
    with pytest.raises(
        AnalysisError, match=r"report\.tex there is not a file; nothing was replaced"
    ):
        write_report([tmp_path / "runs"], out, busbw_gbps=10.0)
    # the other files were renamed one by one before the failing one: now none is
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("bench", "fragment"),
    [
        ({"world_size": 2, "fit": [1, 2]}, "'fit' should be an object"),
        ({"world_size": "two", "fit": {"busbw_gbps": 1.0}}, "'world_size' should be a whole number"),
        ({"world_size": 2, "results": [{"time_ms": 1.0}, {"time_ms": 2.0}]}, r"'results\[0\].bytes'"),
        ({"world_size": 2, "fit": {"busbw_gbps": float("nan")}}, "'fit.busbw_gbps' should be a number > 0"),
        ({"world_size": 2, "fit": {"busbw_gbps": 1.0, "alpha_ms": "x"}}, "'fit.alpha_ms'"),
        # a fit that cannot be made names the file, not only the reason
        ({"world_size": 1, "results": [{"bytes": 8, "time_ms": 1.0}]}, r"commbench\.json: an all-reduce bandwidth fit needs world_size >= 2"),
    ],
)  # fmt: skip
def test_malformed_commbench_files_are_one_line(tmp_path: Path, bench: dict, fragment: str) -> None:
    path = tmp_path / "commbench.json"
    path.write_text(json.dumps(bench))
    with pytest.raises(AnalysisError, match=fragment):
        load_commbench(path)


def test_malformed_sync_latency_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "commbench.json"
    path.write_text(json.dumps({"world_size": 2, "sync_latency": {"median_ms": "slow"}}))
    with pytest.raises(AnalysisError, match="'sync_latency.median_ms'"):
        load_sync_latency(path)


def test_a_negative_sync_latency_or_a_key_given_twice_is_one_line(tmp_path: Path) -> None:
    # a median of measured latencies is never negative (a fitted intercept may be: clipped)
    path = tmp_path / "commbench.json"
    path.write_text(json.dumps({"world_size": 2, "sync_latency": {"median_ms": -2.0}}))
    with pytest.raises(AnalysisError, match="'sync_latency.median_ms' should be a number >= 0"):
        load_sync_latency(path)
    path.write_text('{"world_size": 2, "fit": {"busbw_gbps": 1.0, "busbw_gbps": 50.0}}')
    with pytest.raises(AnalysisError, match="key 'busbw_gbps' appears twice in one object"):
        load_commbench(path)
    write_run(tmp_path, "ws1")
    summary = tmp_path / "ws1" / "summary.json"
    summary.write_text(summary.read_text().replace("{", '{"world_size": 4, ', 1))
    with pytest.raises(AnalysisError, match="summary.json: unreadable JSON .*'world_size' appears"):
        load_run(tmp_path / "ws1")
    # nesting deep enough to exhaust the parser's recursion was a RecursionError traceback
    summary.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AnalysisError, match=r"unreadable JSON \(nested too deeply\)"):
        load_run(tmp_path / "ws1")


def test_non_finite_bandwidth_is_refused(tmp_path: Path) -> None:
    write_run(tmp_path, "ws1")
    summary = load_run(tmp_path / "ws1").summary
    with pytest.raises(AnalysisError, match="bus bandwidth must be > 0"):
        predict_scaling(summary, [2], busbw_gbps=float("nan"), alpha_ms=0.0)
    with pytest.raises(AnalysisError, match="--busbw-gbps must be > 0"):
        write_report([tmp_path], tmp_path / "report", busbw_gbps=float("nan"))


def test_a_diverged_run_with_nan_loss_still_loads(tmp_path: Path) -> None:
    write_run(tmp_path, "ws1")
    _break_summary(tmp_path / "ws1", final_val_loss=float("nan"), comm={"extra_field": "text"})
    run = load_run(tmp_path / "ws1")  # NaN is a number; unknown comm fields are not checked
    assert run.summary["final_val_loss"] != run.summary["final_val_loss"]


def test_a_simulated_slow_loader_is_predicted_to_stay(tmp_path: Path) -> None:
    # data.delay_per_batch_s sleeps once per micro-batch whatever its size: 1.5 of the 2 ms
    write_run(tmp_path, "slow", summary={"data": {"delay_per_batch_s": 0.0015}})
    write_run(tmp_path, "fast")
    kw = {"busbw_gbps": 10.0, "alpha_ms": 0.0}
    (slow,) = predict_scaling(load_run(tmp_path / "slow").summary, [2], **kw)
    (fast,) = predict_scaling(load_run(tmp_path / "fast").summary, [2], **kw)
    assert fast.data_ms == pytest.approx(1.0)  # 2 ms / 2 ranks
    assert slow.data_ms == pytest.approx(0.5 / 2 + 1.5)
    assert slow.step_ms - fast.step_ms == pytest.approx(0.75)


def test_rows_follow_the_world_size_and_big_numbers_are_whole(tmp_path: Path) -> None:
    from scalelab.analysis.report import _f

    write_sweep(tmp_path, [1, 2, 10])  # folder order: ws1, ws10, ws2
    rows = csv_rows(analyse_runs(load_runs([tmp_path]), busbw_gbps=10.0))
    assert [r["world_size"] for r in rows] == [1, 2, 10]
    assert (_f(999.7), _f(-999.7), _f(123.4), _f(99.96), _f(0.0004)) == (
        "1000", "-1000", "123", "100", "0.0004",
    )  # fmt: skip


def test_report_warnings_are_one_line(tmp_path: Path) -> None:
    # Python's format added "<file>:<line>: UserWarning:" and the source line below it (a real
    # process: pytest records warnings instead of printing them)
    from tests.conftest import scalelab

    write_sweep(tmp_path / "runs", [1, 2])
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "metrics.csv").write_text("epoch\n")
    res = scalelab(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")])
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"scalelab: warning: skipping {tmp_path / 'runs' / 'unfinished'}: missing summary.json"
    ]
