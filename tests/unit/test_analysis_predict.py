"""Ring all-reduce cost model, comparison with measurements and the alpha-beta fit."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from scalelab.analysis import AnalysisError, load_run, load_runs
from scalelab.analysis.predict import (
    SyncLatency,
    allreduce_ms,
    compare,
    fit_alpha_beta,
    load_commbench,
    load_sync_latency,
    predict_scaling,
)
from tests.unit.runfolders import _merge, healthy_timing, write_run, write_sweep

BUSBW, ALPHA = 10.0, 0.05  # GB/s, ms


@pytest.fixture
def base(tmp_path):
    # 1-rank phases: data 2, h2d 1, fwd 30, bwd 60, opt 5, other 2 -> step 100 ms;
    # buckets 3 MB, 3 MB, 2 MB.
    return load_run(write_run(tmp_path, "base", world_size=1)).summary


def test_prediction_matches_hand_computation(base):
    (p,) = predict_scaling(base, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    # Ring factor 2*3/4 = 1.5; bucket times 0.05 + 1.5*3e6/1e7 = 0.5, 0.5 and 0.05 + 0.3 = 0.35.
    assert p.comm_ms == pytest.approx(1.35)
    # Last bucket exposed; the other 1.0 ms hides behind 15 ms * (1 - 1/3) of backward.
    assert p.exposed_comm_ms == pytest.approx(0.35)
    assert p.compute_ms == pytest.approx(22.5)
    # 0.5 + 0.25 + 7.5 + 15 + 5 (optimizer, not shrunk) + 2 (other) + 0.35
    assert p.step_ms == pytest.approx(30.6)
    assert p.speedup == pytest.approx(100 / 30.6)
    assert p.efficiency == pytest.approx(100 / 30.6 / 4)


def test_comm_that_cannot_hide_is_exposed(base):
    (p,) = predict_scaling(base, [4], busbw_gbps=0.1, alpha_ms=0.0)
    t = [1.5 * b / 1e5 for b in (3e6, 3e6, 2e6)]  # 45, 45, 30 ms
    assert p.comm_ms == pytest.approx(sum(t))
    assert p.exposed_comm_ms == pytest.approx(t[-1] + (t[0] + t[1]) - 15 * 2 / 3)


def test_measured_overlap_fraction(base):
    (p,) = predict_scaling(base, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA, overlap=0.5)
    assert p.exposed_comm_ms == pytest.approx(0.675)


def test_gradient_accumulation_shrinks_the_overlap_window(base):
    base = {**base, "grad_accum_steps": 4}
    (p,) = predict_scaling(base, [4], busbw_gbps=0.5, alpha_ms=0.0)
    t = [1.5 * b / 5e5 for b in (3e6, 3e6, 2e6)]  # 9, 9, 6 ms
    assert p.exposed_comm_ms == pytest.approx(t[-1] + (t[0] + t[1]) - 15 / 4 * 2 / 3)


def test_one_rank_is_the_measurement(base):
    (p,) = predict_scaling(base, [1], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    assert p.step_ms == pytest.approx(100.0) and p.comm_ms == 0 and p.speedup == pytest.approx(1.0)


def test_allreduce_ms_units():
    # 1 GB at 100 GB/s on 2 ranks (factor 1): 10 ms + alpha.
    assert allreduce_ms(1e9, 2, busbw_gbps=100.0, alpha_ms=0.5) == pytest.approx(10.5)
    assert allreduce_ms(1e9, 1, busbw_gbps=100.0, alpha_ms=0.5) == 0.0


def test_prediction_needs_single_rank_base(tmp_path):
    summary = load_run(write_run(tmp_path, "r2", world_size=2)).summary
    with pytest.raises(AnalysisError, match="1-rank"):
        predict_scaling(summary, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)


def test_compare_reports_relative_error(tmp_path):
    write_sweep(tmp_path, [1, 2, 4])
    runs = load_runs([tmp_path])
    base = next(r for r in runs if r.world_size == 1).summary
    preds = predict_scaling(base, [1, 2, 4, 8], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    rows = {c.world_size: c for c in compare(preds, runs)}
    assert sorted(rows) == [2, 4]  # 8 was predicted but not measured; 1 is the base itself
    assert rows[4].measured_step_ms == pytest.approx(31.25)
    assert rows[4].error_pct == pytest.approx((30.6 - 31.25) / 31.25 * 100)


def test_fit_alpha_beta_recovers_parameters():
    n, alpha, busbw = 4, 0.02, 80.0
    results = [
        {"bytes": b, "time_ms": alpha + 1.5 * b / (busbw * 1e6)} for b in (1e4, 1e5, 1e6, 1e7, 1e8)
    ]
    got_alpha, got_busbw = fit_alpha_beta(results, n)
    assert got_alpha == pytest.approx(alpha, rel=1e-6)
    assert got_busbw == pytest.approx(busbw, rel=1e-6)


def test_the_fit_weighs_every_message_size_not_only_the_largest():
    """Times span 4 KB .. 256 MB; +-5 % noise on each must not swamp alpha (a plain least-squares
    fit put it at 0.10 ms here, twice the true 0.05 ms, from the noise of the largest sizes)."""
    alpha, busbw = 0.05, 10.0
    results = [
        {"bytes": b, "time_ms": (alpha + b / (busbw * 1e6)) * (1.05 if i % 2 else 0.95)}
        for i, b in enumerate(4096 * 2**k for k in range(17))
    ]
    got_alpha, got_busbw = fit_alpha_beta(results, 2)
    assert got_alpha == pytest.approx(alpha, rel=0.1)
    assert got_busbw == pytest.approx(busbw, rel=0.05)
    with pytest.raises(AnalysisError, match="finite times > 0 ms"):
        fit_alpha_beta([*results, {"bytes": 8, "time_ms": 0.0}], 2)


def test_negative_alpha_is_clipped():
    results = [
        {"bytes": 1e6, "time_ms": 0.5},
        {"bytes": 2e6, "time_ms": 1.2},
        {"bytes": 4e6, "time_ms": 2.6},
    ]
    alpha, busbw = fit_alpha_beta(results, 2)
    assert alpha == 0.0 and busbw > 0


def test_load_commbench(tmp_path):
    with_fit = tmp_path / "fit.json"
    with_fit.write_text(
        json.dumps(
            {
                "backend": "nccl",
                "world_size": 8,
                "results": [],
                "fit": {"alpha_ms": -0.01, "busbw_gbps": 150.0},
            }
        )
    )
    assert load_commbench(with_fit) == (0.0, 150.0, 8)
    rows = [
        {"bytes": b, "time_ms": 0.01 + 1.0 * b / 5e7, "algbw_gbps": 0, "busbw_gbps": 0}
        for b in (1e5, 1e6, 1e7)
    ]
    no_fit = tmp_path / "nofit.json"
    no_fit.write_text(json.dumps({"world_size": 2, "results": rows}))
    alpha, busbw, n = load_commbench(no_fit)
    assert (n, busbw) == (2, pytest.approx(50.0)) and alpha == pytest.approx(0.01)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AnalysisError, match=r"bad\.json: cannot read commbench JSON"):
        load_commbench(bad)


def test_cpu_runs_hide_no_communication(base):
    # 3 buckets: on an accelerator DDP hides the first two behind the backward pass; a CPU rank's
    # cores are busy computing, so the model exposes the whole all-reduce there.
    gpu = dict(base, device_type="cuda")
    cpu = dict(base, device_type="cpu")
    (g,) = predict_scaling(gpu, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (c,) = predict_scaling(cpu, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    assert c.exposed_comm_ms == pytest.approx(c.comm_ms)
    assert g.exposed_comm_ms < g.comm_ms
    assert c.step_ms - g.step_ms == pytest.approx(c.exposed_comm_ms - g.exposed_comm_ms)


def test_sync_latency_after_compute_replaces_alpha_once_per_step_on_cpu(base, tmp_path):
    cpu = dict(base, device_type="cpu")
    gpu = dict(base, device_type="cuda")
    (plain,) = predict_scaling(cpu, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (woken,) = predict_scaling(
        cpu, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA, sync_latency=SyncLatency(((4, 3.0),), 2)
    )
    # one collective per step (the first) pays 3 ms instead of alpha; the other buckets keep alpha
    assert woken.comm_ms - plain.comm_ms == pytest.approx(3.0 - ALPHA)
    assert woken.step_ms - plain.step_ms == pytest.approx(3.0 - ALPHA)
    # a latency below alpha changes nothing; accelerators keep their bucket model
    (low,) = predict_scaling(
        cpu, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA, sync_latency=SyncLatency(((4, 0.01),), 2)
    )
    assert low.step_ms == pytest.approx(plain.step_ms)
    (g1,) = predict_scaling(gpu, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (g2,) = predict_scaling(
        gpu, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA, sync_latency=SyncLatency(((4, 3.0),), 2)
    )
    assert g1.step_ms == pytest.approx(g2.step_ms)
    (one,) = predict_scaling(
        cpu, [1], busbw_gbps=BUSBW, alpha_ms=ALPHA, sync_latency=SyncLatency(((4, 3.0),), 2)
    )
    assert one.comm_ms == 0.0

    bench = tmp_path / "commbench.json"
    bench.write_text(json.dumps({"world_size": 2, "results": [], "fit": {"busbw_gbps": 1.0}}))
    assert load_sync_latency(bench) is None  # older commbench files: alpha only
    bench.write_text(
        json.dumps({"world_size": 2, "sync_latency": {"median_ms": 2.5, "p90_ms": 4.0}})
    )
    # a file with only the 4-byte probe: that latency holds at every size
    assert load_sync_latency(bench) == SyncLatency(((4.0, 2.5),), 2)


def test_the_first_all_reduce_pays_the_after_compute_time_measured_at_its_size(base, tmp_path):
    cpu = dict(base, device_type="cpu")  # buckets 3 MB, 3 MB, 2 MB: the first is 3e6 bytes
    kw = {"busbw_gbps": BUSBW, "alpha_ms": ALPHA}
    (plain,) = predict_scaling(cpu, [2], **kw)
    b2b_2 = allreduce_ms(3e6, 2, **kw)  # 0.35 ms back to back at the commbench's 2 ranks
    # measured at the first bucket's own size: it costs that, not the 4-byte figure
    at_size = SyncLatency(((4, 0.2), (3e6, 2.35)), 2)
    (woken,) = predict_scaling(cpu, [2], sync_latency=at_size, **kw)
    assert woken.step_ms - plain.step_ms == pytest.approx(2.35 - b2b_2)
    # what is beyond the back-to-back time is carried to other world sizes, where the bytes
    # term differs (4 ranks: ring factor 1.5)
    (plain4,) = predict_scaling(cpu, [4], **kw)
    (woken4,) = predict_scaling(cpu, [4], sync_latency=at_size, **kw)
    assert woken4.step_ms - plain4.step_ms == pytest.approx(2.35 - b2b_2)
    # measured with 4 ranks: their back-to-back time is what the 2.35 ms exceeds
    (w4,) = predict_scaling(cpu, [2], sync_latency=SyncLatency(at_size.points, 4), **kw)
    assert w4.step_ms - plain.step_ms == pytest.approx(2.35 - allreduce_ms(3e6, 4, **kw))
    # between measured sizes: interpolated in log(bytes) (3e6 is the log-midpoint of 1e6, 9e6)
    around = SyncLatency(((1e6, 1.5), (9e6, 4.5)), 2)
    (mid,) = predict_scaling(cpu, [2], sync_latency=around, **kw)
    extra = [1.5 - allreduce_ms(1e6, 2, **kw), 4.5 - allreduce_ms(9e6, 2, **kw)]
    assert mid.step_ms - plain.step_ms == pytest.approx(sum(extra) / 2)
    # beyond the largest size measured, its excess holds
    (far,) = predict_scaling(cpu, [2], sync_latency=SyncLatency(((4, 0.2), (64e3, 2.0)), 2), **kw)
    assert far.step_ms - plain.step_ms == pytest.approx(2.0 - allreduce_ms(64e3, 2, **kw))

    bench = tmp_path / "commbench.json"
    sizes = [{"bytes": 4, "median_ms": 0.2, "mean_ms": 0.5}, {"bytes": 65536, "mean_ms": 1.7}]
    bench.write_text(
        json.dumps(
            {"world_size": 4, "sync_latency": {"median_ms": 0.2, "p90_ms": 1.0, "sizes": sizes}}
        )
    )
    # each size's mean: what a step pays on average (the 4-byte median is for older files)
    assert load_sync_latency(bench) == SyncLatency(((4.0, 0.5), (65536.0, 1.7)), 4)
    sizes[1]["mean_ms"] = None
    bench.write_text(
        json.dumps({"world_size": 2, "sync_latency": {"median_ms": 0.2, "sizes": sizes}})
    )
    with pytest.raises(AnalysisError, match=r"'sync_latency.sizes\[1\].mean_ms'"):
        load_sync_latency(bench)


def test_commbench_busbw_zero_means_refit_and_pure_noise_is_a_note_not_a_failure(tmp_path):
    from scalelab.analysis.predict import NoBandwidthFit
    from scalelab.analysis.report import analyse_runs

    rows = [{"bytes": b, "time_ms": 0.01 + b / 5e7} for b in (1e5, 1e6, 1e7)]
    refit = tmp_path / "refit.json"  # commbench writes busbw 0 when its own fit failed
    refit.write_text(json.dumps({"world_size": 2, "results": rows, "fit": {"busbw_gbps": 0.0}}))
    assert load_commbench(refit)[1] == pytest.approx(50.0)
    noise = tmp_path / "noise.json"
    flat = [{"bytes": b, "time_ms": t} for b, t in ((1e5, 3.0), (1e6, 2.0), (1e7, 1.0))]
    noise.write_text(json.dumps({"world_size": 2, "results": flat, "fit": {"busbw_gbps": 0}}))
    with pytest.raises(NoBandwidthFit, match="noise.json"):
        load_commbench(noise)
    write_sweep(tmp_path / "runs", [1, 2])
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), commbench=noise)
    assert not analysis.predictions and analysis.groups
    assert any("does not grow with message size" in n for n in analysis.bandwidth_notes)


def test_the_report_states_the_after_compute_times_it_predicted_with(tmp_path):
    from scalelab.analysis.report import analyse_runs

    rows = [{"bytes": b, "time_ms": 0.01 + b / 5e7} for b in (1e5, 1e6, 1e7)]
    sizes = [{"bytes": 4, "median_ms": 0.1, "mean_ms": 0.5, "p90_ms": 2.0},
             {"bytes": 65536, "median_ms": 1.5, "mean_ms": 1.7, "p90_ms": 4.0}]  # fmt: skip
    bench = tmp_path / "commbench.json"
    bench.write_text(
        json.dumps(
            {"world_size": 2, "results": rows, "fit": {"alpha_ms": 0.01, "busbw_gbps": 50.0},
             "sync_latency": {"median_ms": 0.1, "p90_ms": 2.0, "sizes": sizes}}
        )
    )  # fmt: skip
    cpu = {"device_type": "cpu", "device_name": "AMD EPYC", "backend": "gloo"}
    write_sweep(tmp_path / "runs", [1, 2], summary=cpu)
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), commbench=bench)
    assert analysis.predictions, analysis.bandwidth_notes
    assert any(
        "all-reduce after compute (CPU runs) 4 B 0.5 ms, 64 KiB 1.7 ms" in n
        for n in analysis.bandwidth_notes
    ), analysis.bandwidth_notes


def test_nan_timing_is_no_measurement(tmp_path):
    # every step of the run was warm-up: the trainer writes NaN phase means
    nan = {k: float("nan") for k in ("data_ms", "forward_ms", "step_ms")}
    run = load_run(write_run(tmp_path, "r", timing=nan))
    assert run.phase("forward_ms") is None and run.phase("h2d_ms") is not None
    with pytest.raises(AnalysisError, match="no measured data_ms, forward_ms, step_ms"):
        predict_scaling(run.summary, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA)


def test_fp16_hook_halves_the_bytes_of_ddps_buckets_and_powersgd_is_not_predicted(tmp_path):
    hooked = load_run(write_run(tmp_path, "h", summary={"comm": {"comm_hook": "fp16"}})).summary
    plain = load_run(write_run(tmp_path, "p")).summary
    (h,) = predict_scaling(hooked, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (p,) = predict_scaling(plain, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)
    # 3 buckets: alpha each, plus half the 1.5 * 8 MB / 10 GB/s = 1.2 ms
    assert p.comm_ms == pytest.approx(3 * ALPHA + 1.2) and h.comm_ms == pytest.approx(
        3 * ALPHA + 0.6
    )
    # with the embedding rows summed row-wise, the last bucket is those rows: not hooked
    rows = {"comm": {"comm_hook": "bf16", "embedding_grad_sync": "rows"}}
    (r,) = predict_scaling(
        load_run(write_run(tmp_path, "r", summary=rows)).summary, [4], busbw_gbps=BUSBW, alpha_ms=0
    )
    assert r.comm_ms == pytest.approx(1.5 * (1.5e6 + 1.5e6 + 2e6) / 1e7)
    psgd = load_run(write_run(tmp_path, "s", summary={"comm": {"comm_hook": "powersgd"}})).summary
    with pytest.raises(AnalysisError, match="comm_hook=powersgd is not modelled"):
        predict_scaling(psgd, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA)


def test_runs_of_different_work_are_not_one_scaling_group(tmp_path):
    from scalelab.analysis.scaling import analyse

    write_run(tmp_path, "ws1", summary={"steps_per_epoch": 100})
    write_run(tmp_path, "ws2", world_size=2, summary={"steps_per_epoch": 100})
    # a 2-rank run of 20 steps per epoch (train.max_steps_per_epoch) is no point of that curve
    write_run(
        tmp_path, "ws2-short", world_size=2, epoch_time_s=1.0, summary={"steps_per_epoch": 20}
    )
    write_run(tmp_path, "ws2-fp16", world_size=2, summary={"steps_per_epoch": 100, "comm": {"comm_hook": "fp16"}})  # fmt: skip
    groups = analyse(load_runs([tmp_path]))
    names = sorted(sorted(r.name for r in g.runs) for g in groups)
    assert names == [["ws1", "ws2"], ["ws2-fp16"], ["ws2-short"]]


def test_only_world_sizes_that_split_the_global_batch_are_predicted(tmp_path):
    from scalelab.analysis.report import analyse_runs

    write_sweep(tmp_path / "runs", [1, 2], summary={"global_batch": 12})
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (preds,) = analysis.predictions.values()
    assert [p.world_size for p in preds] == [1, 2, 4]  # not 8: 12 samples do not split in 8


def test_predict_cli_takes_the_users_bandwidth_over_a_commbench_file(tmp_path, monkeypatch):
    import scalelab.analysis.predict as predict_mod
    from scalelab.cli import main

    run = write_run(tmp_path, "base")
    bench = tmp_path / "cb.json"
    bench.write_text(json.dumps({"world_size": 2, "fit": {"alpha_ms": 1.0, "busbw_gbps": 150.0}}))
    seen = {}
    real = predict_mod.predict_scaling

    def spy(summary, sizes, **kw):
        seen.update(kw)
        return real(summary, sizes, **kw)

    monkeypatch.setattr(predict_mod, "predict_scaling", spy)
    args = ["predict", str(run), "--commbench", str(bench), "--world-sizes", "2"]
    assert main([*args, "--busbw-gbps", "7", "--alpha-ms", "0.5"]) == 0
    assert (seen["busbw_gbps"], seen["alpha_ms"]) == (7.0, 0.5)  # as `scalelab report` does
    assert main(args) == 0 and seen["busbw_gbps"] == 150.0


def test_predict_cli_says_what_the_after_compute_term_adds(tmp_path, capsys):
    from scalelab.cli import main

    cpu = {"device_type": "cpu", "device_name": "AMD EPYC", "backend": "gloo"}
    run = write_run(tmp_path, "base", summary=cpu)  # first bucket 3 MB: 0.35 ms back to back
    bench = tmp_path / "cb.json"
    sizes = [{"bytes": 3_000_000, "median_ms": 1.0, "mean_ms": 2.35, "p90_ms": 4.0}]
    bench.write_text(
        json.dumps(
            {"world_size": 2, "fit": {"alpha_ms": 0.05, "busbw_gbps": 10.0},
             "sync_latency": {"median_ms": 0.1, "p90_ms": 1.0, "sizes": sizes}}
        )
    )  # fmt: skip
    assert main(["predict", str(run), "--commbench", str(bench), "--world-sizes", "2"]) == 0
    assert "note: comm T_ar includes 2 ms per step because the step's first all-reduce" in (
        capsys.readouterr().out
    )
    # a GPU run: no after-compute term, no note
    gpu = write_run(tmp_path, "gpu")
    assert main(["predict", str(gpu), "--commbench", str(bench), "--world-sizes", "2"]) == 0
    assert "after-compute" not in capsys.readouterr().out


def _cpu(threads: int) -> dict:
    return {"device_type": "cpu", "device_name": "AMD EPYC", "backend": "gloo",
            "system": {"num_cpus": 2, "num_threads_per_rank": threads}}  # fmt: skip


def test_cpu_compute_follows_the_threads_per_rank(tmp_path):
    """1 rank x 2 threads -> 2 ranks x 1 thread: half the batch on half the threads, so the
    per-rank forward and backward stay as they were (optimizer and data are not scaled)."""
    base = load_run(write_run(tmp_path, "base", world_size=1, summary=_cpu(2))).summary
    same, fewer = predict_scaling(base, [2, 4], busbw_gbps=BUSBW, alpha_ms=ALPHA,
                                  threads_per_rank={4: 1})  # fmt: skip
    assert same.threads_per_rank == 2 and same.forward_ms == pytest.approx(15.0)
    assert fewer.threads_per_rank == 1
    assert (fewer.forward_ms, fewer.backward_ms) == (pytest.approx(15.0), pytest.approx(30.0))
    assert fewer.optimizer_ms == 5.0 and fewer.data_ms == pytest.approx(0.5)
    gpu = load_run(write_run(tmp_path, "gpu", world_size=1)).summary  # threads do not apply
    (p,) = predict_scaling(gpu, [4], busbw_gbps=BUSBW, alpha_ms=ALPHA, threads_per_rank={4: 1})
    assert p.threads_per_rank is None and p.forward_ms == pytest.approx(7.5)
    with pytest.raises(AnalysisError, match="threads per rank must be > 0"):
        predict_scaling(base, [2], busbw_gbps=BUSBW, alpha_ms=ALPHA, threads_per_rank={2: 0})


def test_report_checks_each_cpu_run_against_a_prediction_with_its_threads(tmp_path):
    from scalelab.analysis.report import analyse_runs

    write_run(tmp_path, "r-1x2", world_size=1, epoch_time_s=6.0, summary=_cpu(2))
    write_run(tmp_path, "r-1x1", world_size=1, epoch_time_s=9.0, summary=_cpu(1))
    write_run(tmp_path, "r-2x1", world_size=2, epoch_time_s=6.5, summary=_cpu(1))
    analysis = analyse_runs(load_runs([tmp_path]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    checked = {c.run_name: c.prediction.threads_per_rank for c in analysis.comparisons}
    # the base (r-1x2, the faster 1-rank layout) is not checked against itself
    assert checked == {"r-1x1": 1.0, "r-2x1": 1.0}
    (preds,) = analysis.predictions.values()
    assert {(p.world_size, p.threads_per_rank) for p in preds} >= {(1, 1.0), (1, 2.0), (2, 1.0)}


def test_a_bandwidth_read_from_a_run_marks_that_runs_check_as_compute_only(tmp_path):
    """Without commbench or --busbw-gbps the bandwidth comes from the 2-rank run's own
    all-reduce time: its comparison is then no independent check of the communication model."""
    from scalelab.analysis.report import _prediction_table, analyse_runs

    write_sweep(tmp_path / "runs", [1, 2, 4])
    analysis = analyse_runs(load_runs([tmp_path / "runs"]))
    (note,) = analysis.bandwidth_notes
    assert "implied by the measured bucket all-reduce time of run ag_news_small-ws2" in note
    marked = {c.run_name: c.sets_bandwidth for c in analysis.comparisons}
    assert marked == {"ag_news_small-ws2": True, "ag_news_small-ws4": False}
    ((label, preds),) = analysis.predictions.items()
    table = _prediction_table(label, preds, analysis.comparisons, 0)
    assert [row[1] for row in table.rows if row[1] != "-"] == [
        "ag_news_small-ws2 *",
        "ag_news_small-ws4",
    ]
    assert "*: the run whose measured all-reduce time set the bandwidth" in table.caption
    # an independent bandwidth: nothing is marked
    given = analyse_runs(load_runs([tmp_path / "runs"]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    assert not any(c.sets_bandwidth for c in given.comparisons)
    ((label, preds),) = given.predictions.items()
    assert "*" not in _prediction_table(label, preds, given.comparisons, 0).caption


def test_predict_cli_on_a_cpu_run_states_its_threads_and_warns_of_oversubscription(
    tmp_path, capsys
):
    """The threads per rank are the base run's unless --threads-per-rank says otherwise, the
    table shows them, and world sizes whose ranks x threads exceed the base host's CPUs warn."""
    from scalelab.cli import main

    run = write_run(tmp_path, "base", world_size=1, summary=_cpu(2))
    args = ["predict", str(run), "--busbw-gbps", "2", "--world-sizes", "1,2"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln[:1].isdigit()}
    assert rows["1"][1] == rows["2"][1] == "2"  # threads/rank column: the base run's 2
    assert "2 as in the base run (--threads-per-rank to change)" in out
    # 2 ranks x 2 threads on the base run's 2 CPUs: warned; 1 rank x 2 threads fits
    assert err.count("warning:") == 1 and "2 ranks x 2 thread(s) = 4 busy threads" in err
    assert main([*args, "--threads-per-rank", "1"]) == 0
    out, err = capsys.readouterr()
    fewer = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln[:1].isdigit()}
    assert fewer["2"][1] == "1" and "warning:" not in err
    assert "1 (--threads-per-rank) against the base run's 2" in out
    assert float(fewer["2"][2]) > float(rows["2"][2])  # half the threads: a longer step
    gpu = write_run(tmp_path, "gpu", world_size=1)
    assert main(["predict", str(gpu), "--busbw-gbps", "2", "--threads-per-rank", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "applies to CPU runs" in err and "ran on cuda" in err
    assert main([*args, "--threads-per-rank", "0"]) == 2
    assert "--threads-per-rank must be a number > 0" in capsys.readouterr().err


def test_predict_cli_refuses_world_sizes_the_global_batch_does_not_split_over(tmp_path, capsys):
    # 3 ranks (or 128) of a global batch of 64: a run the trainer refuses was predicted anyway
    from scalelab.cli import main

    run = write_run(tmp_path, "base", world_size=1)  # global batch 64, no accumulation
    for sizes, n in (("2,3", 3), ("128", 128)):
        assert main(["predict", str(run), "--busbw-gbps", "2", "--world-sizes", sizes]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"global batch 64 of run base does not split over {n} ranks x 1 accum" in err
    # the default sizes (1, 2, 4, 8) keep those the batch splits over: 100 = 4 x 25, not 8
    odd = write_run(tmp_path, "odd", world_size=1, summary={"global_batch": 100})
    assert main(["predict", str(odd), "--busbw-gbps", "2"]) == 0
    out = capsys.readouterr().out
    assert [ln.split()[0] for ln in out.splitlines() if ln[:1].isdigit()] == ["1", "2", "4"]
    accum = write_run(tmp_path, "accum", world_size=1, summary={"grad_accum_steps": 4})
    assert main(["predict", str(accum), "--busbw-gbps", "2", "--world-sizes", "16"]) == 0
    assert main(["predict", str(accum), "--busbw-gbps", "2", "--world-sizes", "32"]) == 2
    assert "over 32 ranks x 4 accumulation step(s)" in capsys.readouterr().err


def _warned(argv: list[str]) -> list[str]:
    """scalelab's warnings while `main(argv)` succeeds (pytest records them instead of stderr)."""
    from scalelab.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    return [str(w.message) for w in caught]


def test_a_commbench_of_another_backend_than_the_run_is_warned_of(tmp_path):
    """A GPU's NCCL bandwidth used for a CPU run (or gloo for a GPU run) predicts from links the
    run does not use: predict and report warn, the report's bandwidth note says it too, and a
    commbench of the run's own backend (or one that records none) is taken silently."""
    from scalelab.analysis.report import analyse_runs

    cpu = write_run(tmp_path / "cpu", "base", summary={**_cpu(1), "backend": "none"})
    gpu = write_run(tmp_path / "gpu", "base", config={"distributed": {"backend": "auto"}})

    def bench(name: str, **fields) -> str:
        path = tmp_path / name
        fit = {"alpha_ms": 0.1, "busbw_gbps": 2.0}
        path.write_text(json.dumps({"world_size": 2, "fit": fit, **fields}))
        return str(path)

    nccl = bench("nccl.json", backend="nccl", device="NVIDIA H100 80GB HBM3")
    gloo = bench("gloo.json", backend="gloo", device="cpu")
    unknown = bench("old.json")
    for run, other, own, used in ((cpu, nccl, gloo, "gloo"), (gpu, gloo, nccl, "nccl")):
        args = ["predict", str(run), "--world-sizes", "2", "--commbench"]
        [warning] = _warned([*args, other])
        measured = Path(other).stem
        assert warning.startswith(f"{measured}.json measured {measured} on ")
        assert f"but run base ({'cpu' if run is cpu else 'cuda'}) uses {used}" in warning
        assert _warned([*args, own]) == _warned([*args, unknown]) == []
        # a bandwidth the user gives replaces the file: nothing to warn of
        assert _warned([*args, other, "--busbw-gbps", "5"]) == []
    with pytest.warns(UserWarning, match="nccl.json measured nccl on NVIDIA H100"):
        analysis = analyse_runs([load_run(cpu)], commbench=nccl)
    assert any("warning: nccl.json measured nccl" in n for n in analysis.bandwidth_notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis = analyse_runs([load_run(cpu)], commbench=gloo)
    assert not any("warning" in n for n in analysis.bandwidth_notes)


def test_predictions_beyond_the_commbench_ranks_say_they_assume_its_links(
    tmp_path: Path, capsys
) -> None:
    """A 2-rank, 1-node bandwidth used for 4 and 8 ranks: predict notes it (not for 2 ranks),
    and so does the report's bandwidth note; a bandwidth the user gives has no such note."""
    from scalelab.analysis.report import analyse_runs
    from scalelab.cli import main

    run = write_run(tmp_path / "runs", "base")
    bench = tmp_path / "cb.json"
    fit = {"alpha_ms": 0.1, "busbw_gbps": 20.0}
    bench.write_text(json.dumps({"world_size": 2, "num_nodes": 1, "fit": fit}))
    args = ["predict", str(run), "--commbench", str(bench), "--world-sizes"]
    assert main([*args, "2,4,8"]) == 0
    note = "note: cb.json measured 2 ranks on 1 node(s); the predictions for 4, 8 ranks assume"
    assert note in capsys.readouterr().out
    assert main([*args, "2"]) == 0
    assert "assume the same links" not in capsys.readouterr().out
    assert main([*args, "8", "--busbw-gbps", "5"]) == 0
    assert "assume the same links" not in capsys.readouterr().out
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), commbench=bench)
    assert any("cb.json measured 2 ranks on 1 node(s)" in n for n in analysis.bandwidth_notes)


def test_a_commbench_that_waited_otherwise_than_the_run_is_noted(tmp_path: Path, capsys) -> None:
    """The CPU wake-up term comes from the commbench's after-compute all-reduces: a file that
    timed them blocking (or older, with no `wait`: those blocked) for a run that spins, or the
    other way round, is noted by predict and in the report's bandwidth note; matching waits, a
    GPU run, or a file without after-compute times are taken silently."""
    from scalelab.analysis.report import analyse_runs
    from scalelab.cli import main

    def cpu_run(name: str, **comm) -> Path:
        return write_run(tmp_path / name, "base", summary={**_cpu(1), "backend": "none",
                                                          "comm": comm})  # fmt: skip

    spins = cpu_run("spin", grad_sync="fused", collective_wait="spin")
    blocks = cpu_run("block", grad_sync="fused", collective_wait="block")
    gpu = write_run(tmp_path / "gpu", "base", config={"distributed": {"backend": "auto"}})

    def bench(name: str, **latency) -> str:
        path = tmp_path / name
        fit = {"alpha_ms": 0.1, "busbw_gbps": 2.0}
        lat = {"median_ms": 0.3, "p90_ms": 2.0, **latency}
        path.write_text(json.dumps({"world_size": 2, "backend": "gloo", "fit": fit,
                                    "sync_latency": lat}))  # fmt: skip
        return str(path)

    old, spun, blocked = (
        bench("old.json"),
        bench("spun.json", wait="spin"),
        bench("blocked.json", wait="block"),
    )
    none = tmp_path / "none.json"
    none.write_text(json.dumps({"world_size": 2, "fit": {"alpha_ms": 0.1, "busbw_gbps": 2.0}}))

    def note(run: Path, file: str | Path) -> str:
        assert main(["predict", str(run), "--world-sizes", "2", "--commbench", str(file)]) == 0
        return capsys.readouterr().out

    for file in (old, blocked):
        name = Path(file).name
        assert (
            f"note: {name} timed its all-reduces after compute blocking, but run base waits "
            "spinning (distributed.collective_wait)" in note(spins, file)
        )
        assert "--wait spin" in note(spins, file)
        assert "timed its all-reduces" not in note(blocks, file)
    assert (
        "spun.json timed its all-reduces after compute spinning, but run base waits blocking"
        in note(blocks, spun)
    )
    for run, file in ((spins, spun), (spins, none)):
        assert "timed its all-reduces" not in note(run, file)
    with pytest.warns(UserWarning, match="uses nccl"):  # that warning, not the wait's note
        assert "timed its all-reduces" not in note(gpu, old)
    analysis = analyse_runs([load_run(spins)], commbench=old)
    assert any(
        "old.json timed its all-reduces after compute blocking" in n
        for n in analysis.bandwidth_notes
    )
    # the step's first all-reduce is DDP's (a blocking wait) where its bucket comes first or it
    # sums every gradient; summaries from before collective_wait blocked
    from scalelab.analysis.predict import run_wait

    assert run_wait(load_run(spins)) == "spin" and run_wait(load_run(blocks)) == "block"
    buckets = cpu_run("buckets", grad_sync="buckets", collective_wait="spin")
    ddp_sums = cpu_run("ddp", grad_sync="buckets", collective_wait=None)
    older = write_run(tmp_path / "older", "base", summary={**_cpu(1), "backend": "none"})
    assert {run_wait(load_run(r)) for r in (buckets, ddp_sums, older)} == {"block"}
    assert "timed its all-reduces" not in note(buckets, old)


def test_repeated_baselines_are_averaged_into_the_prediction_and_not_checked_against_it(
    tmp_path,
):
    """The prediction rests on the mean of the baseline's repeats, as the measured speedups
    do, not on whichever loads first; and a 1-rank repeat is no check of the 1-rank base."""
    from scalelab.analysis.report import analyse_runs

    slow = {k: 1.5 * v for k, v in healthy_timing(1).items()}
    write_run(tmp_path / "runs", "a-ws1", timing=slow)
    write_run(tmp_path / "runs", "b-ws1")
    write_run(tmp_path / "runs", "c-ws2", world_size=2)
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (preds,) = analysis.predictions.values()
    one = next(p for p in preds if p.world_size == 1)
    assert one.step_ms == pytest.approx(1.25 * healthy_timing(1)["step_ms"])
    assert one.base_run == "mean of a-ws1, b-ws1"
    assert [c.run_name for c in analysis.comparisons] == ["c-ws2"]
    assert "prediction" not in {f.rule for f in analysis.findings if f.subject.endswith("ws1")}


def test_a_run_that_sent_other_collectives_is_not_checked_against_the_prediction(tmp_path):
    """The model prices the base run's gradient traffic: a multi-rank run that synced the
    embedding densely (7x the bytes) or fused is no check of it; the report says so."""
    from scalelab.analysis.report import analyse_runs

    rows = {"comm": {"embedding_grad_sync": "rows", "grad_sync": "fused",
                     "bucket_bytes": [1_500_000], "wire_bucket_bytes": [1_500_000]}}  # fmt: skip
    write_run(tmp_path / "runs", "ws1", summary=rows)
    write_run(tmp_path / "runs", "ws2", world_size=2, summary=rows)
    dense = {"comm": {"embedding_grad_sync": "dense", "grad_sync": "buckets",
                      "bucket_bytes": [11_368_464], "wire_bucket_bytes": [11_368_464]}}  # fmt: skip
    write_run(tmp_path / "runs", "ws2-dense", world_size=2, summary=dense)
    near = {"comm": {"bucket_bytes": [1_560_000], "wire_bucket_bytes": [1_560_000]}}
    write_run(tmp_path / "runs", "ws4", world_size=4, summary=_merge(rows, near))
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    # a few % more embedding rows is the same traffic
    assert sorted(c.run_name for c in analysis.comparisons) == ["ws2", "ws4"]
    (note,) = [n for n in analysis.bandwidth_notes if "Not checked" in n]
    assert "Not checked against the predictions: ws2-dense," in note


def test_the_report_warns_where_cpu_predictions_oversubscribe_the_base_runs_cpus(tmp_path):
    """As `scalelab predict` warns: 4 ranks x 1 thread on a 2-CPU host would time-slice."""
    from scalelab.analysis.report import analyse_runs

    cpu = {"device_type": "cpu", "device_name": "AMD EPYC", "backend": "gloo",
           "system": {"num_cpus": 2, "num_threads_per_rank": 1}}  # fmt: skip
    write_run(tmp_path / "runs", "ws1", summary=cpu)
    write_run(tmp_path / "runs", "ws2", world_size=2, summary=cpu)
    analysis = analyse_runs(load_runs([tmp_path / "runs"]), busbw_gbps=BUSBW, alpha_ms=ALPHA)
    (note,) = analysis.bandwidth_notes
    assert "Optimistic at 4 x 1, 8 x 1 (ranks x threads)" in note, note
    assert "2 CPUs" in note and "2 x 1" not in note
