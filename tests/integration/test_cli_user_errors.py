"""User errors through the real CLI process: exit 2, one stderr line naming the key or file, and
no run folder (nor a half-written data cache) left behind. Each fails before training: seconds."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, scalelab

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
