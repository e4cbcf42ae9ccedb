"""Readers, validation and tokenizers of scalelab.data (fixtures are written per test)."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalelab.config import DataConfig
from scalelab.data import (
    SPECIAL_TOKENS,
    DataError,
    build_tokenizer,
    bundled_dir,
    clean_ag_news,
    clean_imdb,
    load_raw,
    pad_id,
)
from scalelab.data.sources import (
    read_aclimdb_dir,
    read_ag_news_csv,
    read_imdb_csv,
    source_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]
# ../shared/data beside the checkout (as in CI), not an absolute path of one machine
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

AG_ROWS = (
    '"3","Wall St. Bears (Reuters)","Reuters - Short-sellers, Wall Street #39;s\\band of '
    'ultra-cynics, are seeing green again. quot;Hi quot; #36;5"\n'
    '"1","Title two","Desc ""quoted"" two"\n'
    '"4","T3","D3"\n'
)
IMDB_ROWS = 'text,label\r\n"Great, film.<br /><br />Loved it",1\r\nAwful,0\r\n'


def write(path: Path, text: str | bytes, gz: bool = False) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def files_cfg(dataset: str, train: Path, test: Path, **kw) -> DataConfig:
    return DataConfig(
        dataset=dataset, source="files", train_path=str(train), test_path=str(test), **kw
    )


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("gz", [False, True])
def test_ag_news_reader_cleans_and_shifts_labels(tmp_path, gz):
    texts, labels, fp = read_ag_news_csv(write(tmp_path / "ag.csv", AG_ROWS, gz))
    assert labels.tolist() == [2, 0, 3] and labels.dtype == np.int64
    assert texts[0] == (
        "Wall St. Bears (Reuters) Reuters - Short-sellers, Wall Street's band of "
        'ultra-cynics, are seeing green again. "Hi "$5'
    )
    assert texts[1] == 'Title two Desc "quoted" two'
    assert len(fp) == 64


def test_clean_functions():
    assert (
        clean_ag_news("a\\b  c quot;d quot; e #39;s &lt;b&gt; A amp;M") == 'a b c "d " e\'s <b> A&M'
    )
    assert clean_imdb(" x<br />y<br/>z<BR>w ") == "x y z w"


def test_imdb_csv_reader(tmp_path):
    texts, labels, _ = read_imdb_csv(write(tmp_path / "i.csv.gz", IMDB_ROWS, gz=True))
    assert texts == ["Great, film.  Loved it", "Awful"]
    assert labels.tolist() == [1, 0]


def test_imdb_csv_reader_any_column_order(tmp_path):
    texts, labels, _ = read_imdb_csv(write(tmp_path / "i.csv", "label,text\n0,bad\n1,good\n"))
    assert texts == ["bad", "good"] and labels.tolist() == [0, 1]


def make_acl(root: Path) -> Path:
    for sub, items in (
        ("pos", {"10_9": "Great!<br />Yes", "2_8": "fine"}),
        ("neg", {"3_1": "bad"}),
    ):
        (root / sub).mkdir(parents=True)
        for name, text in items.items():
            (root / sub / f"{name}.txt").write_text(text, encoding="utf-8")
    return root


def test_aclimdb_tree_reader(tmp_path):
    texts, labels, fp = read_aclimdb_dir(make_acl(tmp_path / "aclImdb" / "train"))
    assert texts == ["bad", "fine", "Great! Yes"]  # neg first, then numeric id order
    assert labels.tolist() == [0, 1, 1]
    assert fp == read_aclimdb_dir(tmp_path / "aclImdb" / "train")[2]
    test = make_acl(tmp_path / "aclImdb" / "test")
    raw = load_raw(files_cfg("imdb", tmp_path / "aclImdb" / "train", test))
    assert raw.num_classes == 2 and len(raw.test_texts) == 3


def test_aclimdb_folder_needs_pos_neg(tmp_path):
    (tmp_path / "x" / "pos").mkdir(parents=True)
    with pytest.raises(DataError, match="neg"):
        read_aclimdb_dir(tmp_path / "x")


def test_folder_rejected_for_ag_news(tmp_path):
    make_acl(tmp_path / "t")
    with pytest.raises(DataError, match="only supported for dataset=imdb"):
        load_raw(files_cfg("ag_news", tmp_path / "t", tmp_path / "t"))
    # the cache key is computed first: it must say the same, not "not an aclImdb folder"
    with pytest.raises(DataError, match="only supported for dataset=imdb"):
        source_fingerprint(files_cfg("ag_news", tmp_path / "t", tmp_path / "t"))


def test_aclimdb_folder_with_an_empty_class_is_refused(tmp_path):
    root = make_acl(tmp_path / "x")
    for f in (root / "pos").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no \\*.txt reviews in pos/"):
        read_aclimdb_dir(root)


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    bom = b"\xef\xbb\xbf"
    texts, labels, _ = read_imdb_csv(
        write(tmp_path / "i.csv", bom + b"text,label\nbad,0\ngood,1\n")
    )
    assert texts == ["bad", "good"] and labels.tolist() == [0, 1]
    ag = write(tmp_path / "a.csv", bom + b'"1","t","d"\n"2","u","e"\n')
    assert read_ag_news_csv(ag)[1].tolist() == [0, 1]


def test_a_text_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    long = "word " * 40_000  # 200k characters; Python's csv stops at 131,072 by default
    texts, _, _ = read_imdb_csv(write(tmp_path / "i.csv", f'text,label\n"{long}",1\nok,0\n'))
    assert len(texts[0]) == len(long.strip()) and texts[1] == "ok"


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = write(tmp_path / "i.csv", "text,label\nok,1\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="cannot read .Permission denied."):
        read_imdb_csv(path)
    with pytest.raises(DataError, match="cannot read"):
        source_fingerprint(files_cfg("imdb", path, path))


# --------------------------------------------------------------------------- validation

AG_BAD = [
    ('"1","a","b"\n"2","only two"\n', 2, "expected 3 fields"),
    ('"1","a","b"\n"x","t","d"\n', 2, "not an integer"),
    ('"1","a","b"\n"1","a","b"\n"5","t","d"\n', 3, "out of range"),
    ('"1","a","b"\n"0","t","d"\n', 2, "out of range"),
    ('"1","a","b"\n"2"," ","\\\\"\n', 2, "empty text"),
    ('"1","multi\nline","b"\n"2","t"\n', 3, "expected 3 fields"),  # line of the record start
    ('"class","title","description"\n"1","a","b"\n', 1, "the AG News layout has no header"),
]


@pytest.mark.parametrize(("content", "line", "what"), AG_BAD)
def test_ag_news_errors_name_file_and_line(tmp_path, content, line, what):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as exc:
        read_ag_news_csv(path)
    msg = str(exc.value)
    assert str(path) in msg and f"line {line}:" in msg and what in msg and "\n" not in msg


IMDB_BAD = [
    ("text,label\ngood,1\nbad,2\n", 3, "out of range"),
    ("text,label\ngood,1\nbad,neg\n", 3, "not an integer"),
    ("text,label\ngood,1\nbad,0,extra\n", 3, "expected 2 fields"),
    ("text,label\ngood,1\n<br />,0\n", 3, "empty text"),
    ("review,sentiment\ngood,1\n", 1, "header"),
    ("text,label,label\ngood,1,0\n", 1, "column 'label' appears 2 times"),
    ("text,label,Text\ngood,1,bad\n", 1, "column 'text' appears 2 times"),
]


@pytest.mark.parametrize(("content", "line", "what"), IMDB_BAD)
def test_imdb_errors_name_file_and_line(tmp_path, content, line, what):
    path = write(tmp_path / "bad.csv.gz", content, gz=True)
    with pytest.raises(DataError) as exc:
        read_imdb_csv(path)
    msg = str(exc.value)
    assert str(path) in msg and f"line {line}:" in msg and what in msg and "\n" not in msg


def test_bad_encoding_names_line(tmp_path):
    path = write(tmp_path / "latin1.csv", '"1","a","b"\n"2","caf\xe9","d"\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: line 2: not valid UTF-8"):
        read_ag_news_csv(path)


def test_a_gz_file_that_is_not_gzip_says_so(tmp_path):
    # read as text, random bytes were "line 1: not valid UTF-8 (byte 0x..)"
    path = write(tmp_path / "train.csv.gz", bytes(range(256)))
    with pytest.raises(DataError, match=r"train\.csv\.gz: named \.gz but neither a gzip file"):
        read_ag_news_csv(path)
    assert read_ag_news_csv(write(tmp_path / "plain.csv.gz", AG_ROWS))[1].size  # plain: reads


@pytest.mark.parametrize("content", [b"", b"\n\n", gzip.compress(b"")])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "e.csv", content)
    with pytest.raises(DataError, match=r"e\.csv: file is empty"):
        read_ag_news_csv(path)
    with pytest.raises(DataError, match=r"e\.csv: file is empty"):
        read_imdb_csv(path)


def test_missing_file(tmp_path):
    good = write(tmp_path / "ok.csv", AG_ROWS)
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_raw(files_cfg("ag_news", good, tmp_path / "nope.csv"))


def test_test_split_read_in_a_child_equals_the_one_read_here(
    tmp_path, monkeypatch, forked_children
):
    from scalelab.data import sources
    from scalelab.data.forked import fork_context

    assert fork_context() is not None, "this test needs fork and two cores"

    train = write(tmp_path / "train.csv", "text,label\n" + "good film,1\nbad one,0\n" * 20)
    test = write(tmp_path / "test.csv.gz", "text,label\ngreat <br />fun,1\nawful,0\n", gz=True)
    cfg = files_cfg("imdb", train, test)
    monkeypatch.setattr(sources, "_PARALLEL_MIN_BYTES", 10**12)
    here = load_raw(cfg)
    assert forked_children() == []
    monkeypatch.setattr(sources, "_PARALLEL_MIN_BYTES", 1)
    child = load_raw(cfg)
    assert len(forked_children()) == 1  # read in a child, not by the quiet fallback here
    assert child.test_texts == here.test_texts == ["great  fun", "awful"]
    assert np.array_equal(child.test_labels, here.test_labels)
    assert child.fingerprint == here.fingerprint and child.train_texts == here.train_texts


def test_a_bad_test_split_read_in_a_child_is_one_clear_line(tmp_path, monkeypatch, forked_children):
    from scalelab.data import sources

    monkeypatch.setattr(sources, "_PARALLEL_MIN_BYTES", 1)
    train = write(tmp_path / "train.csv", "text,label\ngood,1\nbad,0\n")
    test = write(tmp_path / "test.csv", "text,label\ngood,1\nbad,neg\n")
    with pytest.raises(DataError, match=r"test\.csv: line 3: label 'neg' is not an integer"):
        load_raw(files_cfg("imdb", train, test))
    assert len(forked_children()) == 1  # the error came from the child
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):  # the train split's
        load_raw(files_cfg("imdb", tmp_path / "nope.csv", test))


def test_hf_source_without_datasets_is_one_clear_line():
    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed; the not-installed message cannot be tested")
    with pytest.raises(DataError, match=r"pip install 'scalelab\[hf\]'") as exc:
        load_raw(DataConfig(dataset="imdb", source="hf"))
    assert "\n" not in str(exc.value)


class _FakeSplit:
    """The part of a `datasets.Dataset` that data.source=hf reads: columns by name."""

    def __init__(self, **columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]


def _fake_datasets(monkeypatch, splits, calls=None):
    import types

    def load_dataset(name):
        if calls is not None:
            calls.append(name)
        if isinstance(splits, Exception):
            raise splits
        return splits

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_source_reads_and_cleans_both_splits(monkeypatch):
    calls = []
    splits = {
        "train": _FakeSplit(text=["a<br />b", "c  d", "e"], label=[0, 1, 1]),
        "test": _FakeSplit(text=["f<br/>g", "h"], label=[1, 0]),
        "unsupervised": _FakeSplit(text=["x"], label=[-1]),  # IMDB's extra split is ignored
    }
    _fake_datasets(monkeypatch, splits, calls)
    raw = load_raw(DataConfig(dataset="imdb", source="hf"))
    assert calls == ["imdb"]
    assert raw.train_texts == ["a b", "c  d", "e"] and raw.train_labels.tolist() == [0, 1, 1]
    assert raw.test_texts == ["f g", "h"] and raw.test_labels.tolist() == [1, 0]
    assert "Hugging Face datasets" in raw.description
    # the fingerprint (cache key) follows the content
    first = raw.fingerprint
    splits["test"] = _FakeSplit(text=["f<br/>g", "h!"], label=[1, 0])
    assert load_raw(DataConfig(dataset="imdb", source="hf")).fingerprint != first


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        (
            {"train": _FakeSplit(text=["a"], label=[0])},
            r"split 'test' is missing \(the hub copy has train\)",
        ),
        (
            {
                "train": _FakeSplit(sentence=["a"], label=[0]),
                "test": _FakeSplit(text=["b"], label=[0]),
            },
            r"split 'train' needs 'text' and 'label' columns",
        ),
        (
            {
                "train": _FakeSplit(text=["a"], label=["pos"]),
                "test": _FakeSplit(text=["b"], label=[0]),
            },
            r"split 'train': every 'label' must be an integer",
        ),
        (
            {
                "train": _FakeSplit(text=[None], label=[0]),
                "test": _FakeSplit(text=["b"], label=[0]),
            },
            r"split 'train': every 'text' must be a string",
        ),
        (
            {"train": _FakeSplit(text=["a"], label=[0]), "test": _FakeSplit(text=["b"], label=[2])},
            r"imdb test split: labels must be in 0\.\.1",
        ),
        (
            ConnectionError("no route to host\nmore detail"),
            r"could not load 'imdb' .*ConnectionError: no route to host\)",
        ),
    ],
)
def test_hf_source_bad_datasets_are_one_clear_line(monkeypatch, splits, message):
    _fake_datasets(monkeypatch, splits)
    with pytest.raises(DataError, match=message) as exc:
        load_raw(DataConfig(dataset="imdb", source="hf"))
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- bundled sample


@pytest.mark.parametrize(
    ("dataset", "n_train", "n_test", "k"), [("ag_news", 4000, 1000, 4), ("imdb", 2000, 1000, 2)]
)
def test_bundled_sample_is_stratified(dataset, n_train, n_test, k):
    raw = load_raw(DataConfig(dataset=dataset, source="sample"))
    assert (len(raw.train_texts), len(raw.test_texts), raw.num_classes) == (n_train, n_test, k)
    assert np.bincount(raw.train_labels).tolist() == [n_train // k] * k
    assert np.bincount(raw.test_labels).tolist() == [n_test // k] * k
    assert all(raw.train_texts)
    if dataset == "imdb":
        assert "<br" not in " ".join(raw.train_texts)


def test_max_samples_is_seeded_subset_with_both_classes():
    cfg = DataConfig(dataset="imdb", source="sample", max_train_samples=50, max_test_samples=20)
    a, b = load_raw(cfg), load_raw(cfg)
    assert len(a.train_texts) == 50 and len(a.test_texts) == 20
    assert a.train_texts == b.train_texts and set(a.train_labels.tolist()) == {0, 1}
    assert a.fingerprint == b.fingerprint == load_raw(DataConfig(dataset="imdb")).fingerprint


@pytest.mark.skipif(not (SHARED / "imdb").is_dir(), reason="shared datasets not available")
def test_make_sample_is_byte_reproducible(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "tools/make_sample.py"), "--dst", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for f in sorted(tmp_path.iterdir()):
        assert f.read_bytes() == (bundled_dir() / f.name).read_bytes(), f.name


# --------------------------------------------------------------------------- tokenizers


def test_bundled_bert_vocab_gives_bert_ids():
    tok = build_tokenizer(
        DataConfig(vocab_path="bundled:bert-base-uncased-vocab.txt"), 0, [], max_seq_len=6
    )
    enc = tok.encode("Hello, WORLD café and more words")
    assert enc.ids == [101, 7592, 1010, 2088, 7668, 102]  # [CLS] hello , world cafe [SEP]
    assert pad_id(tok) == 0 and tok.token_to_id("[SEP]") == 102 and tok.get_vocab_size() == 30522


def test_trained_wordpiece_special_ids_and_truncation(tmp_path):
    texts = ["the cat sat on the mat", "a dog ran far away", "cats and dogs"] * 20
    tok = build_tokenizer(DataConfig(), 60, texts, max_seq_len=5)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    enc = tok.encode("The cat sat on the mat")
    assert len(enc.ids) == 5 and enc.ids[0] == 2 and enc.ids[-1] == 3
    assert tok.get_vocab_size() <= 60
    # A saved tokenizer.json loads back with the same behaviour.
    tok.save(str(tmp_path / "tok.json"))
    again = build_tokenizer(DataConfig(vocab_path=str(tmp_path / "tok.json")), 0, [], 5)
    assert again.encode("the cat sat on the mat").ids == enc.ids


def test_a_vocab_txt_saved_with_a_bom_reads_as_without(tmp_path):
    # the BOM stuck to the first token: "[PAD]" was not found ("no padding token")
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat"]
    (tmp_path / "v.txt").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    tok = build_tokenizer(DataConfig(vocab_path=str(tmp_path / "v.txt")), 0, [], max_seq_len=8)
    assert pad_id(tok) == 0 and tok.encode("the cat").ids == [2, 5, 6, 3]


def test_missing_vocab_file(tmp_path):
    with pytest.raises(DataError, match="vocab file not found"):
        build_tokenizer(DataConfig(vocab_path=str(tmp_path / "v.txt")), 0, [])


def test_a_pipe_as_a_data_file_is_refused_not_read_forever(tmp_path):
    import os
    import threading

    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)
    good = write(tmp_path / "ok.csv", AG_ROWS)
    errors: list[str] = []

    def read_both() -> None:
        for read in (load_raw, source_fingerprint):
            try:
                read(files_cfg("ag_news", fifo, good))
            except DataError as exc:
                errors.append(str(exc))

    reader = threading.Thread(target=read_both, daemon=True)
    reader.start()
    reader.join(timeout=20)
    if reader.is_alive():  # blocked opening the pipe (the old behaviour): release it, then fail
        while reader.is_alive():
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader sees EOF
            reader.join(timeout=0.5)
        pytest.fail("reading a named pipe as a data file blocked")
    assert len(errors) == 2 and all("train.csv: not a regular file" in e for e in errors), errors


def test_splits_are_checked_for_classes_and_for_being_one_file(tmp_path):
    from scalelab.data.sources import check_splits

    ag = files_cfg("ag_news", tmp_path / "a.csv", tmp_path / "b.csv")
    with pytest.raises(
        DataError, match=r"all 3 examples have label 2; a classifier needs at least two"
    ):
        check_splits(ag, np.array([1, 1, 1]), np.array([1, 2]))  # 0-based 1 is the file's 2
    (warning,) = check_splits(ag, np.array([0, 1, 0]), np.array([0, 2, 3]))
    assert warning.startswith("test label(s) 3, 4 never occur in the training split")
    assert check_splits(ag, np.array([0, 1, 2, 3]), np.array([0, 1])) == []
    capped = files_cfg("ag_news", tmp_path / "a.csv", tmp_path / "b.csv", max_train_samples=10)
    (warning,) = check_splits(capped, np.array([0, 1, 2, 3]), np.array([0, 1]))
    assert warning == (
        "data.max_train_samples=10 but the training split has 4 examples: all of them are used"
    )
    same = files_cfg("imdb", tmp_path / "x.csv", tmp_path / "x.csv")
    (warning,) = check_splits(same, np.array([0, 1]), np.array([0, 1]))
    assert "data.train_path and data.test_path are the same file" in warning


def test_a_single_class_training_set_stops_a_run_and_warnings_reach_the_user(tmp_path, capsys):
    from scalelab.cli import main

    one = write(tmp_path / "one.csv", '"2","a","b"\n"2","c","d"\n')
    test = write(tmp_path / "test.csv", AG_ROWS)
    base = ["data", "data.source=files", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*base, f"data.train_path={one}", f"data.test_path={test}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all 2 examples have label 2" in err[0], err
    two = write(tmp_path / "two.csv", '"1","a","b"\n"2","c","d"\n')
    assert main([*base, f"data.train_path={two}", f"data.test_path={test}"]) == 0
    out = capsys.readouterr().out
    assert "warning: test label(s) 3, 4 never occur in the training split" in out
    assert main([*base, f"data.train_path={two}", f"data.test_path={two}"]) == 0  # a cache hit
    assert (
        "warning: data.train_path and data.test_path are the same file" in capsys.readouterr().out
    )


def test_a_vocab_size_below_the_characters_warns_with_the_size_it_got(tmp_path, capsys):
    from scalelab.cli import main

    # model.vocab_size=1 trained a vocabulary of every character without a word of it
    train = write(tmp_path / "train.csv", AG_ROWS)
    test = write(tmp_path / "test.csv", AG_ROWS)
    base = ["data", "data.source=files", f"data.cache_dir={tmp_path / 'cache'}",
            f"data.train_path={train}", f"data.test_path={test}"]  # fmt: skip
    assert main([*base, "model.vocab_size=1"]) == 0
    out = capsys.readouterr().out
    assert "warning: model.vocab_size=1 is smaller than the special tokens and single" in out
    assert main([*base, "model.vocab_size=5000"]) == 0
    assert "model.vocab_size" not in capsys.readouterr().out


def test_data_paths_without_source_files_are_refused():
    from scalelab.config import ConfigError, load_config

    with pytest.raises(
        ConfigError, match="data.train_path is set but data.source=sample does not read it"
    ):
        load_config(None, ["data.train_path=mine.csv"]).validate()
    with pytest.raises(ConfigError, match="data.test_path is set but data.source=hf"):
        load_config(None, ["data.source=hf", "data.test_path=t.csv"]).validate()


def test_a_vocab_path_that_is_a_folder_or_an_upper_case_json_suffix(tmp_path):
    with pytest.raises(DataError, match="is a folder; data.vocab_path names a file"):
        build_tokenizer(DataConfig(vocab_path=str(tmp_path)), 0, [])
    tok = build_tokenizer(DataConfig(), 200, ["the cat sat on the mat"] * 20, 16)
    tok.save(str(tmp_path / "tok.JSON"))
    again = build_tokenizer(DataConfig(vocab_path=str(tmp_path / "tok.JSON")), 0, [], 16)
    assert again.encode("the cat sat").ids == tok.encode("the cat sat").ids


def test_an_imdb_file_without_a_header_names_it_without_echoing_a_review(tmp_path):
    """The first row is a review: the line quotes the start of each cell, not 9 KB of text."""
    review = "a long review " * 700
    path = write(tmp_path / "i.csv", f'"{review}",1\nok,0\n')
    with pytest.raises(DataError, match="expected a header with columns text,label") as info:
        read_imdb_csv(path)
    assert len(
        str(info.value)
    ) < 300 and "['a long review a long review a long re...', '1']" in str(info.value)


def test_a_gzip_file_with_damaged_deflate_data_is_one_line(tmp_path):
    # zlib.error is no OSError: it escaped as a traceback (exit 1)
    data = bytearray(gzip.compress((AG_ROWS * 1000).encode()))
    data[12] ^= 0xFF  # inside the first deflate block's header
    path = write(tmp_path / "ag.csv.gz", bytes(data))
    with pytest.raises(DataError, match=r"ag\.csv\.gz: corrupt gzip file"):
        read_ag_news_csv(path)


def test_a_gzip_file_of_other_text_says_its_content_is_not_utf8(tmp_path):
    path = write(tmp_path / "latin1.csv.gz", '"1","caf\xe9","d"\n'.encode("latin-1"), gz=True)
    with pytest.raises(DataError, match=r"latin1\.csv\.gz: its gzip content is not UTF-8 text"):
        read_ag_news_csv(path)


def test_a_path_that_cannot_be_looked_at_is_one_line(tmp_path):
    # Path.exists() and is_dir() raise ENAMETOOLONG and EACCES (Python 3.11): tracebacks
    from scalelab.data.sources import file_fingerprint, read_split

    long = tmp_path / ("x" * 300 + ".csv")
    good = write(tmp_path / "ok.csv", AG_ROWS)
    for call in (lambda: read_split("ag_news", long), lambda: file_fingerprint(long),
                 lambda: load_raw(files_cfg("ag_news", good, long)),
                 lambda: source_fingerprint(files_cfg("ag_news", long, good)),
                 lambda: build_tokenizer(DataConfig(vocab_path=str(long)), 0, [])):  # fmt: skip
        with pytest.raises(
            DataError, match=r"x{300}\.csv: cannot access it \(File name too long\)"
        ):
            call()


def test_a_vocab_token_holding_a_unicode_line_separator_keeps_the_later_ids(tmp_path):
    # str.splitlines() split the token "x\u2028y" in two: every later id was off by one
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x\u2028y", "a\x1cb", "hello", "world"]
    (tmp_path / "v.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = build_tokenizer(DataConfig(vocab_path=str(tmp_path / "v.txt")), 0, [], max_seq_len=8)
    assert tok.token_to_id("hello") == 7 and tok.token_to_id("world") == 8
    assert tok.get_vocab_size() == len(lines)


def test_imdb_line_breaks_in_any_case_are_spaces():
    assert clean_imdb("a<Br />b<bR>c") == "a b c"
