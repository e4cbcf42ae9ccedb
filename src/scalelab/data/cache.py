"""Encode a dataset once, cache it as one ``.npz``, and load it in well under a second after.

DDP protocol (deadlock-free, every rank calls ``barrier()`` exactly once): one builder per node
(``is_main``: the trainer passes local rank 0, so a cluster without a shared cache folder works)
builds and writes the cache if missing, then calls ``barrier()``; the other ranks call
``barrier()`` first and then load the file their node's builder wrote. If a builder fails it
still reaches the barrier before re-raising, so the others fail with a clear error instead of
hanging. With a shared cache folder several nodes' builders may write the same file at once:
each writes its own temp file and renames it into place (atomic, same content), so a reader
always sees one complete file.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import re
import tempfile
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from scalelab.checkpoint import PLAIN_FILE_MODE
from scalelab.config import Config, not_a_folder
from scalelab.data.forked import forked
from scalelab.data.sources import (
    DataError,
    RawData,
    check_splits,
    describe,
    load_raw,
    source_fingerprint,
    split_paths,
)
from scalelab.data.tokenizer import (
    NOT_PLAIN_CHAR,
    check_ids,
    id_space,
    split_not_plain,
    tokenizer_and_pad_id,
    vocab_fingerprint,
)

#: Bump when the cached arrays or the cleaning/tokenisation change meaning.
CACHE_VERSION = 4  # 3: trained vocabularies no longer vary between builds; 4: vocab.txt split
# at "\n" only, normalized added tokens, <br> in any case (the encoded ids of older caches differ)


@dataclass
class EncodedSplit:
    """One split, padded to its own longest sequence (capped at max_seq_len)."""

    tokens: torch.Tensor  # int32 [N, L], padded with pad_id
    lengths: np.ndarray  # int64 [N], host copy (batch lengths are computed without a sync)
    labels: torch.Tensor  # int64 [N]
    pad_id: int = 0
    lengths_t: torch.Tensor | None = None  # int64 [N] on tokens.device, for attention masks

    def __post_init__(self) -> None:
        if self.lengths_t is None:
            self.lengths_t = torch.from_numpy(self.lengths).to(self.tokens.device)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the split, [CLS]/[SEP] included."""
        return int(self.lengths.sum())

    def to(self, device: torch.device | str) -> EncodedSplit:
        """Copy whose tensors live on ``device``; ``lengths`` stays a host numpy array."""
        assert self.lengths_t is not None
        return replace(
            self,
            tokens=self.tokens.to(device),
            labels=self.labels.to(device),
            lengths_t=self.lengths_t.to(device),
        )


@dataclass
class EncodedData:
    train: EncodedSplit
    test: EncodedSplit
    num_classes: int
    vocab_size: int  # actual size of the tokenizer's vocabulary
    pad_id: int
    cache_path: Path
    cache_hit: bool
    prep_time_s: float
    description: str
    tokenizer_json: str = ""
    max_seq_len: int = 0
    warnings: tuple[str, ...] = ()  # one line each: what about the data deserves a look

    def to(self, device: torch.device | str) -> EncodedData:
        """Copy whose splits live on ``device`` (a step then gathers batches there, no host work)."""
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the data was encoded with (e.g. to encode new text for inference)."""
        return Tokenizer.from_str(self.tokenizer_json)


def default_cache_dir(cache_dir: str = "") -> Path:
    """``cache_dir`` or $SCALELAB_CACHE or ~/.cache/scalelab."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SCALELAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scalelab"


def cache_key(cfg: Config, raw_fingerprint: str) -> str:
    """sha256 over everything that changes the encoded arrays."""
    d = cfg.data
    parts = {
        "version": CACHE_VERSION,
        "fingerprint": raw_fingerprint,
        "dataset": d.dataset,
        # vocab_size only matters when a tokenizer is trained.
        "vocab_size": cfg.model.vocab_size if not d.vocab_path else None,
        "vocab": vocab_fingerprint(d),
        "lowercase": d.lowercase,
        "max_seq_len": cfg.model.max_seq_len,
        "max_train_samples": d.max_train_samples,
        "max_test_samples": d.max_test_samples,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# BERT pre-tokenisation of printable ASCII: runs of letters and digits are words, and every other
# non-space character is a word by itself (each ASCII symbol is punctuation to BERT).
_ASCII_WORDS = re.compile(r"[^\W_]+|[^\w\s]|_", re.ASCII)
# Between texts when many are split in one `str.split`: a whitespace-separated item of its own (a
# control character: never part of a plain text, and other texts' such pieces are stood in for).
_TEXT_END = "\x00"
_CHUNK_TEXTS = 4096  # texts per `str.split` (bounds the temporary item strings)
# NOT_PLAIN_CHAR for texts joined with " \x00 ": the text ends stay as they are.
_NOT_PLAIN_BUT_END = re.compile(r"[^\x00\t\n\r -~]")


def _word_path(tok: Tokenizer) -> tuple[Tokenizer, list[int], list[int]] | None:
    """(tokenizer without normaliser and truncation, ids before, ids after a text) when a text's
    ids can be composed word by word, else None.

    BERT-style tokenizers (BertNormalizer, BertPreTokenizer, WordPiece) encode every word on its
    own: a text's ids are its words' ids in order, then truncation, then the template's ids.
    """
    if not (
        isinstance(tok.normalizer, BertNormalizer)
        and isinstance(tok.pre_tokenizer, BertPreTokenizer)
        and isinstance(tok.model, WordPiece)
        and (tok.truncation or {}).get("direction", "right") == "right"
    ):
        return None
    inner = tok.encode("a", add_special_tokens=False).ids
    outer = tok.encode("a", add_special_tokens=True).ids
    k = next((i for i in range(len(outer)) if outer[i : i + len(inner)] == inner), None)
    if k is None:
        return None
    words = Tokenizer.from_str(tok.to_str())
    words.normalizer = None  # plain-ASCII words arrive normalised
    words.no_truncation()
    return words, outer[:k], outer[k + len(inner) :]


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens)])``, vectorised: the
    index goes up by one inside a range and jumps to the next range's start, a cumsum of steps."""
    some = np.flatnonzero(lens)
    starts, lens = starts[some], lens[some]
    step = np.ones(int(lens.sum()), np.int64)
    if len(some):
        step[0] = starts[0]
        first = np.cumsum(lens) - lens
        step[first[1:]] = starts[1:] - (starts[:-1] + lens[:-1] - 1)
    return np.cumsum(step)


def _encode_by_words(
    tok: Tokenizer, path: tuple[Tokenizer, list[int], list[int]], texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``tok.encode_batch(texts)`` for a BERT-style tokenizer, given its `_word_path`,
    computed once per distinct whitespace-separated item. Returns (lengths int64 [N], ids int32
    [sum]).

    ``encode_batch`` spends about 1 us of Rust per word (normalisation, pre-tokenisation and
    WordPiece, with alignment bookkeeping): ~10 s per 25k IMDB reviews on 2 cores. Texts repeat
    their words, so here `str.split` cuts them at whitespace, a dict numbers the distinct items,
    each distinct item is encoded once, and numpy gathers each text's ids and truncates. On
    printable ASCII, BERT normalisation is `str.lower` (or nothing) and `_ASCII_WORDS` is BERT's
    pre-tokeniser. A space-separated piece that is not printable ASCII is replaced by a stand-in
    item (``\\x01<n>\\x02``) and goes whole through the real tokenizer: normalisation works character by character
    and spaces end words, so the piece encodes as it does inside its text.
    """
    words_tok, before, after = path
    lowercase = tok.normalizer.normalize_str("A") == "a"  # type: ignore[union-attr]
    # distinct items -> number; an unseen item gets the next number as it is looked up
    index: defaultdict[str, int] = defaultdict()
    index.default_factory = index.__len__
    index[_TEXT_END] = 0
    others: dict[str, int] = {}  # pieces that are not printable ASCII -> stand-in number
    parts = []
    sep = f" {_TEXT_END} "

    def stand_ins(text: str, not_plain: re.Pattern[str]) -> str:
        parts = split_not_plain(text, not_plain)
        for j in range(1, len(parts), 2):
            parts[j] = f"\x01{others.setdefault(parts[j], len(others))}\x02"
        return "".join(parts)

    for i in range(0, len(texts), _CHUNK_TEXTS):
        chunk = texts[i : i + _CHUNK_TEXTS]
        joined = sep.join(chunk) + sep
        if joined.count(_TEXT_END) == len(chunk):  # one pass over the whole chunk
            joined = stand_ins(joined, _NOT_PLAIN_BUT_END)
        else:  # a text holds the text-end character itself
            joined = sep.join(stand_ins(t, NOT_PLAIN_CHAR) for t in chunk) + sep
        items = (joined.lower() if lowercase else joined).split()
        parts.append(np.fromiter(map(index.__getitem__, items), np.int64, count=len(items)))
    item_seq = np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # The ids of every distinct item: its words' WordPiece ids (each distinct word encoded once,
    # in one pre-tokenised call), or for a stand-in the full tokenizer's ids of its piece (which
    # may be none at all, e.g. for a lone accent).
    vocab = list(index)  # in number order
    special = np.asarray([index[f"\x01{k}\x02"] for k in range(len(others))], np.int64)
    not_plain = np.zeros(len(vocab), bool)
    not_plain[special] = True
    not_plain[0] = True  # the text end
    plain = np.flatnonzero(~not_plain)
    plain_items = [vocab[j] for j in plain.tolist()]
    words_of = [[w] if w.isalnum() else _ASCII_WORDS.findall(w) for w in plain_items]
    words_per_item = np.fromiter(map(len, words_of), np.int64, count=len(plain))
    word_index: defaultdict[str, int] = defaultdict()
    word_index.default_factory = word_index.__len__
    word_seq = np.fromiter(
        map(word_index.__getitem__, chain.from_iterable(words_of)),
        np.int64,
        count=int(words_per_item.sum()),
    )
    distinct_words = list(word_index)
    enc = words_tok.encode(distinct_words, is_pretokenized=True, add_special_tokens=False)
    word_ids = np.asarray(enc.ids, np.int32)
    ids_per_word = np.bincount(np.asarray(enc.word_ids, np.int64), minlength=len(distinct_words))
    word_id_start = np.cumsum(ids_per_word) - ids_per_word
    # Each plain item's ids: its words' ids one after another.
    n_w = ids_per_word[word_seq]
    plain_ids = word_ids[_ranges(word_id_start[word_seq], n_w)]
    per_item = np.zeros(len(vocab), np.int64)  # ids per distinct item; 0 for the text end
    if len(plain):
        word_start = np.cumsum(words_per_item) - words_per_item
        per_item[plain] = np.add.reduceat(n_w, word_start) if len(n_w) else 0
    piece_start = np.zeros(len(vocab), np.int64)
    piece_start[plain] = np.cumsum(per_item[plain]) - per_item[plain]
    piece_ids = [plain_ids]
    if len(special):
        raw = list(others)
        full = Tokenizer.from_str(tok.to_str())
        full.no_truncation()
        encs = full.encode_batch(
            [raw[int(vocab[j][1:-1])] for j in special], add_special_tokens=False
        )
        per_item[special] = [len(e.ids) for e in encs]
        piece_start[special] = len(plain_ids) + np.cumsum(per_item[special]) - per_item[special]
        piece_ids += [np.asarray(e.ids, np.int32) for e in encs]
    all_ids = np.concatenate(piece_ids)

    # Cut every text at the truncation length (whole items, and the first ids of the item that
    # crosses it), then expand each kept item occurrence into its ids.
    n = per_item[item_seq]
    item_tok_start = np.cumsum(n) - n
    ends = np.flatnonzero(item_seq == 0)  # one per text, in order
    firsts = np.concatenate(([0], ends[:-1] + 1))
    text_tok_start = item_tok_start[firsts]
    text_tokens = item_tok_start[ends] - text_tok_start  # before truncation
    max_len = (tok.truncation or {}).get("max_length")
    kept = text_tokens
    if max_len:
        kept = np.minimum(text_tokens, max(0, max_len - len(before) - len(after)))
    room = np.repeat(text_tok_start + kept, ends - firsts + 1) - item_tok_start
    n_kept = np.clip(room, 0, n)
    # Each text: the template's ids before, its kept ids, the template's ids after.
    lengths = kept + len(before) + len(after)
    out = np.empty(int(lengths.sum()), np.int32)
    out_start = np.cumsum(lengths) - lengths
    out[_ranges(out_start + len(before), kept)] = all_ids[_ranges(piece_start[item_seq], n_kept)]
    for j, t in enumerate(before):
        out[out_start + j] = t
    for j, t in enumerate(after):
        out[out_start + len(before) + kept + j] = t
    return lengths, out


def encode_texts(tok: Tokenizer, texts: list[str], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise exactly as ``tok.encode_batch`` would, and pad with vectorised numpy.

    BERT-style tokenizers compose ids word by word (`_encode_by_words`); texts holding one of
    the tokenizer's added tokens, and other tokenizers, go through ``encode_batch``.
    Returns (tokens int32 [N, longest], lengths int64 [N]); truncation is the tokenizer's.
    """
    lengths = np.zeros(len(texts), np.int64)
    by_words: list[int] = []
    path = _word_path(tok)
    if path is not None:
        tokens = list(tok.get_added_tokens_decoder().values())
        added = [a.content for a in tokens]
        # a normalized added token (add_tokens' default) is matched in the normalised text:
        # "COVID_19" finds "covid_19" under a lowercasing normalizer
        norm = tok.normalizer
        normed = [norm.normalize_str(a.content) for a in tokens if a.normalized] if norm else []

        def plain(t: str) -> bool:
            if any(a in t for a in added):
                return False
            return not normed or not any(a in norm.normalize_str(t) for a in normed)

        by_words = [i for i, t in enumerate(texts) if plain(t)]
    chosen = np.zeros(len(texts), bool)
    chosen[by_words] = True
    rest = np.flatnonzero(~chosen).tolist()
    flat = np.zeros(0, np.int32)
    if by_words:
        lengths[by_words], flat = _encode_by_words(tok, path, [texts[i] for i in by_words])
    rows = (
        [np.asarray(e.ids, np.int32) for e in tok.encode_batch([texts[i] for i in rest])]
        if rest
        else []
    )
    for i, row in zip(rest, rows, strict=True):
        lengths[i] = len(row)
    width = int(lengths.max()) if len(texts) else 0
    tokens = np.full((len(texts), width), pad, dtype=np.int32)
    if by_words:
        sub = tokens[by_words]
        # Row-major boolean assignment fills each row's first `length` slots in order.
        sub[np.arange(width) < lengths[by_words][:, None]] = flat
        tokens[by_words] = sub
    for i, row in zip(rest, rows, strict=True):
        tokens[i, : len(row)] = row
    return tokens, lengths


# Both splits encode at once (the test split in a forked child process) when each has at least
# this many texts: encoding is Python work on one core, ~5 s per 25k IMDB reviews here.
_PARALLEL_MIN_TEXTS = 2000


def _encode_splits(
    tok: Tokenizer, train_texts: list[str], test_texts: list[str], pad: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``encode_texts`` of both splits, the test split in a forked child where that pays."""
    big = min(len(train_texts), len(test_texts)) >= _PARALLEL_MIN_TEXTS
    with forked(encode_texts, tok, test_texts, pad, enabled=big) as test:
        return encode_texts(tok, train_texts, pad), test()


def _build(cfg: Config, raw: RawData) -> dict[str, np.ndarray]:
    tok, pad = tokenizer_and_pad_id(
        cfg.data, cfg.model.vocab_size, raw.train_texts, cfg.model.max_seq_len
    )
    (tr_tokens, tr_len), (te_tokens, te_len) = _encode_splits(
        tok, raw.train_texts, raw.test_texts, pad
    )
    space = id_space(tok)  # ids run 0..space-1 (a vocab.txt may repeat lines)
    largest = max((int(t.max()) for t in (tr_tokens, te_tokens) if t.size), default=0)
    check_ids(space, pad, largest, cfg.data.vocab_path or "the trained tokenizer")
    meta = {
        "num_classes": raw.num_classes,
        "vocab_size": space,
        "pad_id": pad,
        "description": raw.description,
        "max_seq_len": cfg.model.max_seq_len,
        "cache_version": CACHE_VERSION,
    }
    return {
        "train_tokens": tr_tokens,
        "train_lengths": tr_len,
        "train_labels": raw.train_labels.astype(np.int64),
        "test_tokens": te_tokens,
        "test_lengths": te_len,
        "test_labels": raw.test_labels.astype(np.int64),
        # Strings as uint8 arrays so loading never needs allow_pickle.
        "tokenizer_json": np.frombuffer(tok.to_str().encode(), dtype=np.uint8),
        "meta_json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temp file in the same folder, then os.replace: readers never see a partial file.

    The file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's 0600,
    so a cache folder shared by a group stays readable by it.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except OSError as exc:
        raise DataError(
            f"{path.parent}: cannot write the data cache here ({exc.strerror or exc}); "
            "set data.cache_dir (or $SCALELAB_CACHE) to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loading is a memcpy, not a decompression
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PLAIN_FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write the data cache ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: The arrays of a cache file, and the fields of its meta_json.
_ARRAYS = frozenset(
    f"{split}_{part}" for split in ("train", "test") for part in ("tokens", "lengths", "labels")
) | {"tokenizer_json", "meta_json"}
_META = frozenset({"num_classes", "vocab_size", "pad_id", "max_seq_len", "cache_version"})
#: What reading a damaged (truncated, bit-flipped, empty) or foreign .npz raises.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _read_meta(z: np.lib.npyio.NpzFile) -> dict:
    meta = json.loads(z["meta_json"].tobytes().decode())
    if not isinstance(meta, dict) or not meta.keys() >= _META:
        raise ValueError("not a scalelab cache file (meta_json lacks its fields)")
    # counts and ids are whole numbers >= 0 (a hand-made file: read as unreadable, rebuilt)
    if bad := [
        k
        for k in sorted(_META)
        if not (type(meta[k]) is int and meta[k] >= 0)  # noqa: E721
    ]:
        raise ValueError(f"not a scalelab cache file (meta_json {', '.join(bad)} not counts)")
    return meta


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of a cache file; raises one of ``_UNREADABLE`` for a damaged or foreign one."""
    with np.load(path, allow_pickle=False) as z:
        missing = _ARRAYS - set(z.files)
        if missing:
            raise KeyError(f"not a scalelab cache file (no {', '.join(sorted(missing))})")
        meta = _read_meta(z)
        arrays = {k: z[k] for k in z.files}  # reading checks each array's CRC
    _check_arrays(arrays, meta)
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], meta: dict) -> None:
    """The splits' arrays fit together as `_build` writes them (raises ValueError: rebuilt);
    a file whose labels or lengths are not its tokens' would index past them mid-training."""
    for split in ("train", "test"):
        tokens, lengths, labels = (arrays[f"{split}_{p}"] for p in ("tokens", "lengths", "labels"))
        n = len(lengths)
        if not (
            tokens.ndim == 2 and lengths.ndim == 1 and labels.ndim == 1
            and all(a.dtype.kind in "iu" for a in (tokens, lengths, labels))
            and tokens.shape[0] == n == len(labels) and tokens.shape[1] <= meta["max_seq_len"]
        ):  # fmt: skip
            raise ValueError(f"not a scalelab cache file ({split} arrays do not fit together)")
        if n and not (
            lengths.min() >= 0 and lengths.max() <= tokens.shape[1]
            and labels.min() >= 0 and labels.max() < meta["num_classes"]
            and (not tokens.size or (tokens.min() >= 0 and tokens.max() < meta["vocab_size"]))
        ):  # fmt: skip
            raise ValueError(
                f"not a scalelab cache file ({split} lengths, labels or ids out of range)"
            )


def _split(arrays: dict[str, np.ndarray], name: str, pad: int) -> EncodedSplit:
    return EncodedSplit(
        tokens=torch.from_numpy(arrays[f"{name}_tokens"]),
        lengths=arrays[f"{name}_lengths"].astype(np.int64, copy=False),
        labels=torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64, copy=False)),
        pad_id=pad,
    )


def _assemble(
    cfg: Config, arrays: dict[str, np.ndarray], path: Path, hit: bool, t0: float
) -> EncodedData:
    meta = json.loads(arrays["meta_json"].tobytes().decode())
    pad = int(meta["pad_id"])
    train, test = _split(arrays, "train", pad), _split(arrays, "test", pad)
    num_classes = int(meta["num_classes"])
    # on every load, a cache hit too: the warnings are about the files the config names
    warnings = check_splits(cfg.data, arrays["train_labels"], arrays["test_labels"])
    vocab_size = int(meta["vocab_size"])
    if not cfg.data.vocab_path and vocab_size > cfg.model.vocab_size:
        # the WordPiece trainer keeps every character it saw (an unknown one would be [UNK])
        warnings.append(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the special tokens and "
            f"single characters of the training texts: the vocabulary has {vocab_size} tokens"
        )
    return EncodedData(
        train=train,
        test=test,
        num_classes=num_classes,
        vocab_size=vocab_size,
        pad_id=pad,
        cache_path=path,
        cache_hit=hit,
        prep_time_s=time.perf_counter() - t0,
        # From this config, not the cache: the key is the files' content, so a cache built from
        # a copy elsewhere (or the bundled sample) would otherwise name the other files.
        description=describe(cfg.data, len(train.labels), len(test.labels), num_classes),
        tokenizer_json=arrays["tokenizer_json"].tobytes().decode(),
        max_seq_len=int(meta["max_seq_len"]),
        warnings=tuple(warnings),
    )


def cache_file(cfg: Config, raw_fingerprint: str) -> Path:
    """Where the encoded data for ``cfg`` lives."""
    key = cache_key(cfg, raw_fingerprint)
    return default_cache_dir(cfg.data.cache_dir) / f"{cfg.data.dataset}-{key[:24]}.npz"


# What `cache_file` names (dataset-<24 hex>.npz) and what an interrupted `_write_atomic` leaves.
_CACHE_NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{24}\.npz$")
_TEMP_NAME = re.compile(r"^\.[a-z0-9_]+-[0-9a-f]{24}\..*\.tmp$")


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size_bytes: int
    modified: float  # seconds since the epoch
    description: str  # the dataset and files it was encoded from ('' if unreadable)
    current: bool  # written by this scalelab's cache version (older ones are never read again)
    readable: bool = True  # False: damaged or foreign (a run that needs it rebuilds it)


def _cache_folder_entries(folder: Path) -> list[Path]:
    """What `folder` holds, sorted; [] where it does not exist yet. A file in its place, or a
    folder that cannot be read, is one DataError line."""
    if not folder.exists():
        return []
    _check_cache_folder(folder)
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(
            f"{folder}: cannot read the data cache folder ({exc.strerror or exc})"
        ) from None


def _check_cache_folder(folder: Path) -> None:
    why = not_a_folder(folder)
    if why:
        raise DataError(
            f"data cache folder {folder} {why}: set data.cache_dir (or $SCALELAB_CACHE) to a folder"
        )


def list_cache(folder: Path) -> list[CacheEntry]:
    """scalelab's cache files in `folder` (nothing else there is touched), oldest first."""
    entries = []
    for path in _cache_folder_entries(folder):
        if not _CACHE_NAME.match(path.name) or not path.is_file():
            continue
        description, version, readable = "", None, True
        try:
            with np.load(path, allow_pickle=False) as z:  # reads only the small meta array
                meta = _read_meta(z)
            description, version = meta.get("description", ""), meta.get("cache_version")
        except _UNREADABLE:
            description, readable = "(unreadable: damaged or not a scalelab cache file)", False
        try:
            st = path.stat()
        except FileNotFoundError:  # removed meanwhile
            continue
        entries.append(
            CacheEntry(
                path, st.st_size, st.st_mtime, description, version == CACHE_VERSION, readable
            )
        )
    return sorted(entries, key=lambda e: e.modified)


def clear_cache(folder: Path, older_than_s: float = 0.0) -> list[tuple[Path, int]]:
    """Delete scalelab's cache files (and leftover temp files) in `folder` last written more
    than `older_than_s` ago; return (path, bytes) of each. Other files are never touched."""
    if math.isnan(older_than_s) or older_than_s < 0:  # nan would compare false: delete nothing
        raise ValueError(f"older_than_s must be >= 0, got {older_than_s}")
    now = time.time()
    doomed = [
        (e.path, e.size_bytes) for e in list_cache(folder) if e.modified <= now - older_than_s
    ]
    for p in _cache_folder_entries(folder):
        if not _TEMP_NAME.match(p.name) or not p.is_file():
            continue
        try:
            st = p.stat()
        except FileNotFoundError:  # renamed into place meanwhile
            continue
        # a temp file younger than an hour may be a build in progress
        if st.st_mtime <= now - max(older_than_s, 3600.0):
            doomed.append((p, st.st_size))
    gone = []
    for path, size in doomed:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # e.g. a read-only or another user's cache folder
            raise DataError(
                f"{path}: cannot delete this cache file ({exc.strerror or exc}); "
                f"{len(gone)} file(s) were deleted before it"
            ) from None
        gone.append((path, size))
    return gone


def prepare_data(
    cfg: Config,
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> EncodedData:
    """Load the encoded dataset from the cache, building it first (where ``is_main``) if needed.

    ``is_main`` marks this node's builder (one per node, or one per shared cache folder). Every
    rank calls ``barrier()`` exactly once. Tensors are returned on the CPU; move them with
    ``EncodedSplit.to(device)``.
    """
    t0 = time.perf_counter()
    if not is_main:
        barrier()
        path = cache_file(cfg, _fingerprint(cfg)[0])
        if not path.is_file():
            raise DataError(
                f"{path}: data cache missing after this node's local rank 0 prepared it "
                "(see its error)"
            )
        try:
            arrays = _read(path)
        except _UNREADABLE as exc:
            raise DataError(
                f"{path}: data cache unreadable after this node's local rank 0 prepared it "
                f"({type(exc).__name__}: {exc}); is data.cache_dir shared and being rewritten?"
            ) from None
        return _assemble(cfg, arrays, path, True, t0)

    try:
        _check_cache_folder(default_cache_dir(cfg.data.cache_dir))  # before any file is read
        fingerprint, raw = _fingerprint(cfg)
        path = cache_file(cfg, fingerprint)
        arrays: dict[str, np.ndarray] | None = None
        if path.is_file():
            try:
                arrays = _read(path)
            except _UNREADABLE:  # damaged or foreign file: rebuild it (atomically replaced)
                arrays = None
        hit = arrays is not None
        if arrays is None:
            if raw is None:
                raw = load_raw(cfg.data)
                if raw.fingerprint != fingerprint:  # stored under the key of other content
                    raise DataError(
                        f"the data files of {cfg.data.dataset} changed while they were read "
                        f"({', '.join(map(str, split_paths(cfg.data)))}); run again once "
                        "they are complete"
                    )
            with _gc_paused():
                arrays = _build(cfg, raw)
            _write_atomic(path, arrays)
    except BaseException:
        barrier()  # release the other ranks; they find no cache and raise instead of hanging
        raise
    barrier()
    return _assemble(cfg, arrays, path, hit, t0)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a cache allocates millions of small lists
    and strings (no cycles among them), and each automatic collection would scan every one of
    them; that doubled the time of the Python side of encoding."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fingerprint(cfg: Config) -> tuple[str, RawData | None]:
    """Source fingerprint; cheap (file hashes) except for hf, where the texts are hashed."""
    if cfg.data.source == "hf":
        raw = load_raw(cfg.data)  # HF keeps its own local cache of the download
        return raw.fingerprint, raw
    return source_fingerprint(cfg.data), None
