"""prepare_data: cache keys, hits without re-tokenising, atomic writes, DDP barrier protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelab.config import Config, DataConfig
from scalelab.data import DataError, build_tokenizer, cache, encode_texts, load_raw, prepare_data

WORDS = [
    "the",
    "a",
    "film",
    "movie",
    "good",
    "bad",
    "great",
    "awful",
    "plot",
    "actor",
    "scene",
    "story",
    "boring",
    "fun",
]


def write_imdb(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["text,label"]
    for i in range(n):
        words = rng.choice(WORDS, size=rng.integers(3, 40))
        lines.append(f"{' '.join(words)} review {i},{i % 2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def cfg(tmp_path) -> Config:
    c = Config()
    c.data.dataset = "imdb"
    c.data.source = "files"
    c.data.train_path = str(write_imdb(tmp_path / "train.csv"))
    c.data.test_path = str(write_imdb(tmp_path / "test.csv", n=25, seed=1))
    c.data.cache_dir = str(tmp_path / "cache")
    c.model.vocab_size = 80
    c.model.max_seq_len = 16
    return c


def test_cold_then_warm_hit_without_retokenising(cfg, monkeypatch):
    cold = prepare_data(cfg)
    assert not cold.cache_hit and cold.cache_path.is_file()
    assert cold.train.tokens.shape == (60, 16) and cold.test.tokens.dtype == torch.int32
    assert cold.train.lengths.max() == 16 and cold.num_classes == 2 and cold.pad_id == 0
    assert cold.train.labels.dtype == torch.int64 and cold.vocab_size <= 80

    def boom(*a, **k):
        raise AssertionError("re-tokenised on a cache hit")

    monkeypatch.setattr(cache, "tokenizer_and_pad_id", boom)
    monkeypatch.setattr(cache, "encode_texts", boom)
    monkeypatch.setattr(cache, "load_raw", boom)
    warm = prepare_data(cfg)
    assert warm.cache_hit and warm.cache_path == cold.cache_path
    for a, b in ((cold.train, warm.train), (cold.test, warm.test)):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
        assert np.array_equal(a.lengths, b.lengths)
    assert warm.tokenizer().encode("good film").ids == cold.tokenizer().encode("good film").ids


def test_padding_matches_tokenizer(cfg):
    data = prepare_data(cfg)
    tok = data.tokenizer()
    first = tok.encode(Path(cfg.data.train_path).read_text().splitlines()[1].rsplit(",", 1)[0]).ids
    n = data.train.lengths[0]
    assert data.train.tokens[0, :n].tolist() == first and (data.train.tokens[0, n:] == 0).all()


def test_key_changes_with_vocab_size_data_and_seq_len(cfg, tmp_path):
    base = prepare_data(cfg).cache_path
    cfg.model.vocab_size = 90
    assert prepare_data(cfg).cache_path != base
    cfg.model.vocab_size = 80
    cfg.model.max_seq_len = 20
    assert prepare_data(cfg).cache_path != base
    cfg.model.max_seq_len = 16
    assert prepare_data(cfg).cache_path == base
    write_imdb(tmp_path / "train.csv", n=61)
    changed = prepare_data(cfg)
    assert changed.cache_path != base and not changed.cache_hit and len(changed.train) == 61


def test_atomic_write_leaves_nothing_on_failure(cfg, monkeypatch, tmp_path):
    def partial_then_fail(f, **arrays):
        f.write(b"PK partial npz")
        raise OSError("disk full")

    monkeypatch.setattr(cache.np, "savez", partial_then_fail)
    with pytest.raises(DataError, match="cannot write the data cache.*disk full"):
        prepare_data(cfg)
    assert list((tmp_path / "cache").iterdir()) == []


def test_barrier_called_once_per_rank_and_failure_releases_others(cfg):
    calls: list[str] = []
    prepare_data(cfg, is_main=True, barrier=lambda: calls.append("main-cold"))
    prepare_data(cfg, is_main=True, barrier=lambda: calls.append("main-warm"))
    other = prepare_data(cfg, is_main=False, barrier=lambda: calls.append("worker"))
    assert calls == ["main-cold", "main-warm", "worker"] and other.cache_hit

    cfg.model.vocab_size = 70  # new key: nothing cached yet
    cfg.data.test_path = cfg.data.test_path + ".missing"
    calls.clear()
    with pytest.raises(DataError, match="file not found"):
        prepare_data(cfg, is_main=True, barrier=lambda: calls.append("main"))
    with pytest.raises(DataError, match=r"test\.csv\.missing: file not found"):  # its own line
        prepare_data(cfg, is_main=False, barrier=lambda: calls.append("worker"))
    assert calls == ["main", "worker"]


def test_worker_reports_missing_cache(cfg):
    with pytest.raises(DataError, match="data cache missing"):
        prepare_data(cfg, is_main=False)


TRICKY = [
    " ".join(["Word"] * 50),
    "x  " * 40,  # double spaces: a 16-chunk prefix has only ~8 words -> re-encoded in full
    "short text",
    "Café NAÏVE résumé " * 30,
    "tab\tsep\x0bvt ctl\x01x 中文字 Ǆ ﬁne",
    "",
    # per-word composition (cache._encode_by_words): punctuation runs, underscores, digits,
    # IMDB's markup, a word over WordPiece's 100-character limit, pieces that normalise to
    # nothing (a lone accent, a zero-width space), non-breaking and other Unicode spaces,
    # the stand-in and text-end characters themselves, and only-space texts
    "snake_case __init__ x_1 3.14 1,000,000 ...?!! (a)[b]{c} <br /><br />Great!",
    "a" * 120 + " tail " + "b" * 99,
    "e\u0301 \u0301 x\u200by caf\u00e9\u00a0ok\u2003em\u3000ideo",
    "\x01 0 \x02 \x011\x02 nul\x00byte",
    "   ",
    "MiXeD CaSe ÀÉÎ Σίσυφος İstanbul",
]


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("vocab", ["bundled:bert-base-uncased-vocab.txt", ""])
@pytest.mark.parametrize("max_len", [16, 512])
def test_fast_encoding_equals_plain_encoding(vocab, lowercase, max_len, monkeypatch):
    """Per-word composition and Python pre-normalisation must give exactly the tokenizer's ids."""
    texts = TRICKY + load_raw(DataConfig(dataset="imdb")).test_texts[:300]
    # chunks of 7 texts: most go through the whole-chunk pass, the one holding the text-end
    # character itself through the per-text one, and numbering carries across chunks
    monkeypatch.setattr(cache, "_CHUNK_TEXTS", 7)
    dcfg = DataConfig(vocab_path=vocab, lowercase=lowercase)
    tok = build_tokenizer(dcfg, 300, texts, max_len)
    assert cache._word_path(tok) is not None  # the per-word path is the one under test
    tokens, lengths = encode_texts(tok, texts, 0)
    plain = tok.encode_batch(texts)
    for row, n, enc in zip(tokens, lengths, plain, strict=True):
        assert row[:n].tolist() == enc.ids and (row[n:] == 0).all()
    assert tokens.dtype == np.int32 and lengths.dtype == np.int64
    assert lengths.max() == max_len  # some texts are longer: truncation is exercised


def test_prenormalize_equals_the_normaliser():
    from scalelab.data.tokenizer import prenormalize

    for lowercase in (True, False):
        tok = build_tokenizer(DataConfig(vocab_path="bundled:bert-base-uncased-vocab.txt",
                                         lowercase=lowercase), 0, [], 16)  # fmt: skip
        _, normed = prenormalize(tok, TRICKY)
        assert normed == [tok.normalizer.normalize_str(t) for t in TRICKY]


def test_texts_holding_an_added_token_use_the_tokenizer(tmp_path):
    """A tokenizer.json whose added tokens match inside texts: those texts are encoded by it."""
    tok = build_tokenizer(
        DataConfig(), 300, load_raw(DataConfig(dataset="imdb")).test_texts[:50], 32
    )
    tok.add_special_tokens(["[CLS]"])
    texts = ["a [CLS] in the middle", "plain text here"]
    tokens, lengths = encode_texts(tok, texts, 0)
    for row, n, enc in zip(tokens, lengths, tok.encode_batch(texts), strict=True):
        assert row[:n].tolist() == enc.ids
    assert tok.token_to_id("[CLS]") in tokens[0, 1 : lengths[0] - 1].tolist()


def test_texts_holding_a_normalized_added_token_in_another_case_use_the_tokenizer():
    """add_tokens' tokens match the normalised text: 'COVID_19' is 'covid_19' to a lowercasing
    tokenizer, and the word path split it into four pieces the tokenizer itself never makes."""
    from tokenizers import AddedToken

    tok = build_tokenizer(DataConfig(vocab_path="bundled:bert-base-uncased-vocab.txt"), 0, [], 16)
    tok.add_tokens([AddedToken("covid_19", normalized=True)])
    texts = ["COVID_19 cases rise", "Covid_19 again", "plain text here"]
    tokens, lengths = encode_texts(tok, texts, 0)
    for row, n, enc in zip(tokens, lengths, tok.encode_batch(texts), strict=True):
        assert row[:n].tolist() == enc.ids
    assert tokens[0, 1] == tokens[1, 1] == tok.token_to_id("covid_19")


def test_trained_ids_are_deterministic():
    texts = load_raw(DataConfig(dataset="ag_news")).train_texts[:500]
    a = build_tokenizer(DataConfig(), 500, texts)
    b = build_tokenizer(DataConfig(), 500, texts)
    assert a.get_vocab() == b.get_vocab()


def test_trained_vocabulary_is_the_same_when_pairs_tie():
    """ "ab" and "ac" are equally frequent and the vocabulary has room for one merge: the
    tokenizers trainer alone picks one or the other from run to run (its "##c" numbering follows
    a Rust HashMap); build_tokenizer must pick the same every time."""
    texts = ["ab ac"] * 10
    vocab_size = 5 + 3 + 2 + 1  # specials, a b c, ##b ##c, one merge
    vocabs = {frozenset(build_tokenizer(DataConfig(), vocab_size, texts).get_vocab())
              for _ in range(12)}  # fmt: skip
    assert len(vocabs) == 1
    (vocab,) = vocabs
    assert len(vocab) == vocab_size and len({"ab", "ac"} & vocab) == 1


@pytest.mark.parametrize("lowercase", [True, False])
def test_word_characters_are_those_of_the_pre_tokenised_words(lowercase):
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from scalelab.data.tokenizer import prenormalize, word_characters

    texts = TRICKY + load_raw(DataConfig(dataset="imdb")).test_texts[:200]
    tok = build_tokenizer(DataConfig(vocab_path="bundled:bert-base-uncased-vocab.txt",
                                     lowercase=lowercase), 0, [], 16)  # fmt: skip
    pieces: set[str] = set()
    _, normed = prenormalize(tok, texts, pieces)
    chars, later = set(), set()
    for text in normed:
        for word, _ in BertPreTokenizer().pre_tokenize_str(text):
            chars.update(word)
            later.update(word[1:])
    assert word_characters(normed, pieces) == (sorted(chars), sorted(later))
    assert {"中", "ǆ" if lowercase else "Ǆ"} <= chars and "." in chars and "." not in later


def test_splits_encoded_in_a_child_equal_those_encoded_here(cfg, monkeypatch, forked_children):
    from scalelab.data.forked import fork_context

    assert fork_context() is not None, "this test needs fork and two cores"
    raw = load_raw(cfg.data)
    forked_children()  # any child of the reading
    monkeypatch.setattr(cache, "_PARALLEL_MIN_TEXTS", 1)
    forked = cache._build(cfg, raw)
    assert len(forked_children()) == 1  # the test split really was encoded in a child
    monkeypatch.setattr(cache, "_PARALLEL_MIN_TEXTS", 10**9)
    here = cache._build(cfg, raw)
    assert forked_children() == []
    assert forked.keys() == here.keys()
    for key in here:
        assert np.array_equal(forked[key], here[key]), key


def test_an_error_in_the_encoding_child_reaches_the_caller(cfg, monkeypatch):
    real = cache.encode_texts
    test_texts = load_raw(cfg.data).test_texts

    def fail_on_test_split(tok, texts, pad):
        if texts == test_texts:
            raise DataError("boom in the child")
        return real(tok, texts, pad)

    monkeypatch.setattr(cache, "encode_texts", fail_on_test_split)
    monkeypatch.setattr(cache, "_PARALLEL_MIN_TEXTS", 1)
    with pytest.raises(DataError, match="boom in the child") as exc:
        cache._build(cfg, load_raw(cfg.data))
    assert str(exc.value) == "boom in the child"  # still one line for the CLI
    if hasattr(exc.value, "add_note"):  # Python 3.11+: the child's traceback comes along
        assert "fail_on_test_split" in "".join(exc.value.__notes__)


def test_a_dead_encoding_child_is_replaced_by_this_process(cfg, monkeypatch, forked_children):
    import os

    from scalelab.data.forked import fork_context

    assert fork_context() is not None, "this test needs fork and two cores"

    real = cache.encode_texts
    test_texts = load_raw(cfg.data).test_texts
    parent = os.getpid()

    def die_in_the_child(tok, texts, pad):
        if os.getpid() != parent:
            os._exit(9)  # as if killed for memory
        return real(tok, texts, pad)

    monkeypatch.setattr(cache, "encode_texts", die_in_the_child)
    monkeypatch.setattr(cache, "_PARALLEL_MIN_TEXTS", 1)
    raw = load_raw(cfg.data)
    forked_children()
    arrays = cache._build(cfg, raw)
    assert len(forked_children()) == 1  # a child started (and died: this process encoded)
    monkeypatch.setattr(cache, "encode_texts", real)
    tokens, lengths = real(build_tokenizer(cfg.data, cfg.model.vocab_size,
                                           load_raw(cfg.data).train_texts,
                                           cfg.model.max_seq_len), test_texts, 0)  # fmt: skip
    assert np.array_equal(arrays["test_tokens"], tokens)
    assert np.array_equal(arrays["test_lengths"], lengths)


def test_encoded_data_to_device_keeps_host_lengths(tmp_path) -> None:
    from scalelab.config import load_config
    from scalelab.data import prepare_data

    cfg = load_config(None, [f"data.cache_dir={tmp_path}", "data.max_train_samples=64",
                             "data.max_test_samples=32", "model.vocab_size=500"])  # fmt: skip
    data = prepare_data(cfg)
    moved = data.to("cpu")
    assert moved.train.tokens.device.type == "cpu" and moved.test.labels.device.type == "cpu"
    assert moved.train.lengths is data.train.lengths  # batch lengths stay on the host (no sync)
    assert len(moved.train) == 64 and len(moved.test) == 32


def test_list_and_clear_touch_only_scalelab_cache_files(cfg, tmp_path, capsys):
    import os
    import time

    from scalelab.cli import main

    data = prepare_data(cfg)
    folder = data.cache_path.parent
    foreign = [folder / "notes.txt", folder / "mine.npz", folder / ".mine.tmp"]
    for f in foreign:
        f.write_text("not scalelab's")
    old_temp = folder / f".{data.cache_path.stem}.abc123.tmp"  # an interrupted write, 2 h old
    young_temp = folder / f".{data.cache_path.stem}.def456.tmp"  # may be a build in progress
    for f in (old_temp, young_temp):
        f.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_temp, (two_hours_ago, two_hours_ago))

    (entry,) = cache.list_cache(folder)
    assert entry.path == data.cache_path and entry.current
    assert entry.description == data.description and entry.size_bytes > 0

    assert main(["data", "--list", f"data.cache_dir={folder}"]) == 0
    out = capsys.readouterr().out
    assert data.cache_path.name in out and "1 cache file(s)" in out

    # written just now: not older than a day
    assert cache.clear_cache(folder, older_than_s=86400.0) == []
    assert data.cache_path.is_file() and old_temp.is_file()

    assert main(["data", "--clear", f"data.cache_dir={folder}"]) == 0
    assert "removed 2 file(s)" in capsys.readouterr().out
    assert not data.cache_path.exists() and not old_temp.exists()
    assert young_temp.is_file() and all(f.is_file() for f in foreign)
    assert cache.list_cache(folder) == []
    assert not prepare_data(cfg).cache_hit  # rebuilt on the next use


def test_clear_with_negative_age_is_one_line(tmp_path, capsys):
    from scalelab.cli import main

    assert main(["data", "--clear", "--older-than-days", "-1", f"data.cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--older-than-days" in err[0]


def _prepare_in_a_daemonic_worker(cfg: Config) -> int:
    return len(cache._build(cfg, load_raw(cfg.data))["train_lengths"])


def test_a_daemonic_worker_prepares_data_without_a_child(cfg, monkeypatch):
    """multiprocessing workers are daemonic and may not start processes: encode in-process."""
    import multiprocessing

    monkeypatch.setattr(cache, "_PARALLEL_MIN_TEXTS", 1)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_prepare_in_a_daemonic_worker, (cfg,)) == 60


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_a_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside an array's bytes: its CRC no longer matches
    p.write_bytes(bytes(data))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _foreign_npz(p: Path) -> None:
    with p.open("wb") as f:
        np.savez(f, weights=np.zeros(3))


def _meta_without_fields(p: Path) -> None:
    arrays = dict(np.load(p))
    arrays["meta_json"] = np.frombuffer(b'{"x": 1}', dtype=np.uint8)
    with p.open("wb") as f:
        np.savez(f, **arrays)


def _meta_with_a_bad_field(p: Path) -> None:  # was a ValueError from int("x") on loading
    arrays = dict(np.load(p))
    meta = json.loads(arrays["meta_json"].tobytes().decode())
    arrays["meta_json"] = np.frombuffer(json.dumps({**meta, "pad_id": "x"}).encode(), np.uint8)
    with p.open("wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "damage",
    [_truncate, _flip_a_byte, _empty, _foreign_npz, _meta_without_fields, _meta_with_a_bad_field],
)
def test_a_damaged_cache_file_is_rebuilt_listed_and_named(cfg, damage, capsys):
    from scalelab.cli import main

    good = prepare_data(cfg)
    damage(good.cache_path)
    # another rank of the node finds it unreadable: one line naming the file
    with pytest.raises(DataError, match="data cache unreadable") as err:
        prepare_data(cfg, is_main=False)
    assert str(good.cache_path) in str(err.value) and "\n" not in str(err.value)
    # it can be listed and cleared (it used to crash both commands)
    (entry,) = cache.list_cache(good.cache_path.parent)
    assert entry.path == good.cache_path
    if damage is not _flip_a_byte:  # listing reads only the small meta array
        assert "unreadable" in entry.description and not entry.current and not entry.readable
    assert main(["data", "--list", f"data.cache_dir={cfg.data.cache_dir}"]) == 0
    listed = capsys.readouterr().out
    assert good.cache_path.name in listed
    if damage is not _flip_a_byte:  # it is read again (and rebuilt), not "never read again"
        assert "a run that needs it rebuilds it" in listed and "older cache version" not in listed
    # the builder rebuilds it in place
    rebuilt = prepare_data(cfg)
    assert not rebuilt.cache_hit and rebuilt.cache_path == good.cache_path
    assert torch.equal(rebuilt.train.tokens, good.train.tokens)
    assert prepare_data(cfg, is_main=False).cache_hit
    damage(good.cache_path)
    assert main(["data", "--clear", f"data.cache_dir={cfg.data.cache_dir}"]) == 0
    assert not good.cache_path.exists()


def _rewrite_array(p: Path, name: str, change) -> None:
    arrays = dict(np.load(p))
    arrays[name] = change(arrays[name])
    with p.open("wb") as f:
        np.savez(f, **arrays)  # valid CRCs: only the contents disagree


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("train_labels", lambda a: a[:10]),  # was an IndexError mid-training
        ("test_lengths", lambda a: a[:-1]),
        ("train_lengths", lambda a: a + 10_000),  # past the tokens' width
        ("train_labels", lambda a: a + 100),  # past num_classes
        ("test_tokens", lambda a: a + 1_000_000),  # past the vocabulary
        ("train_tokens", lambda a: a[:, :, None]),
        ("train_labels", lambda a: a.astype(np.float32)),
    ],
)
def test_a_cache_file_whose_arrays_do_not_fit_together_is_rebuilt(cfg, name, change):
    good = prepare_data(cfg)
    _rewrite_array(good.cache_path, name, change)
    with pytest.raises(DataError, match="data cache unreadable") as err:
        prepare_data(cfg, is_main=False)
    assert "not a scalelab cache file" in str(err.value)
    rebuilt = prepare_data(cfg)
    assert not rebuilt.cache_hit
    assert torch.equal(rebuilt.train.tokens, good.train.tokens)
    assert torch.equal(rebuilt.train.labels, good.train.labels)
    assert prepare_data(cfg).cache_hit


def test_cache_and_run_files_get_the_permissions_the_umask_gives(cfg, tmp_path):
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    # the umask is read once, at import: set it before, in a fresh process
    code = (
        "import os, sys; os.umask(0o027); from pathlib import Path; "
        "from scalelab.checkpoint import atomic_write_text; from scalelab.config import load_config; "
        "from scalelab.data import prepare_data; atomic_write_text(Path(sys.argv[1]), 'x'); "
        "c = load_config(None, ['data.cache_dir=' + sys.argv[2], 'data.max_train_samples=200', "
        "'data.max_test_samples=50', 'model.vocab_size=500']); print(prepare_data(c).cache_path)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.json"), str(tmp_path / "c")],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    cache = Path(res.stdout.strip().splitlines()[-1])
    for path in (tmp_path / "f.json", cache):  # mkstemp alone gives 0o600
        assert path.stat().st_mode & 0o777 == 0o640, path


def test_an_unusable_cache_folder_is_one_line(cfg, tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg.data.cache_dir = str(tmp_path / "afile" / "sub")
    # said before the build (was "cannot write the data cache here" after it)
    with pytest.raises(DataError, match=r"sub cannot be made \(.*afile is not a folder\)") as err:
        prepare_data(cfg)
    assert "data.cache_dir" in str(err.value)


def test_description_names_this_configs_files_on_a_cache_hit(cfg, tmp_path):
    import shutil

    first = prepare_data(cfg)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    for key in ("train_path", "test_path"):
        dst = elsewhere / Path(getattr(cfg.data, key)).name
        shutil.copy(getattr(cfg.data, key), dst)
        setattr(cfg.data, key, str(dst))
    hit = prepare_data(cfg)  # same content, so the same cache file
    assert hit.cache_hit and hit.cache_path == first.cache_path
    assert str(elsewhere) in hit.description and str(elsewhere) not in first.description


def test_a_vocab_txt_with_repeated_lines_keeps_every_id_inside_the_embedding(cfg, tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS[:6], "the", *WORDS[6:]]
    (tmp_path / "dup.txt").write_text("\n".join(vocab) + "\n")
    cfg.data.vocab_path = str(tmp_path / "dup.txt")
    data = prepare_data(cfg)
    assert data.vocab_size == len(vocab)  # ids are line numbers: one line is never used
    assert int(data.train.tokens.max()) < data.vocab_size


def test_a_tokenizer_json_keeps_its_own_padding_token(cfg, tmp_path):
    import json

    vocab = {
        "[UNK]": 0,
        "[CLS]": 1,
        "[SEP]": 2,
        "<|pad|>": 3,
        **{w: 4 + i for i, w in enumerate(WORDS)},
    }
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": {
            "strategy": "BatchLongest",
            "direction": "Right",
            "pad_to_multiple_of": None,
            "pad_id": 3,
            "pad_type_id": 0,
            "pad_token": "<|pad|>",
        },
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    (tmp_path / "tok.json").write_text(json.dumps(spec))
    cfg.data.vocab_path = str(tmp_path / "tok.json")
    data = prepare_data(cfg)
    assert data.pad_id == 3
    short = int(np.argmin(data.train.lengths))
    assert (data.train.tokens[short, data.train.lengths[short] :] == 3).all()


def _word_level_json(path, vocab, *, pad_id=None, cls_sep=None, unk="[UNK]"):
    """A tokenizers tokenizer.json of a WordLevel model, optionally padding with `pad_id` and
    wrapping texts in ("[CLS]", id), ("[SEP]", id) by a TemplateProcessing post-processor."""
    import json

    post = None
    if cls_sep is not None:
        (c, cid), (s_, sid) = cls_sep
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": c, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": s_, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {c: {"id": c, "ids": [cid], "tokens": [c]},
                               s_: {"id": s_, "ids": [sid], "tokens": [s_]}},
        }  # fmt: skip
    padding = None
    if pad_id is not None:
        padding = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                   "pad_id": pad_id, "pad_type_id": 0, "pad_token": "[PAD]"}  # fmt: skip
    spec = {"version": "1.0", "truncation": None, "padding": padding, "added_tokens": [],
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": post, "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}}  # fmt: skip
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        # pad id 99999 of a 5-id vocabulary: an IndexError in the embedding, mid-training
        ({"pad_id": 99999}, "its padding id 99999 is beyond the tokenizer's vocabulary of 5 ids"),
        # a post-processor wrapping texts in BERT's [CLS]=101/[SEP]=102
        ({"pad_id": 0, "cls_sep": (("[CLS]", 101), ("[SEP]", 102))},
         "an encoded text's id 102 is beyond the tokenizer's vocabulary of 5 ids"),
        # "Missing [UNK] token from the vocabulary", raised by the Rust encoder: a traceback
        ({"pad_id": 0, "unk": "[MISSING]"},
         "its unknown token '[MISSING]' is not in its vocabulary"),
    ],
)  # fmt: skip
def test_a_tokenizer_json_whose_ids_do_not_fit_its_vocabulary_is_one_line(
    cfg, tmp_path, kwargs, says
):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4}
    cfg.data.vocab_path = _word_level_json(tmp_path / "tok.json", vocab, **kwargs)
    with pytest.raises(DataError) as err:
        prepare_data(cfg)
    assert says in str(err.value) and str(tmp_path / "tok.json") in str(err.value), err.value


@pytest.mark.parametrize("action", ["--list", "--clear"])
def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, capsys, action):
    # was "0 cache file(s)" / "removed 0 file(s)" and exit 0, as if the folder were empty
    from scalelab.cli import main

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["data", action, f"data.cache_dir={afile}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"scalelab: error: data cache folder {afile} exists and is not a folder: set "
        "data.cache_dir (or $SCALELAB_CACHE) to a folder"
    ]
    assert not captured.out and afile.read_text() == "x"
    # preparing data there says the same, before reading any data file (was "cannot write the
    # data cache here (File exists)" after the whole build)
    assert main(["data", f"data.cache_dir={afile}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"scalelab: error: data cache folder {afile} exists and is not a folder: set "
        "data.cache_dir (or $SCALELAB_CACHE) to a folder"
    ]
    assert main(["data", f"data.cache_dir={afile / 'below'}"]) == 2  # a file above it
    assert capsys.readouterr().err.splitlines() == [
        f"scalelab: error: data cache folder {afile / 'below'} cannot be made ({afile} is not a "
        "folder): set data.cache_dir (or $SCALELAB_CACHE) to a folder"
    ]


def test_older_than_days_without_clear_is_one_line(capsys, tmp_path):
    # it was ignored: the command went on to build the default config's cache
    from scalelab.cli import main

    code = main(["data", "--older-than-days", "3", f"data.cache_dir={tmp_path}"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "scalelab: error: --older-than-days needs --clear (it picks the cache files to delete)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("days", ["nan", "inf"])
def test_clear_with_a_non_finite_age_is_one_line(cfg, capsys, days):
    # nan passed the `< 0` check and then compared false with every age: "removed 0 file(s)"
    from scalelab.cli import main

    data = prepare_data(cfg)
    folder = data.cache_path.parent
    code = main(["data", "--clear", "--older-than-days", days, f"data.cache_dir={folder}"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"scalelab: error: --older-than-days must be a finite number of days >= 0, got {days}"
    ]
    assert data.cache_path.is_file()


def test_a_cache_file_that_cannot_be_deleted_is_one_line(cfg, capsys, monkeypatch):
    from scalelab.cli import main

    data = prepare_data(cfg)
    folder = data.cache_path.parent
    # a folder with a cache file's name is not a cache file: listed and deleted never (was an
    # IsADirectoryError traceback from --clear)
    odd = folder / f"imdb-{'0' * 24}.npz"
    odd.mkdir()
    assert [e.path for e in cache.list_cache(folder)] == [data.cache_path]
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self == data.cache_path:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    assert main(["data", "--clear", f"data.cache_dir={folder}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"scalelab: error: {data.cache_path}: cannot delete this cache file (Permission denied); "
        "0 file(s) were deleted before it"
    ]
    monkeypatch.undo()
    assert main(["data", "--clear", f"data.cache_dir={folder}"]) == 0
    assert "removed 1 file(s)" in capsys.readouterr().out
    assert odd.is_dir() and not data.cache_path.exists()


def test_an_unreadable_vocab_file_is_one_line(cfg, tmp_path, monkeypatch):
    """No permission to read it (or an I/O error): was a PermissionError traceback."""
    from pathlib import Path as P

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    cfg.data.vocab_path = str(vocab)
    real = P.read_bytes

    def denied(self):
        if self == vocab:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(P, "read_bytes", denied)
    with pytest.raises(DataError, match=r"vocab\.txt: cannot read it \(\[Errno 13\] Permission"):
        prepare_data(cfg)


def test_a_data_file_changed_while_it_is_read_is_not_cached_under_the_old_key(cfg, monkeypatch):
    # The key hashes the files before they are parsed: content B was stored under A's key, and
    # a later run on A read B's examples as a cache hit.
    train = Path(cfg.data.train_path)
    real_load = cache.load_raw

    def rewritten_meanwhile(data_cfg):
        write_imdb(train, seed=7)  # another download finishing, an editor saving
        return real_load(data_cfg)

    monkeypatch.setattr(cache, "load_raw", rewritten_meanwhile)
    with pytest.raises(DataError, match=r"changed while they were read .*train\.csv"):
        prepare_data(cfg)
    assert not any(Path(cfg.data.cache_dir).glob("*.npz"))
    monkeypatch.setattr(cache, "load_raw", real_load)
    assert not prepare_data(cfg).cache_hit  # the files as they are now: built afresh
