"""User errors through the real CLI process: exit 2, one stderr line naming the key or file, and
no run folder (nor a half-written data cache) left behind. Each fails before training: seconds."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_one_line_error, scalelab, subprocess_env, tiny_slow_run

TEST_SPLIT = "src/scalelab/data/bundled/ag_news_test.csv.gz"


def _files(train: Path) -> list[str]:
    return ["data.source=files", f"data.train_path={train}", f"data.test_path={TEST_SPLIT}"]


def _latin1(tmp: Path) -> Path:
    bad = tmp / "latin.csv"
    bad.write_bytes('"1","caf\xe9","d"\n'.encode("latin-1"))  # not UTF-8
    return bad


def _short_row(tmp: Path) -> Path:
    bad = tmp / "short.csv.gz"
    with gzip.open(bad, "wt", encoding="utf-8") as f:
        f.write('"1","Good title","good description"\n"3","title only"\n')
    return bad


CASES = {
    "wrong type": (lambda tmp: ["train.batch_size=abc"], "train.batch_size must be an integer"),
    "impossible value": (
        lambda tmp: ["model.num_heads=3"],
        "model.num_heads=3 must divide model.d_model=128",
    ),
    "missing data file": (lambda tmp: _files(Path("/nonexistent.csv")), "/nonexistent.csv"),
    "bad encoding": (lambda tmp: _files(_latin1(tmp)), "latin.csv"),
    "malformed row": (lambda tmp: _files(_short_row(tmp)), "short.csv.gz"),
    "resume=auto without run name": (
        lambda tmp: ["train.resume=auto"],
        "train.resume=auto needs output.run_name",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, case: str) -> None:
    make_args, fragment = CASES[case]
    exp, cache = tmp_path / "exp", tmp_path / "cache"
    res = scalelab(["train", *make_args(tmp_path), f"output.dir={exp}", f"data.cache_dir={cache}",
                    "data.max_train_samples=64", "data.max_test_samples=32"])  # fmt: skip
    assert_one_line_error(res, fragment)
    assert not exp.exists()  # no run folder, not even an empty one
    assert not cache.exists() or not any(cache.iterdir())  # no (partial) cache either
    if case == "malformed row":
        assert "line 2" in res.stderr  # the row, not just the file


def test_missing_pretrained_folder_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    pytest.importorskip("transformers")
    exp = tmp_path / "exp"
    res = scalelab(["train", "model.arch=distilbert", f"model.pretrained={tmp_path / 'nope'}",
                    "model.vocab_size=500", "model.max_seq_len=32", "data.max_train_samples=64",
                    "data.max_test_samples=32", f"output.dir={exp}", f"data.cache_dir={cache_dir}"])  # fmt: skip
    assert_one_line_error(res, "model.pretrained")
    assert "nope" in res.stderr
    assert not exp.exists()


def test_a_config_with_a_key_given_twice_is_one_line(tmp_path: Path) -> None:
    # was accepted, the last `lr:` silently winning
    preset = tmp_path / "dup.yaml"
    preset.write_text("train:\n  lr: 0.001\n  epochs: 1\n  lr: 0.1\n")
    exp = tmp_path / "exp"
    res = scalelab(["train", "--config", str(preset), f"output.dir={exp}"])
    assert_one_line_error(res, f"{preset}: not valid YAML at line 4, column 3: duplicate key 'lr'")
    assert "first given at line 2" in res.stderr and not exp.exists()


def _interrupt_after(cmd: list[str], line_start: str) -> subprocess.CompletedProcess:
    """Run `cmd`, send it SIGINT (as Ctrl-C does) once stdout has a line starting `line_start`."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(line_start):
                os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole group
                break
        out, err = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(seen) + out, err)


def test_ctrl_c_during_training_is_one_line_naming_how_to_continue(
    tmp_path: Path, cache_dir: Path
) -> None:
    # was exit 130 and nothing said (and a traceback while the CLI was still importing torch)
    exp = tmp_path / "exp"
    args = [*tiny_slow_run(steps=30, delay_s=0.2), f"output.dir={exp}", "output.run_name=r",
            f"data.cache_dir={cache_dir}", "train.checkpoint_every_steps=5"]  # fmt: skip
    res = _interrupt_after([sys.executable, "-m", "scalelab", "train", *args], "epoch 1/1 step 10/")
    assert res.returncode == 130, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        f"scalelab: interrupted; continue from its last checkpoint ({exp / 'r' / 'checkpoint.pt'}) "
        f"with train.resume=auto output.dir={exp} output.run_name=r"
    ]
    # the advice works: the run continues from that checkpoint and finishes
    done = scalelab(["train", *args, "train.resume=auto"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (exp / "r" / "summary.json").is_file()


def test_ctrl_c_before_any_command_ran_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # build_parser imports torch (seconds): a Ctrl-C there escaped main() as a traceback
    from scalelab import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    monkeypatch.delenv("RANK", raising=False)
    assert _main_catching(["report", "runs", "--out", "r"]) == 130
    assert capsys.readouterr().err.splitlines() == ["scalelab: interrupted"]
    monkeypatch.setenv("RANK", "1")  # under torchrun every rank gets SIGINT: rank 0 says it
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _main_catching(["report", "runs", "--out", "r"]) == 130
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("WORLD_SIZE")  # a RANK=1 left in a shell of one process: it says it
    assert _main_catching(["report", "runs", "--out", "r"]) == 130
    assert capsys.readouterr().err.splitlines() == ["scalelab: interrupted"]


def _main_catching(argv: list[str]) -> int:
    """cli.main, with a KeyboardInterrupt that escapes it a test failure (not pytest's own stop)."""
    from scalelab import cli

    try:
        return cli.main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped scalelab.cli.main (a traceback for the user)")


def test_ctrl_c_in_a_command_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from scalelab.analysis import report

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    monkeypatch.delenv("RANK", raising=False)
    assert _main_catching(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 130
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["scalelab: interrupted"] and not captured.out
