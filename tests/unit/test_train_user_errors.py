"""`scalelab train` user errors found after data preparation: one line, status 2, nothing written."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from scalelab.cli import main

_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_global_batch_larger_than_the_training_set_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    argv = ["train", "data.max_train_samples=8", "data.max_test_samples=8", "train.batch_size=16",
            "model.vocab_size=500", "model.d_model=16", "model.num_layers=1", "model.num_heads=2",
            "model.d_ff=16", "model.max_seq_len=32", "train.num_threads=1",
            f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("scalelab: error: train.batch_size=16"), lines[0]
    assert "8 examples" in lines[0] and "raise data.max_train_samples, or 0" in lines[0]
    assert not (tmp_path / "exp").exists()


def _saved(step: int, **train: object) -> dict:
    from scalelab.config import load_config

    cfg = load_config(None, [f"train.{k}={v}" for k, v in train.items()])
    return {"step_in_epoch": step, "config": cfg.to_dict()}


def test_mid_epoch_resume_with_other_batching_is_refused_not_a_traceback() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config

    now = load_config(None, ["train.batch_size=64"])
    ckpt = Path("run/checkpoint.pt")
    # the sampler would have raised ValueError (start step 10 outside 0..4) with a traceback
    with pytest.raises(CheckpointError, match="train.batch_size=16, resumed with 64"):
        check_resume_config(_saved(10, batch_size=16), now, ckpt, epoch_steps=4)
    with pytest.raises(CheckpointError, match="train.seed=1"):
        check_resume_config(_saved(2, batch_size=64, seed=1), now, ckpt, epoch_steps=4)
    with pytest.raises(CheckpointError, match="only 4 steps"):
        check_resume_config(_saved(10, batch_size=64), now, ckpt, epoch_steps=4)
    # fine: same batching mid-epoch (accumulation may not change: the test below)
    check_resume_config(_saved(3, batch_size=64), now, ckpt, epoch_steps=4)
    # at an epoch boundary too: the new batch re-sized the schedule under the restored step
    # (a larger one trained the remaining epochs at learning rate 0)
    with pytest.raises(CheckpointError, match="train.batch_size=16, resumed with 64"):
        check_resume_config(_saved(0, batch_size=16), now, ckpt, epoch_steps=4)


def test_resume_with_another_lr_or_weight_decay_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config

    # the optimizer and scheduler state bring the saved values back: config.yaml would lie
    now = load_config(None, ["train.lr=0.01"])
    ckpt = Path("run/checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"train\.lr=0\.0005, resumed with 0\.01"):
        check_resume_config(_saved(0, lr=0.0005), now, ckpt, epoch_steps=4)
    now = load_config(None, ["train.lr=0.01", "train.weight_decay=0.5"])
    with pytest.raises(CheckpointError, match=r"train\.weight_decay=0\.01, resumed with 0\.5"):
        check_resume_config(_saved(0, lr=0.01, weight_decay=0.01), now, ckpt, epoch_steps=4)
    check_resume_config(_saved(2, lr=0.01, weight_decay=0.5, epochs=9), now, ckpt, 4)


def test_resume_with_another_model_shape_or_powersgd_rank_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config

    ckpt = Path("run/checkpoint.pt")
    saved = {"step_in_epoch": 0, "config": load_config(None, []).to_dict()}
    # num_heads keeps every tensor's shape: the weights would load and compute another function
    with pytest.raises(CheckpointError, match=r"model\.num_heads=4, resumed with 8"):
        check_resume_config(saved, load_config(None, ["model.num_heads=8"]), ckpt, 4)
    psgd = ["distributed.comm_hook=powersgd"]
    saved = {"step_in_epoch": 0, "config": load_config(None, psgd).to_dict()}
    with pytest.raises(CheckpointError, match=r"powersgd_rank=4, resumed with 2"):
        check_resume_config(
            saved, load_config(None, [*psgd, "distributed.powersgd_rank=2"]), ckpt, 4
        )
    # without PowerSGD the rank is not used
    saved = {"step_in_epoch": 0, "config": load_config(None, []).to_dict()}
    check_resume_config(saved, load_config(None, ["distributed.powersgd_rank=2"]), ckpt, 4)


def test_resume_with_another_lr_schedule_warmup_or_dropout_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config

    ckpt = Path("run/checkpoint.pt")
    saved = {"step_in_epoch": 0, "config": load_config(None, []).to_dict()}
    # the scheduler's function and the dropout come from the config, not the checkpoint: the
    # later epochs would train with the new value while config.yaml claims it for all of them
    for override, says in (
        ("train.lr_schedule=linear", r"train\.lr_schedule=cosine, resumed with linear"),
        ("train.warmup_ratio=0.2", r"train\.warmup_ratio=0\.1, resumed with 0\.2"),
        ("model.dropout=0.3", r"model\.dropout=0\.1, resumed with 0\.3"),
        # the schedule's length, clipping, and the batches of the epochs to come
        ("train.max_steps_per_epoch=8", r"train\.max_steps_per_epoch=0, resumed with 8"),
        ("train.max_grad_norm=5", r"train\.max_grad_norm=1\.0, resumed with 5"),
        ("train.seed=7", r"train\.seed=42, resumed with 7"),
        # the arithmetic of the steps to come (a bf16 run resumed in fp32 was recorded as fp32)
        ("train.precision=bf16", r"train\.precision=fp32, resumed with bf16"),
    ):
        with pytest.raises(CheckpointError, match=says + ".*resume with the saved value"):
            check_resume_config(saved, load_config(None, [override]), ckpt, 4)
    check_resume_config(saved, load_config(None, ["train.epochs=9"]), ckpt, 4)  # trains further
    # an older checkpoint's config without a section or key: nothing to compare
    check_resume_config({"step_in_epoch": 0, "config": {"train": {}}}, load_config(None, []),
                         ckpt, 4)  # fmt: skip


def test_resume_with_other_micro_batches_or_gradient_compression_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config, timed_changes

    ckpt = Path("run/checkpoint.pt")
    saved = {"step_in_epoch": 0, "config": load_config(None, []).to_dict()}
    # the arithmetic of the steps to come: other micro-batches draw other dropout masks, a hook
    # compresses the gradients (config.yaml recorded the new value for the whole run)
    for override, says in (
        ("train.grad_accum_steps=2", r"train\.grad_accum_steps=1, resumed with 2"),
        ("distributed.comm_hook=fp16", r"distributed\.comm_hook=none, resumed with fp16"),
    ):
        with pytest.raises(CheckpointError, match=says + ".*resume with the saved value"):
            check_resume_config(saved, load_config(None, [override]), ckpt, 4)
    # how the steps run may change; each change is listed (the log, summary.json)
    now = load_config(None, ["train.compile=true", "distributed.grad_sync=buckets",
                             "data.delay_per_batch_s=0.5", "distributed.timeout_s=60"])  # fmt: skip
    check_resume_config(saved, now, ckpt, 4)
    assert timed_changes(saved, now) == [
        {"key": "train.compile", "before": False, "after": True},
        {"key": "data.delay_per_batch_s", "before": 0.0, "after": 0.5},
        {"key": "distributed.grad_sync", "before": "auto", "after": "buckets"},
    ]
    assert timed_changes(saved, load_config(None, ["train.log_every_steps=5"])) == []
    assert timed_changes({"config": {"train": {}}}, now) == []  # an older checkpoint's config


def test_a_resume_that_changes_how_steps_run_says_so_and_the_summary_keeps_it(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny("r", "train.epochs=1", "train.embedding_grad=dense")) == 0
    capsys.readouterr()
    assert main(tiny("r", "train.epochs=2", "train.resume=auto", "train.embedding_grad=rows")) == 0
    assert "note: train.embedding_grad dense -> rows from epoch 2, step 0: the steps before " \
        "were timed with dense" in capsys.readouterr().out  # fmt: skip
    change = {"epoch": 2, "step": 0, "key": "train.embedding_grad", "before": "dense",
              "after": "rows"}  # fmt: skip
    summary = json.loads((tmp_path / "exp" / "r" / "summary.json").read_text())
    assert summary["config_changes"] == [change]
    # a later resume keeps the earlier change (the checkpoint carries it)
    assert main(tiny("r", "train.epochs=3", "train.resume=auto", "train.embedding_grad=rows",
                     "data.pad_multiple=8")) == 0  # fmt: skip
    summary = json.loads((tmp_path / "exp" / "r" / "summary.json").read_text())
    assert summary["config_changes"] == [
        change,
        {"epoch": 3, "step": 0, "key": "data.pad_multiple", "before": 1, "after": 8},
    ]
    # a run resumed unchanged has none, nor one whose settings only read otherwise: 'auto'
    # chose rows here (one CPU process), compile_mode does nothing without compile, nor
    # pad_multiple where every batch is padded to max_seq_len
    assert main(tiny("u", "train.epochs=1", "data.pad_to_max_len=true")) == 0
    assert main(tiny("u", "train.epochs=2", "train.resume=auto", "train.embedding_grad=rows",
                     "train.compile_mode=max-autotune", "data.pad_to_max_len=true",
                     "data.pad_multiple=8")) == 0  # fmt: skip
    summary = json.loads((tmp_path / "exp" / "u" / "summary.json").read_text())
    assert summary["config_changes"] == []


def test_a_fresh_run_whose_folder_another_run_made_meanwhile_is_refused(
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scalelab import train

    run = tmp_path / "exp" / "r"
    load_data = train._load_data

    def another_run_finishes_meanwhile(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        out = load_data(*args, **kwargs)
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")  # the twin with the same run_name, done
        return out

    monkeypatch.setattr(train, "_load_data", another_run_finishes_meanwhile)
    assert main(tiny("r", "train.epochs=1")) == 2
    assert _error_line(capsys).endswith(
        f"output folder {run} came to hold another run while this one started (the same "
        "output.run_name); choose another output.run_name"
    )
    assert (run / "summary.json").read_text() == "{}" and not (run / "config.yaml").exists()


def test_stop_after_steps_without_checkpoints_is_refused() -> None:
    from scalelab.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.stop_after_steps needs train.save_checkpoint"):
        load_config(None, ["train.stop_after_steps=3", "train.save_checkpoint=false"]).validate()


def test_resume_auto_without_run_name_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # without output.run_name the run folder gets a new timestamp: there is never anything to
    # resume, and the run would silently start afresh
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    argv = ["train", "train.resume=auto", f"data.cache_dir={tmp_path / 'cache'}",
            f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("scalelab: error: train.resume=auto needs output.run_name"), lines
    assert not (tmp_path / "exp").exists() and not (tmp_path / "cache").exists()


def test_a_resumed_run_from_an_older_version_averages_only_the_rows_with_a_column() -> None:
    from scalelab.train import _mean_excluding_first

    # metrics rows restored from an older checkpoint lack forward_ms_max (a KeyError before)
    rows = [
        {"epoch_time_s": 9.0},
        {"epoch_time_s": 5.0},
        {"epoch_time_s": 7.0, "forward_ms_max": 3.0},
    ]
    assert _mean_excluding_first(rows, "epoch_time_s") == 6.0  # epoch 1 left out
    assert _mean_excluding_first(rows, "forward_ms_max") == 3.0
    assert math.isnan(_mean_excluding_first(rows[:2], "forward_ms_max"))  # none to average
    # a resumed last epoch that timed no step (nan): the first epoch's value, not nan
    rows = [{"data_ms": 2.0}, {"data_ms": math.nan}]
    assert _mean_excluding_first(rows, "data_ms") == 2.0


def test_resume_on_other_encoded_data_is_refused_at_any_step() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.resume import check_resume_config

    now, ckpt = load_config(None, []), Path("run/checkpoint.pt")
    saved = {**_saved(3), "data_key": "ag_news-aaaa.npz"}
    # other files, tokenizer or max_seq_len: mid-epoch they change the batches' order, and at
    # an epoch boundary too the saved embedding rows would stand for other tokens
    for step in (3, 0):
        with pytest.raises(
            CheckpointError,
            match="trained on other encoded data .*ag_news-aaaa.npz, now ag_news-bbbb",
        ):
            check_resume_config({**saved, "step_in_epoch": step}, now, ckpt, 4, "ag_news-bbbb.npz")
    check_resume_config(saved, now, ckpt, 4, "ag_news-aaaa.npz")
    check_resume_config(_saved(3), now, ckpt, 4, "ag_news-bbbb.npz")  # older checkpoint: no key


def test_ranks_that_disagree_about_resuming_all_stop_with_one_line() -> None:
    from scalelab.distributed import LaunchError
    from scalelab.resume import check_same_resume

    run = Path("/exp/r")
    check_same_resume([("a", "/exp/r/checkpoint.pt"), ("b", "/exp/r/checkpoint.pt")], run)
    check_same_resume([("a", ""), ("b", "")], run)
    # node b does not see node a's run folder: it would start afresh while rank 0 resumes
    views = [("a", "/exp/r/checkpoint.pt"), ("a", "/exp/r/checkpoint.pt"), ("b", "")]
    with pytest.raises(LaunchError, match=r"rank 2 \(b\) finds no checkpoint but rank 0 \(a\) "
                       r"resumes /exp/r/checkpoint.pt in /exp/r: output.dir must be a folder"):  # fmt: skip
        check_same_resume(views, run)


@pytest.mark.parametrize("which", ["output.dir", "run folder", "above output.dir"])
def test_output_dir_or_run_folder_that_is_a_file_is_one_line_before_any_work(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "exp"
    if which == "output.dir":
        out.write_text("keep me")
        blocker = out
    elif which == "above output.dir":  # was a traceback from mkdir, after the data and model
        out.write_text("keep me")
        blocker, out = out, out / "deeper" / "still"
    else:
        out.mkdir()
        blocker = out / "r"
        blocker.write_text("keep me")
    argv = ["train", "data.max_train_samples=8", "model.vocab_size=500",
            f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={out}", "output.run_name=r"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    says = "cannot be made" if which == "above output.dir" else "exists and is not a folder"
    assert len(lines) == 1 and says in lines[0], lines
    assert blocker.read_text() == "keep me"
    assert not (tmp_path / "cache").exists()  # refused before the data was prepared


def test_a_run_folder_that_is_a_broken_link_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # was "output.dir <exp>: exists and is not a folder", of a folder that is one
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "r").symlink_to(tmp_path / "nowhere")
    argv = ["train", f"output.dir={tmp_path / 'exp'}", "output.run_name=r",
            f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 2
    assert _error_line(capsys) == (
        f"scalelab: error: the run folder {tmp_path / 'exp' / 'r'}: is a broken symbolic link"
    )


def test_an_omp_num_threads_that_is_no_count_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # libgomp only warned, and the run took every core instead of the threads asked for
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    argv = ["train", f"output.dir={tmp_path / 'exp'}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(argv) == 2
    assert _error_line(capsys) == (
        "scalelab: error: OMP_NUM_THREADS='0' is not a whole number >= 1: set it to the threads "
        "per rank, or unset it (or set train.num_threads)"
    )
    assert not (tmp_path / "exp").exists()


def test_a_bad_omp_num_threads_is_refused_before_libgomp_complains(tmp_path: Path) -> None:
    # libgomp prints its own "Invalid value" line when torch loads: the check runs before that,
    # and the error path imports no torch either
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "scalelab", "train", f"output.dir={tmp_path / 'exp'}"],
        env={**env, "OMP_NUM_THREADS": "abc"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "scalelab: error: OMP_NUM_THREADS='abc' is not a whole number >= 1: set it to the threads "
        "per rank, or unset it (or set train.num_threads)"
    ]
    assert not (tmp_path / "exp").exists()


def test_a_folder_named_checkpoint_pt_is_named_as_such_at_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # was "it has no checkpoint.pt to continue from (train.save_checkpoint was off)"
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "exp" / "r" / "checkpoint.pt").mkdir(parents=True)
    argv = ["train", "data.max_train_samples=8", "model.vocab_size=500", "train.resume=auto",
            f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={tmp_path / 'exp'}",
            "output.run_name=r"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"scalelab: error: {tmp_path / 'exp' / 'r' / 'checkpoint.pt'}: is a folder, "
                     "not a checkpoint file"]  # fmt: skip


# ----------------------------------------------------------------------------- resuming, in process


@pytest.fixture
def tiny(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., list[str]]:
    """argv of a tiny CPU run (2 steps an epoch, about a second) in tmp_path/exp/<name>."""
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)

    def argv(name: str, *extra: str) -> list[str]:
        return ["train", "data.max_train_samples=64", "data.max_test_samples=16",
                "model.vocab_size=500", "model.d_model=16", "model.num_layers=1",
                "model.num_heads=2", "model.d_ff=16", "model.max_seq_len=32",
                "train.batch_size=16", "train.num_threads=1", "train.max_steps_per_epoch=2",
                "train.comm_calibration_steps=0", "output.progress=none",
                f"data.cache_dir={cache_dir}", f"output.dir={tmp_path / 'exp'}",
                f"output.run_name={name}", *extra]  # fmt: skip

    return argv


def test_a_run_that_diverges_says_so_once_and_its_checkpoint_is_not_resumed(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an lr of 1e30 takes the weights past float32's range in one step: NaN from then on.
    # Before, every epoch printed "loss nan" and nothing else, and a resume trained on NaN
    assert main(tiny("r", "train.epochs=2", "train.lr=1e30", "train.warmup_ratio=0")) == 0
    out = capsys.readouterr().out
    assert out.count("warning: epoch 1's loss is not finite: the run diverged") == 1, out
    assert "warning: epoch 2's" not in out
    assert main(tiny("r", "train.epochs=3", "train.lr=1e30", "train.warmup_ratio=0",
                     "train.resume=auto")) == 2  # fmt: skip
    assert "holds NaN or infinite weights" in _error_line(capsys)


def test_a_folder_with_only_a_summary_is_not_overwritten(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a summary.json copied (or left) alone in a run folder was replaced by a fresh run
    folder = tmp_path / "exp" / "r"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text('{"keep": "me"}')
    assert main(tiny("r")) == 2
    assert "already holds a run" in _error_line(capsys)
    assert (folder / "summary.json").read_text() == '{"keep": "me"}'


def test_a_finished_checkpoint_resumed_into_a_new_folder_is_refused(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it trained nothing and wrote a run folder without a checkpoint, which no
    # train.resume=auto could continue ("train.save_checkpoint was off", which it was not)
    assert main(tiny("done", "train.epochs=1")) == 0
    done = tmp_path / "exp" / "done" / "checkpoint.pt"
    capsys.readouterr()
    assert main(tiny("copy", f"train.resume={done}", "train.epochs=1")) == 2
    assert "its run finished all 1 epochs (train.epochs), so nothing would train" in (
        _error_line(capsys)
    )
    assert not (tmp_path / "exp" / "copy").exists()
    assert main(tiny("copy", f"train.resume={done}", "train.epochs=2")) == 0  # trains further
    assert (tmp_path / "exp" / "copy" / "checkpoint.pt").is_file()


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of stderr (asserting there is exactly one)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("scalelab: error: "), lines[0]
    return lines[0]


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _corrupt_model_key(ckpt: dict) -> None:
    del ckpt["model"]["head.bias"]


def _corrupt_model_shape(ckpt: dict) -> None:
    ckpt["model"]["blocks.0.ff1.weight"] = torch.zeros(3, 16)


@pytest.mark.parametrize(
    ("corrupt", "says"),
    [
        (
            lambda c: c.update(scheduler={}),
            "scheduler state does not load (missing key 'lr_lambdas')",
        ),
        (lambda c: c["scheduler"].update(last_epoch="x"), "last_epoch is 'x', expected a whole"),
        # the learning rate would resume at another point of its schedule
        (
            lambda c: c["scheduler"].update(last_epoch=c["global_step"] + 7),
            "scheduler state does not load (last_epoch is 10, expected the checkpoint's "
            "global_step (3)",
        ),
        (lambda c: c["scheduler"].update(base_lrs=[1.0]), "base_lrs is not a list of 2 learning"),
        (
            lambda c: c.update(scheduler=[0]),
            "checkpoint field scheduler is a list of 1, expected a dict",
        ),
        (lambda c: c.update(epoch="1"), "checkpoint field epoch is '1', expected a whole number"),
        (lambda c: c.update(global_step=-5), "checkpoint field global_step is -5"),
        (lambda c: c["config"].update(train="x"), "checkpoint field config.train is 'x'"),
        (lambda c: c.update(config_changes="x"), "checkpoint field config_changes is 'x'"),
        (
            lambda c: c.update(config_changes=[{"key": 3}]),
            "field config_changes[0] is a dict of key, expected",
        ),
        (
            lambda c: c.update(timed_settings={"a": [1]}),
            "field timed_settings is a dict of a, expec",
        ),
        (lambda c: c["metrics"][0].update(peak_mem_mb="big"), "field metrics[0].peak_mem_mb"),
        (lambda c: c.update(rng={}), "checkpoint field rng is an empty dict, expected a list"),
        (lambda c: c["rng"][0].update(python="x"), "its RNG state of rank 0 does not load"),
        (
            lambda c: c.update(optimizer=[]),
            "checkpoint field optimizer is a list of 0, expected a dict",
        ),
        # AdamW read these unchecked: a segfault in the fused step, a KeyError, a generator
        (
            lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
            "optimizer state (parameter 0 of group 0: 'exp_avg' has shape [3], the parameter",
        ),
        (
            lambda c: c["optimizer"]["state"][0].pop("exp_avg_sq"),
            "optimizer state (parameter 0 of group 0 has no 'exp_avg_sq')",
        ),
        (
            lambda c: c["optimizer"]["state"][0].update(exp_avg=0.5),
            "optimizer state (parameter 0 of group 0: 'exp_avg' is not a tensor)",
        ),
        (
            lambda c: c["optimizer"]["state"][0].update(step="x"),
            "optimizer state (parameter 0: 'step' is str)",
        ),
        (
            lambda c: c["optimizer"]["state"][0].update(step=torch.tensor(-1.0)),
            "optimizer state (parameter 0 of group 0: 'step' is not a count >= 0)",
        ),
        # tracebacks in AdamW's fused step / its init, or training on to NaN
        (
            lambda c: c["optimizer"]["param_groups"][0].update(lr="abc"),
            "optimizer state (group 0: 'lr' is 'abc', expected a rate >= 0)",
        ),
        (
            lambda c: c["optimizer"]["param_groups"][1].update(lr=float("nan")),
            "optimizer state (group 1: 'lr' is nan, expected a rate >= 0)",
        ),
        (
            lambda c: c["optimizer"]["param_groups"][0].update(amsgrad=True),
            "optimizer state (group 0: 'amsgrad' is True, this run's optimizer False)",
        ),
        (
            lambda c: c["optimizer"]["param_groups"][0].update(betas=(1.5, 0.999)),
            "optimizer state (group 0: 'betas' is (1.5, 0.999), this run's optimizer (0.9, 0.999))",
        ),
        (
            lambda c: c["optimizer"]["state"][1]["exp_avg"].fill_(float("nan")),
            "optimizer state (parameter 1 of group 0: 'exp_avg' holds NaN or infinite values)",
        ),
        (
            lambda c: c["optimizer"]["state"][1]["exp_avg_sq"].fill_(-1.0),
            "optimizer state (parameter 1 of group 0: 'exp_avg_sq' has negative values)",
        ),
        (
            lambda c: c["model"].update({"head.bias": c["model"]["head.bias"].long()}),
            "model weights (head.bias is torch.int64, the model's torch.float32)",
        ),
        (
            lambda c: c["model"].update({"head.bias": torch.empty(4, device="meta")}),
            "checkpoint field model.head.bias is a meta tensor (no data)",
        ),
        (lambda c: c.update(epoch_loss_sums=[-100.0]), "field epoch_loss_sums[0] is -100.0"),
        (
            lambda c: c.update(epoch_phases=[{"data_ms": "x"}]),
            "checkpoint field epoch_phases[0].data_ms is 'x', expected a number >= 0",
        ),
        (lambda c: c.update(epoch_elapsed_s=float("inf")), "field epoch_elapsed_s is inf"),
        # a ValueError from csv.DictWriter; a TypeError writing summary.json after training
        (lambda c: c["metrics"][0].update(bogus=1.0), "metrics[0] has columns metrics.csv does"),
        # the resume would rewrite metrics.csv without epoch 1's row (was a TypeError)
        (lambda c: c.update(metrics=None), "field metrics is None, expected a list of 1 per-epoch"),
        (
            lambda c: c.update(profile={"x": torch.zeros(2)}),
            "field profile is a dict of x, expected",
        ),
        (_corrupt_model_key, 'model weights (Missing key(s) in state_dict: "head.bias")'),
        (_corrupt_model_shape, "model weights (size mismatch for blocks.0.ff1.weight: copying"),
    ],
)
def test_a_malformed_checkpoint_is_one_line_at_resume_and_changes_nothing(
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    corrupt: Callable[[dict], None],
    says: str,
) -> None:
    # a run stopped in its second epoch: a checkpoint and one metrics.csv row
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0
    run = tmp_path / "exp" / "r"
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    corrupt(saved)
    torch.save(saved, run / "checkpoint.pt")
    before = _files(run)
    capsys.readouterr()
    # each was a traceback (some only after config.yaml was rewritten or an epoch trained), or
    # for the weights a line naming no key ("Error(s) in loading state_dict for ...:")
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
    line = _error_line(capsys)
    assert line.startswith(f"scalelab: error: {run / 'checkpoint.pt'}: ") and says in line, line
    assert len(line) < 400, line
    assert _files(run) == before


@pytest.mark.parametrize("field", ["epoch_loss_sums", "epoch_tokens", "epoch_phases"])
def test_a_checkpoint_field_left_none_reads_as_not_recorded(
    field: str, tiny: Callable[..., list[str]], tmp_path: Path
) -> None:
    """None where a version that did not record the field would leave it out (was a TypeError:
    'NoneType' object is not subscriptable)."""
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0
    run = tmp_path / "exp" / "r"
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    saved[field] = None
    torch.save(saved, run / "checkpoint.pt")
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    assert json.loads((run / "summary.json").read_text())["num_epochs"] == 2


def test_a_metrics_row_of_an_older_version_lacking_a_column_still_summarises(
    tiny: Callable[..., list[str]], tmp_path: Path
) -> None:
    """A column added since (peak_mem_mb here) is missing from the rows before: summary.json was
    a KeyError after the whole epoch had trained."""
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0
    run = tmp_path / "exp" / "r"
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    del saved["metrics"][0]["peak_mem_mb"]
    torch.save(saved, run / "checkpoint.pt")
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_epochs"] == 2 and summary["peak_mem_mb"] > 0


def test_resume_with_another_schedule_warmup_or_dropout_is_refused_and_keeps_config_yaml(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0
    run = tmp_path / "exp" / "r"
    before = _files(run)
    # none is restored from the checkpoint: the rest of the run would train with the new value
    # while the rewritten config.yaml claimed it for the epochs before too
    for override, says in (
        ("train.lr_schedule=linear", "trained with train.lr_schedule=cosine, resumed with linear"),
        ("train.warmup_ratio=0.3", "trained with train.warmup_ratio=0.1, resumed with 0.3"),
        ("model.dropout=0.0", "trained with model.dropout=0.1, resumed with 0.0"),
        # the config's line, not the weights' size mismatch (it was checked after loading)
        ("model.vocab_size=400", "its weights are of a model with model.vocab_size=500"),
    ):
        capsys.readouterr()
        assert main(tiny("r", "train.epochs=2", "train.resume=auto", override)) == 2, override
        assert says in _error_line(capsys)
        assert _files(run) == before
    # train.epochs may change: that is how a run trains further
    assert main(tiny("r", "train.epochs=3", "train.resume=auto")) == 0
    assert [r["epoch"] for r in _rows(run)] == ["1", "2", "3"]


def test_a_checkpoint_older_than_metrics_csv_never_retrains_the_recorded_epochs(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "exp" / "r"
    # stopped in epoch 2 (checkpoint after 1 epoch), then finished without checkpoints: the
    # checkpoint stays the mid-run one while metrics.csv and summary.json record both epochs
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0
    assert (
        main(tiny("r", "train.epochs=2", "train.resume=auto", "train.save_checkpoint=false")) == 0
    )
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert len(_rows(run)) == 2 and (run / "summary.json").is_file()
    before = _files(run)
    capsys.readouterr()
    # finished: nothing to do, although the checkpoint is older (it used to train epoch 2 again
    # from the old weights and overwrite metrics.csv and summary.json)
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    out = capsys.readouterr().out
    assert "already finished its 2 epochs; nothing to do" in out and "cannot train further" in out
    assert _files(run) == before
    # further: the checkpoint cannot continue the run metrics.csv records
    assert main(tiny("r", "train.epochs=3", "train.resume=auto")) == 2
    line = _error_line(capsys)
    assert "checkpoint.pt: the checkpoint is older than the run's metrics.csv" in line, line
    assert "saved after 1 epoch, metrics.csv records 2" in line, line
    assert _files(run) == before


def test_resume_decisions_against_the_run_folder() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.resume import resume_is_finished

    ck, run = Path("r/checkpoint.pt"), Path("r")
    # (checkpoint's epochs, metrics.csv rows, summary.json, train.epochs)
    assert resume_is_finished(1, 1, False, 2, ck, run) is None  # stopped in or after epoch 1
    assert resume_is_finished(0, 0, False, 2, ck, run) is None  # stopped in epoch 1
    assert resume_is_finished(2, 2, True, 4, ck, run) is None  # a finished run trains further
    assert resume_is_finished(2, 1, False, 2, ck, run) is None  # metrics.csv a row behind
    assert "nothing to do" in resume_is_finished(2, 2, True, 2, ck, run)
    assert "nothing to do" in resume_is_finished(2, 2, True, 1, ck, run)
    assert "nothing to do" in resume_is_finished(1, 2, True, 2, ck, run)
    for saved, rows, summary, epochs in ((1, 2, True, 3), (1, 2, False, 2), (0, 1, False, 3)):
        with pytest.raises(CheckpointError, match="older than the run's metrics.csv"):
            resume_is_finished(saved, rows, summary, epochs, ck, run)
    # stopped on the last step: the resume only writes the summary
    assert resume_is_finished(2, 2, False, 2, ck, run) is None
    # trained further (summary moved aside), then resumed with the old train.epochs
    with pytest.raises(CheckpointError, match="saved 5 steps into epoch 3, beyond train.epochs=2"):
        resume_is_finished(2, 2, False, 2, ck, run, step_in_epoch=5)
    with pytest.raises(CheckpointError, match="after 3 epochs, beyond .* train.epochs=3 or more"):
        resume_is_finished(3, 3, False, 2, ck, run)


def test_training_past_a_finished_summary_moves_it_aside_until_the_run_finishes_again(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scalelab.analysis.collect import AnalysisError, load_run, load_runs

    run = tmp_path / "exp" / "r"
    assert main(tiny("r", "train.epochs=2")) == 0
    old_summary = (run / "summary.json").read_bytes()
    capsys.readouterr()
    # trains on to 4 epochs and stops in epoch 3: the 2-epoch summary no longer describes the
    # folder (its checkpoint is further on), so report must not take it for a finished run
    assert main(tiny("r", "train.epochs=4", "train.resume=auto", "train.stop_after_steps=1")) == 0
    assert "summary.json aside to summary.prev.json" in capsys.readouterr().out
    assert not (run / "summary.json").exists()
    assert (run / "summary.prev.json").read_bytes() == old_summary
    with pytest.raises(AnalysisError, match="not a complete run folder, missing summary.json"):
        load_run(run)
    with (
        pytest.warns(UserWarning, match="skipping .*missing summary.json"),
        pytest.raises(AnalysisError, match="no run folders found"),
    ):
        load_runs([tmp_path / "exp"])
    # back to train.epochs=2: the checkpoint is part-way into epoch 3, not a 2-epoch run's
    # weights (a 2-epoch summary used to be written from them)
    before = _files(run)
    capsys.readouterr()
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
    captured = capsys.readouterr()
    assert "re-plans" not in captured.out  # refused: no note of a schedule it never follows
    (line,) = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert "steps into epoch 3, beyond train.epochs=2" in line and "train.epochs=3 or more" in line
    assert _files(run) == before
    # finished: its own summary, of all 4 epochs; the earlier one stays beside it
    assert main(tiny("r", "train.epochs=4", "train.resume=auto")) == 0
    assert json.loads((run / "summary.json").read_text())["num_epochs"] == 4
    assert load_run(run).summary["num_epochs"] == len(load_run(run).metrics) == 4
    assert (run / "summary.prev.json").read_bytes() == old_summary


def test_a_failed_end_of_epoch_checkpoint_leaves_metrics_csv_behind_and_the_run_resumable(
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import scalelab.train as train

    real_save = train.save_checkpoint

    def full_disk_at_epoch_2(path: Path, state: dict) -> None:
        if state["epoch"] == 2:
            raise train.CheckpointError(f"{path}: cannot write the checkpoint (disk full)")
        real_save(path, state)

    monkeypatch.setattr(train, "save_checkpoint", full_disk_at_epoch_2)
    run = tmp_path / "exp" / "r"
    assert main(tiny("r", "train.epochs=2")) == 2
    # the checkpoint comes first: metrics.csv did not get a row the checkpoint lacks (which
    # would make the checkpoint older than metrics.csv, and the run impossible to resume)
    assert [r["epoch"] for r in _rows(run)] == ["1"]
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"]
    assert json.loads((run / "summary.json").read_text())["num_epochs"] == 2


def test_a_crash_before_the_last_metrics_row_is_written_is_repaired_on_resume(
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import scalelab.train as train

    real_write = train._write_metrics

    def crash_at_row_2(path: Path, rows: list) -> None:
        if len(rows) == 2:
            raise RuntimeError("killed")
        real_write(path, rows)

    monkeypatch.setattr(train, "_write_metrics", crash_at_row_2)
    run = tmp_path / "exp" / "r"
    assert main(tiny("r", "train.epochs=2")) == 1  # a crash, not a user error
    monkeypatch.setattr(train, "_write_metrics", real_write)
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 2 and len(_rows(run)) == 1  # epoch 2 is in the checkpoint
    capsys.readouterr()
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    out = capsys.readouterr().out
    assert "at epoch 3, step 0" in out and "epoch 2/2:" not in out  # not trained again
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["val_loss"]) == pytest.approx(saved["metrics"][1]["val_loss"], rel=1e-5)
    assert json.loads((run / "summary.json").read_text())["num_epochs"] == 2


def test_a_replanned_schedule_sets_the_next_steps_learning_rate() -> None:
    # a finished 20-step cosine run trained on to 30 steps: the first step after the resume ran
    # at the old plan's last learning rate (0), not the new plan's
    import torch

    from scalelab.config import load_config
    from scalelab.train import _make_scheduler, _replan_lr

    cfg = load_config(None, ["train.lr=0.1", "train.warmup_ratio=0.1", "train.lr_schedule=cosine"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    old = _make_scheduler(opt, cfg, 20)
    for _ in range(20):
        opt.step()
        old.step()
    saved_opt, saved_sched = opt.state_dict(), old.state_dict()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    new = _make_scheduler(opt2, cfg, 30)
    opt2.load_state_dict(saved_opt)
    new.load_state_dict(saved_sched)
    _replan_lr(opt2, new)
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = _make_scheduler(fresh, cfg, 30)
    for _ in range(20):
        fresh.step()
        ref.step()
    assert fresh.param_groups[0]["lr"] > 0.01
    assert opt2.param_groups[0]["lr"] == pytest.approx(fresh.param_groups[0]["lr"])
    assert new.get_last_lr() == pytest.approx(ref.get_last_lr())
    for _ in range(3):  # and on from there as the new plan
        opt2.step(), new.step(), fresh.step(), ref.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(fresh.param_groups[0]["lr"])


def test_a_resume_with_more_epochs_replans_a_constant_schedules_warm_up(
    tiny: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up is a share of all steps, so more epochs lengthen it even on a constant
    schedule: the first resumed step runs at the new plan's rate, not the old plan's 1.0 x lr."""
    import torch

    import scalelab.train as train
    from scalelab.config import load_config

    used: list[float] = []
    real = train._make_scheduler

    def recording(opt: torch.optim.Optimizer, cfg, total_steps: int):
        opt.register_step_pre_hook(lambda o, *_: used.append(o.param_groups[0]["lr"]))
        return real(opt, cfg, total_steps)

    monkeypatch.setattr(train, "_make_scheduler", recording)
    plan = ["train.lr_schedule=constant", "train.warmup_ratio=0.5", "train.lr=0.01"]
    assert main(tiny("r", "train.epochs=1", *plan)) == 0  # 2 steps, warm-up 1
    used.clear()
    assert main(tiny("r", "train.epochs=4", "train.resume=auto", *plan)) == 0  # 8, warm-up 4
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ref = real(ref_opt, load_config(None, plan), 8)
    expected = []
    for _ in range(8):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert used == pytest.approx(expected[2:]), (used, expected)
    assert used[0] < 0.01  # still warming up


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda text: text.rstrip("\n")[:-30] + "\n", "cells, the header"),  # cut off mid-row
        (lambda text: text + "garbage,,,\n", "line 3 has 4 cells"),
        (lambda text: text + text.splitlines()[1] + "\n", "line 3 is epoch '1', expected 2"),
    ],
)
def test_a_damaged_metrics_csv_stops_a_resume_with_one_line(
    damage: Callable[[str], str],
    says: str,
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its rows were counted as epochs: a cut-off row trained on and left the file broken, an
    extra one made a 1-epoch run 'already finished'."""
    assert main(tiny("r", "train.epochs=2", "train.stop_after_steps=3")) == 0  # 1 epoch + 1 step
    run = tmp_path / "exp" / "r"
    (run / "metrics.csv").write_text(damage((run / "metrics.csv").read_text()))
    before = _files(run)
    capsys.readouterr()
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
    line = _error_line(capsys)
    assert "metrics.csv: not the run's own epoch rows" in line and says in line, line
    assert _files(run) == before


def test_fp16_on_a_cpu_is_one_line_naming_what_runs_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["train", "train.precision=fp16", "data.max_train_samples=8", "data.max_test_samples=8",
            "train.batch_size=8", f"data.cache_dir={tmp_path / 'cache'}",
            f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        "scalelab: error: train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU\n"
    )
    assert not (tmp_path / "exp").exists()


def test_a_home_relative_output_dir_is_the_home_folder(
    tiny: Callable[..., list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """output.dir=~/exp writes under $HOME, as the data paths read from it (was: ./~/exp)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(tiny("r", "train.epochs=1", "output.dir=~/exp")) == 0
    assert (tmp_path / "home" / "exp" / "r" / "summary.json").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("file", ["config.yaml", "metrics.csv", "summary.json"])
def test_a_full_disk_at_any_run_file_is_one_line_and_keeps_the_old_file(
    file: str,
    tiny: Callable[..., list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only the checkpoint's write was caught: config.yaml, metrics.csv and summary.json on a
    full disk were a traceback (OSError: [Errno 28])."""
    import errno

    import scalelab.checkpoint as ckpt

    run = tmp_path / "exp" / "r"
    assert main(tiny("r", "train.epochs=1")) == 0
    before = (run / file).read_bytes()
    real = ckpt.atomic_write_text

    def full(path: Path, text: str) -> None:
        if path.name == file:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(ckpt, "atomic_write_text", full)
    capsys.readouterr()
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scalelab: error: "), err
    assert f"{run / file}: cannot write it ([Errno 28] No space left on device)" in err[0]
    assert "GB free there" in err[0] and "unchanged" in err[0]
    if file != "summary.json":  # (a run trained on moves its summary aside first: kept whole)
        assert (run / file).read_bytes() == before


def test_a_second_run_into_a_folder_another_run_trains_into_is_refused(
    tiny: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fcntl

    from scalelab.checkpoint import LOCK_NAME, lock_run_folder

    assert main(tiny("r", "train.epochs=1")) == 0
    run = tmp_path / "exp" / "r"
    before = {k: v for k, v in _files(run).items() if k != LOCK_NAME}
    # another process trains into the folder (a job resubmitted while the first still runs):
    # the resume would have continued from its checkpoint and interleaved both runs' files
    with (run / LOCK_NAME).open("a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.truncate(0)
        other.write("pid 4242 on node7\n")
        other.flush()
        assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
        assert _error_line(capsys).endswith(
            f"run folder {run} is in use by another run (pid 4242 on node7): wait until it "
            "stops, or choose another output.run_name"
        )
        assert {k: v for k, v in _files(run).items() if k != LOCK_NAME} == before
        # locked before the resume reads the folder: a checkpoint the other run is writing
        # now is not this run's to judge (it said "unreadable", or "older than metrics.csv")
        (run / "checkpoint.pt").write_bytes(b"half a checkpoint")
        assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 2
        assert "is in use by another run (pid 4242 on node7)" in _error_line(capsys)
        (run / "checkpoint.pt").write_bytes(before["checkpoint.pt"])
        # a fresh folder of the same name as well (two jobs started at once)
        fresh = tmp_path / "exp" / "new"
        fresh.mkdir()
        with (fresh / LOCK_NAME).open("a+") as twin:
            fcntl.flock(twin, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert main(tiny("new", "train.epochs=1")) == 2
            assert "is in use by another run (a process that did not say)" in _error_line(capsys)
        assert sorted(p.name for p in fresh.iterdir()) == [LOCK_NAME]
    # the lock goes with its holder, however it ended: the resume now trains
    assert main(tiny("r", "train.epochs=2", "train.resume=auto")) == 0
    assert len(_rows(run)) == 2
    # and a finished run released its own: the folder locks again at once
    lock = lock_run_folder(run)
    assert lock is not None and f"pid {os.getpid()} on " in (run / LOCK_NAME).read_text()
    lock.close()
