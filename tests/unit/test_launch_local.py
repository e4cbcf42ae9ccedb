"""Local sweep launcher: command lines, thread split, fail-fast errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scalelab.cli import main as cli_main
from scalelab.distributed import LaunchError
from scalelab.launch import local
from scalelab.launch.local import SweepError, rank_threads, run_sweep, sweep_main, torchrun_argv
from tests.conftest import REPO

SMALL = REPO / "configs" / "ag_news_small.yaml"


def test_one_rank_is_a_plain_process() -> None:
    assert torchrun_argv(1, ["train", "--config", "c.yaml"], python="py") == [
        "py", "-m", "scalelab", "train", "--config", "c.yaml",
    ]  # fmt: skip


def test_multi_rank_goes_through_torchrun() -> None:
    assert torchrun_argv(4, ["train", "x=1"], python="py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "scalelab", "train", "x=1",
    ]  # fmt: skip
    assert torchrun_argv(2, [])[0] == sys.executable


def test_multi_node_argv() -> None:
    argv = torchrun_argv(1, ["train"], nnodes=2, standalone=False, python="py")
    assert argv == ["py", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                    "-m", "scalelab", "train"]  # fmt: skip
    with pytest.raises(ValueError, match="single-node"):
        torchrun_argv(2, ["train"], nnodes=2)
    with pytest.raises(ValueError, match="nproc and nnodes must be >= 1, got nproc=0"):
        torchrun_argv(0, ["train"])


def test_threads_per_rank() -> None:
    assert rank_threads(1, cpus=16) == 16
    assert rank_threads(4, cpus=16) == 4
    assert rank_threads(3, cpus=16) == 5
    assert rank_threads(8, cpus=2) == 1  # never 0 threads
    assert rank_threads(4, 3, cpus=16) == 3  # explicit value wins
    assert rank_threads(2) >= 1
    with pytest.raises(ValueError, match="threads per rank must be >= 1, got 0"):
        rank_threads(2, 0)


def test_sweep_runs_every_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(argv: list[str], env: dict[str, str], **kw: object) -> tuple[int, None]:
        calls.append((argv, env))
        return 0, None

    monkeypatch.setattr(local, "_run_child", fake_run)
    monkeypatch.setattr(local, "available_cpus", lambda: 8)
    runs = run_sweep(SMALL, [1, 2, 4], ["train.epochs=1"], out_dir=tmp_path, threads_per_rank=None)
    assert runs == [tmp_path / f"ag_news_small-ws{n}" for n in (1, 2, 4)]
    assert [env["OMP_NUM_THREADS"] for _, env in calls] == ["8", "4", "2"]
    argv1, argv4 = calls[0][0], calls[2][0]
    assert argv1[1:3] == ["-m", "scalelab"]
    assert "--nproc_per_node=4" in argv4 and "--standalone" in argv4
    tail = argv4[argv4.index("train") :]
    assert tail == ["train", "--config", str(SMALL), f"output.dir={tmp_path}",
                    "output.run_name=ag_news_small-ws4", "train.epochs=1"]  # fmt: skip

    # a preset name resolves like `scalelab train --config ag_news_small`; name= renames the runs
    calls.clear()
    runs = run_sweep("ag_news_small", [2], ["name=mine"], out_dir=tmp_path, threads_per_rank=3)
    assert runs == [tmp_path / "mine-ws2"]
    assert calls[0][1]["OMP_NUM_THREADS"] == "3"
    assert Path(calls[0][0][calls[0][0].index("--config") + 1]).is_file()


def test_missing_config_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope.yaml"
    code = sweep_main(["--config", str(missing), "--world-sizes", "1,2", "--out", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and "nope.yaml" in err[0]


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_one_line_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    # trained into the current folder, silently
    monkeypatch.chdir(tmp_path)
    for command in (
        ["sweep", "--config", str(SMALL), "--world-sizes", "1"],
        ["slurm", "--config", str(SMALL), "--no-submit"],  # the run folder and script went there
        ["commbench"],
    ):
        with pytest.raises(SystemExit) as info:
            cli_main([*command, "--out", out])
        assert info.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"scalelab: error: argument --out: is empty: give the folder to write into (see "
            f"scalelab {command[0]} --help)"
        )
    assert list(tmp_path.iterdir()) == []


def test_sweep_checks_every_world_size_before_running(tmp_path: Path) -> None:
    assert issubclass(SweepError, LaunchError)  # the CLI prints LaunchErrors as one line, exit 2
    # batch 30 runs on 1 and 2 ranks but not on 4: refuse before spending time on the first runs
    with pytest.raises(SweepError, match="divisible"):
        run_sweep(SMALL, [1, 2, 4], ["train.batch_size=30"], out_dir=tmp_path, threads_per_rank=1)
    with pytest.raises(SweepError, match="--out"):
        run_sweep(SMALL, [1], ["output.dir=elsewhere"], out_dir=tmp_path, threads_per_rank=1)
    with pytest.raises(SweepError, match="distinct"):
        run_sweep(SMALL, [2, 2], [], out_dir=tmp_path, threads_per_rank=1)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SweepError, match="exists and is not a folder"):  # was the first run's error
        run_sweep(SMALL, [1, 2], [], out_dir=tmp_path / "afile", threads_per_rank=1)
    with pytest.raises(SweepError, match=r"cannot be made \(.*afile is not a folder\)"):
        run_sweep(SMALL, [1, 2], [], out_dir=tmp_path / "afile" / "in", threads_per_rank=1)


def test_sweep_into_an_existing_sweep_is_refused_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ws2 folder of an earlier sweep: refuse at once, not after the 1-rank run has finished
    (tmp_path / "ag_news_small-ws2").mkdir()
    (tmp_path / "ag_news_small-ws2" / "metrics.csv").write_text("epoch\n")
    calls: list[list[str]] = []
    monkeypatch.setattr(
        local, "_run_child", lambda argv, env, **kw: (calls.append(argv), (0, None))[1]
    )
    with pytest.raises(SweepError, match="ag_news_small-ws2 already holds a run"):
        run_sweep(SMALL, [1, 2], [], out_dir=tmp_path, threads_per_rank=1)
    assert calls == []
    # nor into a run folder itself (its runs would nest in it, where report reads it alone),
    # not even to continue
    for resume in ([], ["train.resume=auto"]):
        with pytest.raises(SweepError, match="ag_news_small-ws2 is a run folder"):
            run_sweep(
                SMALL, [1], resume, out_dir=tmp_path / "ag_news_small-ws2", threads_per_rank=1
            )
    assert calls == []
    # continuing the sweep is allowed, and each run names its folder (resume=auto needs that)
    run_sweep(SMALL, [1, 2], ["train.resume=auto"], out_dir=tmp_path, threads_per_rank=1)
    assert len(calls) == 2
    for n, argv in zip((1, 2), calls, strict=True):
        assert f"output.run_name=ag_news_small-ws{n}" in argv and "train.resume=auto" in argv


def test_bad_world_sizes_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        sweep_main(["--config", str(SMALL), "--world-sizes", "one,two"])
    assert exc.value.code == 2
    assert "--world-sizes" in capsys.readouterr().err


def test_failing_run_names_world_size_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # a valid config whose training data does not exist: the real `train` process exits non-zero
    code = sweep_main(
        ["--config", str(SMALL), "--world-sizes", "1,2", "--out", str(tmp_path),
         "data.source=files", f"data.train_path={tmp_path}/missing_train.csv",
         f"data.test_path={tmp_path}/missing_test.csv"]
    )  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(
        "scalelab: error: sweep stopped: the world-size-1 run failed with exit code "
    )
    assert not err[-1].endswith(" 0")


def test_demo_runs_hide_gpus_and_plain_sweeps_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scalelab import cli
    from scalelab.analysis import report

    envs: list[dict[str, str]] = []
    monkeypatch.setattr(
        local, "_run_child", lambda argv, env, **kw: (envs.append(env), (0, None))[1]
    )
    monkeypatch.setattr(
        report, "write_report", lambda *a, **k: {"markdown": "r.md", "html": "r.html"}
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = cli.build_parser().parse_args(["demo", "--out", str(tmp_path / "demo")])
    assert args.fn(args) == 0
    assert len(envs) == 3  # 1-rank run, 2-rank run, commbench: all on the CPU
    assert all(env["CUDA_VISIBLE_DEVICES"] == "" for env in envs)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--help"])
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().out  # the help says so

    # a bad override is refused before the line that says the demo starts
    assert cli.main(["demo", "--epochs", "0", "--out", str(tmp_path / "bad")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "scalelab: error: train.epochs must be >= 1, got 0\n"
    assert not (tmp_path / "bad").exists()
    assert cli.main(["demo", "--out", str(tmp_path / "bad"), "train.epochs=5"]) == 2  # won
    assert "give the epochs as --epochs N, not train.epochs=N" in capsys.readouterr().err
    # --out a run folder (or a demo folder that holds its runs) too, before any run or line
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    (tmp_path / "demo" / "ag_news_small-ws1").mkdir(parents=True)
    (tmp_path / "demo" / "ag_news_small-ws1" / "metrics.csv").write_text("epoch\n")
    for folder, why in (("run", "run is a run folder"), ("demo", "ws1 already holds a run")):
        envs.clear()
        assert cli.main(["demo", "--out", str(tmp_path / folder)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("scalelab: error: ") and err.count("\n") == 1
        assert why in err and envs == []

    envs.clear()
    run_sweep(SMALL, [1, 2], [], out_dir=tmp_path / "sweep", threads_per_rank=1)
    assert len(envs) == 2 and all("CUDA_VISIBLE_DEVICES" not in env for env in envs)


_TRAPS = (
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(100 + s)); "
    "signal.signal(signal.SIGUSR1, lambda s, f: sys.exit(200 + s)); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.mark.parametrize(("torchrun", "child_gets"), [(True, "SIGTERM"), (False, "SIGUSR1")])
def test_sigusr1_reaches_a_torchrun_child_as_sigterm(torchrun: bool, child_gets: str) -> None:
    # torchrun handles SIGTERM (and forwards it to its ranks); SIGUSR1 would kill torchrun and
    # orphan its ranks, so a sweep passes SIGUSR1 to a torchrun child as SIGTERM
    import os
    import signal
    import threading

    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        code, forwarded = local._run_child([sys.executable, "-c", _TRAPS], dict(os.environ),
                                           torchrun=torchrun)  # fmt: skip
    finally:
        timer.cancel()
    assert forwarded == "SIGUSR1"
    base = 100 if child_gets == "SIGTERM" else 200
    assert code == base + getattr(signal, child_gets)


def test_the_sweeps_commbench_is_a_torchrun_child_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its SIGUSR1 goes to torchrun as SIGTERM, as the runs' does (it killed torchrun, and the
    ranks ran on as orphans)."""
    seen: list[dict] = []
    monkeypatch.setattr(
        local, "_run_child", lambda argv, env, **kw: (seen.append(kw), (0, None))[1]
    )
    local.run_commbench(2, "/nonexistent/cb")
    local.run_commbench(1, "/nonexistent/cb")
    assert seen == [{"torchrun": True}, {"torchrun": False}]


def test_sweep_children_get_time_to_checkpoint_before_torchrun_kills_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    assert local._child_env(1, False)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120"  # torch: 30
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "600")  # the user's own value stays
    assert local._child_env(1, False)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "600"


def test_more_ranks_than_gpus_is_refused_and_than_cores_noted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SweepError, match="world size 4 needs 4 GPUs, this machine has 2"):
        local._check_devices([1, 2, 4], cpu_only=False)
    local._check_devices([1, 2], cpu_only=False)
    monkeypatch.setattr(local, "available_cpus", lambda: 2)
    local._check_devices([1, 2, 4], cpu_only=True)  # the GPUs are hidden: CPU ranks
    out = capsys.readouterr().out
    assert "world size 4 x 1 thread(s) per rank = 4 threads on 2 available CPU(s)" in out
    assert "world size 2 " not in out


def test_stop_after_steps_in_a_sweep_is_refused_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # every run stopped early and exited 0; the report then failed on "not a complete run folder"
    calls: list[list[str]] = []
    monkeypatch.setattr(
        local, "_run_child", lambda argv, env, **kw: (calls.append(argv), (0, None))[1]
    )
    preset = tmp_path / "cut.yaml"
    preset.write_text("train:\n  stop_after_steps: 8\n")
    for argv in (
        ["--config", str(SMALL), "train.stop_after_steps=5"],
        ["--config", str(preset)],  # from the config file too
    ):
        code = sweep_main([*argv, "--world-sizes", "1,2", "--out", str(tmp_path / "s")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0].startswith("scalelab: error: train.stop_after_steps=")
        assert "would stop every run of the sweep early" in err[0]
    assert calls == [] and not (tmp_path / "s").exists()


def test_world_sizes_that_oversubscribe_the_cpus_are_warned_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    envs: list[dict[str, str]] = []
    monkeypatch.setattr(
        local, "_run_child", lambda argv, env, **kw: (envs.append(env), (0, None))[1]
    )
    monkeypatch.setattr(local, "available_cpus", lambda: 4)
    run_sweep(SMALL, [1, 2, 4], [], out_dir=tmp_path / "a", threads_per_rank=2)
    out = capsys.readouterr().out
    warnings = [ln for ln in out.splitlines() if ln.startswith("[sweep] warning:")]
    assert warnings == [
        "[sweep] warning: world size 4 x 2 thread(s) per rank = 8 threads on 4 available CPU(s): "
        "the ranks oversubscribe the CPUs, so its timings measure the OS scheduler more than DDP "
        "and its speedup means little (lower --threads-per-rank or the world size)"
    ]  # 1 x 2 and 2 x 2 fit in 4 CPUs
    assert [env["OMP_NUM_THREADS"] for env in envs] == ["2", "2", "2"]
    # a warning, not an error: every run still ran, before any of them started
    assert out.index("[sweep] warning:") < out.index("[sweep] world size 1")

    # train.num_threads wins over the sweep's OMP_NUM_THREADS in train: it is what is checked
    run_sweep(SMALL, [1, 2], ["train.num_threads=3"], out_dir=tmp_path / "b", threads_per_rank=None)
    out = capsys.readouterr().out
    assert "world size 2 x 3 thread(s) per rank = 6 threads on 4 available CPU(s)" in out
    assert "world size 1 x" not in out and "[sweep] world size 2 (3 thread(s)/rank)" in out

    # the default split never oversubscribes while there are at least as many CPUs as ranks
    run_sweep(SMALL, [1, 2, 4], [], out_dir=tmp_path / "c", threads_per_rank=None)
    assert "[sweep] warning:" not in capsys.readouterr().out


def test_ctrl_c_during_a_sweep_run_is_one_line_naming_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from scalelab.cli import main

    def interrupted_at_ws2(argv: list[str], env: dict[str, str], **kw: object) -> tuple[int, None]:
        if "--nproc_per_node=2" in argv:
            (tmp_path / "ag_news_small-ws2").mkdir()
            (tmp_path / "ag_news_small-ws2" / "checkpoint.pt").write_bytes(b"saved")
            raise KeyboardInterrupt
        return 0, None

    monkeypatch.setattr(local, "_run_child", interrupted_at_ws2)
    code = main(["sweep", "--config", str(SMALL), "--world-sizes", "1,2,4", "--out", str(tmp_path)])
    assert code == 130
    assert capsys.readouterr().err.splitlines() == [
        "scalelab: interrupted; the sweep stopped during the world-size-2 run; run the same "
        "command with train.resume=auto to continue"
    ]
    assert not (tmp_path / "ag_news_small-ws4").exists()


def test_ctrl_c_waits_for_the_child_and_stops_one_that_did_not_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGINT to the sweep alone (not the terminal's process group): the child would train on
    # after the sweep had said it stopped; it gets SIGTERM (checkpoint and stop) after a grace
    import os
    import signal
    import threading

    monkeypatch.setattr(local, "_INTERRUPT_GRACE_S", 0.5, raising=False)
    marker = tmp_path / "stopped"
    child = (
        "import pathlib, signal, sys, time; "
        f"signal.signal(signal.SIGTERM, lambda s, f: (pathlib.Path({str(marker)!r}).write_text("
        "'TERM'), sys.exit(143))); time.sleep(60)"
    )
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            local._run_child([sys.executable, "-c", child], dict(os.environ))
    finally:
        timer.cancel()
    assert marker.read_text() == "TERM"  # the child had ended when _run_child returned


@pytest.mark.parametrize("stopped_in", ["ws2", "commbench"])
def test_a_demo_stopped_by_a_signal_exits_128_plus_it_with_one_line(
    stopped_in: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Like `scalelab sweep` and `scalelab train`: a scheduler tells a preemption (143) from a
    user error (2), whether the signal came during a run or the all-reduce measurement."""
    from scalelab import cli
    from scalelab.analysis import report

    def child(argv: list[str], env: dict[str, str], **kw: object) -> tuple[int, str | None]:
        here = "commbench" in argv if stopped_in == "commbench" else "--nproc_per_node=2" in argv
        return (143, "SIGTERM") if here else (0, None)

    monkeypatch.setattr(local, "_run_child", child)
    written = []
    monkeypatch.setattr(report, "write_report", lambda *a, **k: written.append(a))
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 143
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("scalelab: error: sweep stopped by SIGTERM during the ")
    assert ("all-reduce measurement" in line) == (stopped_in == "commbench")
    assert "train.resume=auto" in line and not written  # no report of a part-done study
