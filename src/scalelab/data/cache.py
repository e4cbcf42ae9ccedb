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

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

from scalelab.config import Config
from scalelab.data.sources import DataError, RawData, load_raw, source_fingerprint
from scalelab.data.tokenizer import build_tokenizer, pad_id, prenormalize, vocab_fingerprint

#: Bump when the cached arrays or the cleaning/tokenisation change meaning.
CACHE_VERSION = 2


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


def _encode_ids(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    max_len = (tok.truncation or {}).get("max_length")
    word_local = isinstance(tok.normalizer, BertNormalizer) and isinstance(
        tok.pre_tokenizer, BertPreTokenizer
    )
    if not max_len or not word_local:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]
    # Long reviews are mostly cut off by truncation, yet the tokenizer would still normalise
    # and split all of them. Every word yields >= 1 token, so the first max_len words almost
    # always fill max_len tokens; BERT normalisation is per character and keeps spaces, and
    # tokens are per space-separated word, so that prefix then encodes exactly like the full
    # text. A prefix that comes up short (e.g. runs of spaces) is re-encoded in full.
    short, cut = [], []
    for i, text in enumerate(texts):
        parts = text.split(" ", max_len)
        if len(parts) > max_len:
            short.append(" ".join(parts[:max_len]))
            cut.append(i)
        else:
            short.append(text)
    bare, short = prenormalize(tok, short)  # same ids, less work in Rust
    encode = getattr(bare, "encode_batch_fast", bare.encode_batch)  # no offsets (>=0.21)
    ids = [e.ids for e in encode(short, add_special_tokens=True)]
    redo = [i for i in cut if len(ids[i]) < max_len]
    if redo:
        again = tok.encode_batch([texts[i] for i in redo], add_special_tokens=True)
        for i, enc in zip(redo, again, strict=True):
            ids[i] = enc.ids
    return ids


def encode_texts(tok: Tokenizer, texts: list[str], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise with the multi-threaded ``encode_batch`` and pad with vectorised numpy.

    Returns (tokens int32 [N, longest], lengths int64 [N]); truncation is the tokenizer's.
    """
    ids = _encode_ids(tok, texts)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    width = int(lengths.max()) if len(ids) else 0
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    tokens = np.full((len(ids), width), pad, dtype=np.int32)
    # Row-major boolean assignment fills each row's first `length` slots in order.
    tokens[np.arange(width) < lengths[:, None]] = flat
    return tokens, lengths


def _build(cfg: Config, raw: RawData) -> dict[str, np.ndarray]:
    tok = build_tokenizer(cfg.data, cfg.model.vocab_size, raw.train_texts, cfg.model.max_seq_len)
    pad = pad_id(tok)
    tr_tokens, tr_len = encode_texts(tok, raw.train_texts, pad)
    te_tokens, te_len = encode_texts(tok, raw.test_texts, pad)
    meta = {
        "num_classes": raw.num_classes,
        "vocab_size": tok.get_vocab_size(),
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
    """Write to a temp file in the same folder, then os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loading is a memcpy, not a decompression
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _split(arrays: dict[str, np.ndarray], name: str, pad: int) -> EncodedSplit:
    return EncodedSplit(
        tokens=torch.from_numpy(arrays[f"{name}_tokens"]),
        lengths=arrays[f"{name}_lengths"].astype(np.int64, copy=False),
        labels=torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64, copy=False)),
        pad_id=pad,
    )


def _assemble(arrays: dict[str, np.ndarray], path: Path, hit: bool, t0: float) -> EncodedData:
    meta = json.loads(arrays["meta_json"].tobytes().decode())
    pad = int(meta["pad_id"])
    return EncodedData(
        train=_split(arrays, "train", pad),
        test=_split(arrays, "test", pad),
        num_classes=int(meta["num_classes"]),
        vocab_size=int(meta["vocab_size"]),
        pad_id=pad,
        cache_path=path,
        cache_hit=hit,
        prep_time_s=time.perf_counter() - t0,
        description=meta["description"],
        tokenizer_json=arrays["tokenizer_json"].tobytes().decode(),
        max_seq_len=int(meta["max_seq_len"]),
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


def list_cache(folder: Path) -> list[CacheEntry]:
    """scalelab's cache files in `folder` (nothing else there is touched), oldest first."""
    entries = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        if not _CACHE_NAME.match(path.name):
            continue
        description, version = "", None
        try:
            with np.load(path, allow_pickle=False) as z:  # reads only the small meta array
                meta = json.loads(z["meta_json"].tobytes().decode())
            description, version = meta.get("description", ""), meta.get("cache_version")
        except (OSError, ValueError, KeyError):
            pass  # unreadable: listed (and removable) all the same
        st = path.stat()
        entries.append(
            CacheEntry(path, st.st_size, st.st_mtime, description, version == CACHE_VERSION)
        )
    return sorted(entries, key=lambda e: e.modified)


def clear_cache(folder: Path, older_than_s: float = 0.0) -> list[tuple[Path, int]]:
    """Delete scalelab's cache files (and leftover temp files) in `folder` last written more
    than `older_than_s` ago; return (path, bytes) of each. Other files are never touched."""
    now = time.time()
    doomed = [
        (e.path, e.size_bytes) for e in list_cache(folder) if e.modified <= now - older_than_s
    ]
    for p in folder.iterdir() if folder.is_dir() else []:
        st = p.stat()
        # a temp file younger than an hour may be a build in progress
        if _TEMP_NAME.match(p.name) and st.st_mtime <= now - max(older_than_s, 3600.0):
            doomed.append((p, st.st_size))
    for path, _ in doomed:
        path.unlink(missing_ok=True)
    return doomed


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
        return _assemble(_read(path), path, True, t0)

    try:
        fingerprint, raw = _fingerprint(cfg)
        path = cache_file(cfg, fingerprint)
        arrays: dict[str, np.ndarray] | None = None
        if path.is_file():
            try:
                arrays = _read(path)
            except (OSError, ValueError, KeyError):  # corrupt or foreign file: rebuild it
                arrays = None
        hit = arrays is not None
        if arrays is None:
            arrays = _build(cfg, raw or load_raw(cfg.data))
            _write_atomic(path, arrays)
    except BaseException:
        barrier()  # release the other ranks; they find no cache and raise instead of hanging
        raise
    barrier()
    return _assemble(arrays, path, hit, t0)


def _fingerprint(cfg: Config) -> tuple[str, RawData | None]:
    """Source fingerprint; cheap (file hashes) except for hf, where the texts are hashed."""
    if cfg.data.source == "hf":
        raw = load_raw(cfg.data)  # HF keeps its own local cache of the download
        return raw.fingerprint, raw
    return source_fingerprint(cfg.data), None
