"""`scalelab train` user errors found after data preparation: one line, status 2, nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

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
    assert "8 examples" in lines[0]
    assert not (tmp_path / "exp").exists()


def _saved(step: int, **train: object) -> dict:
    from scalelab.config import load_config

    cfg = load_config(None, [f"train.{k}={v}" for k, v in train.items()])
    return {"step_in_epoch": step, "config": cfg.to_dict()}


def test_mid_epoch_resume_with_other_batching_is_refused_not_a_traceback() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.train import _check_resume_config

    now = load_config(None, ["train.batch_size=64"])
    ckpt = Path("run/checkpoint.pt")
    # the sampler would have raised ValueError (start step 10 outside 0..4) with a traceback
    with pytest.raises(CheckpointError, match="train.batch_size=16, resumed with 64"):
        _check_resume_config(_saved(10, batch_size=16), now, ckpt, epoch_steps=4)
    with pytest.raises(CheckpointError, match="train.seed=1"):
        _check_resume_config(_saved(2, batch_size=64, seed=1), now, ckpt, epoch_steps=4)
    with pytest.raises(CheckpointError, match="only 4 steps"):
        _check_resume_config(_saved(10, batch_size=64), now, ckpt, epoch_steps=4)
    # fine: same batching mid-epoch; anything at an epoch boundary; accumulation may change
    _check_resume_config(_saved(3, batch_size=64, grad_accum_steps=2), now, ckpt, epoch_steps=4)
    _check_resume_config(_saved(0, batch_size=16), now, ckpt, epoch_steps=4)


def test_resume_with_another_lr_or_weight_decay_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.train import _check_resume_config

    # the optimizer and scheduler state bring the saved values back: config.yaml would lie
    now = load_config(None, ["train.lr=0.01"])
    ckpt = Path("run/checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"train\.lr=0\.0005, resumed with 0\.01"):
        _check_resume_config(_saved(0, lr=0.0005), now, ckpt, epoch_steps=4)
    now = load_config(None, ["train.lr=0.01", "train.weight_decay=0.5"])
    with pytest.raises(CheckpointError, match=r"train\.weight_decay=0\.01, resumed with 0\.5"):
        _check_resume_config(_saved(0, lr=0.01, weight_decay=0.01), now, ckpt, epoch_steps=4)
    _check_resume_config(_saved(2, lr=0.01, weight_decay=0.5, epochs=9), now, ckpt, 4)


def test_resume_with_another_model_shape_or_powersgd_rank_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.train import _check_resume_config

    ckpt = Path("run/checkpoint.pt")
    saved = {"step_in_epoch": 0, "config": load_config(None, []).to_dict()}
    # num_heads keeps every tensor's shape: the weights would load and compute another function
    with pytest.raises(CheckpointError, match=r"model\.num_heads=4, resumed with 8"):
        _check_resume_config(saved, load_config(None, ["model.num_heads=8"]), ckpt, 4)
    _check_resume_config(saved, load_config(None, ["model.dropout=0.3"]), ckpt, 4)  # allowed
    psgd = ["distributed.comm_hook=powersgd"]
    saved = {"step_in_epoch": 0, "config": load_config(None, psgd).to_dict()}
    with pytest.raises(CheckpointError, match=r"powersgd_rank=4, resumed with 2"):
        _check_resume_config(
            saved, load_config(None, [*psgd, "distributed.powersgd_rank=2"]), ckpt, 4
        )
    _check_resume_config(saved, load_config(None, ["distributed.powersgd_rank=2"]), ckpt, 4)


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


def test_mid_epoch_resume_on_other_encoded_data_is_refused() -> None:
    from scalelab.checkpoint import CheckpointError
    from scalelab.config import load_config
    from scalelab.train import _check_resume_config

    now, ckpt = load_config(None, []), Path("run/checkpoint.pt")
    saved = {**_saved(3), "data_key": "ag_news-aaaa.npz"}
    # other files, tokenizer or max_seq_len change the lengths and so the batches' order
    with pytest.raises(
        CheckpointError, match="other encoded data .*ag_news-aaaa.npz, now ag_news-bbbb"
    ):
        _check_resume_config(saved, now, ckpt, 4, "ag_news-bbbb.npz")
    _check_resume_config(saved, now, ckpt, 4, "ag_news-aaaa.npz")
    _check_resume_config({**saved, "step_in_epoch": 0}, now, ckpt, 4, "ag_news-bbbb.npz")
    _check_resume_config(_saved(3), now, ckpt, 4, "ag_news-bbbb.npz")  # older checkpoint: no key


def test_ranks_that_disagree_about_resuming_all_stop_with_one_line() -> None:
    from scalelab.distributed import LaunchError
    from scalelab.train import _check_same_resume

    run = Path("/exp/r")
    _check_same_resume([("a", "/exp/r/checkpoint.pt"), ("b", "/exp/r/checkpoint.pt")], run)
    _check_same_resume([("a", ""), ("b", "")], run)
    # node b does not see node a's run folder: it would start afresh while rank 0 resumes
    views = [("a", "/exp/r/checkpoint.pt"), ("a", "/exp/r/checkpoint.pt"), ("b", "")]
    with pytest.raises(LaunchError, match=r"rank 2 \(b\) finds no checkpoint but rank 0 \(a\) "
                       r"resumes /exp/r/checkpoint.pt in /exp/r: output.dir must be a folder"):  # fmt: skip
        _check_same_resume(views, run)


@pytest.mark.parametrize("which", ["output.dir", "run folder"])
def test_output_dir_or_run_folder_that_is_a_file_is_one_line_before_any_work(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in (*_DIST_VARS, "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "exp"
    if which == "output.dir":
        out.write_text("keep me")
        blocker = out
    else:
        out.mkdir()
        blocker = out / "r"
        blocker.write_text("keep me")
    argv = ["train", "data.max_train_samples=8", "model.vocab_size=500",
            f"data.cache_dir={tmp_path / 'cache'}", f"output.dir={out}", "output.run_name=r"]  # fmt: skip
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "is a file, not a folder" in lines[0], lines
    assert blocker.read_text() == "keep me"
    assert not (tmp_path / "cache").exists()  # refused before the data was prepared
