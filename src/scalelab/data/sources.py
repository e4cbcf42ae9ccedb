"""Raw text sources: the bundled sample, user files (CSV / aclImdb tree) and Hugging Face.

Everything here returns plain Python strings and int64 label arrays; tokenisation and
caching live in :mod:`scalelab.data.tokenizer` and :mod:`scalelab.data.cache`.

Light text cleaning (kept deliberately small so results stay comparable to the literature):

* AG News: text = title + " " + description. The source's escape artefacts are undone:
  a backslash (where a line break was) becomes a space; `` #39;`` -> ``'``, `` #36;`` -> ``$``,
  ``quot;`` -> ``"``, ``amp;`` -> ``&``, ``&lt;``/``&gt;`` -> ``<``/``>``. Whitespace runs
  collapse to one space.
* IMDB: ``<br />`` tags become a space (other whitespace is left to the tokenizer).

Malformed input raises :class:`DataError` whose one-line message names the file and the
1-based line number, so a user can open the file at that line.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import re
import stat
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from scalelab.config import DataConfig
from scalelab.data.forked import forked

NUM_CLASSES = {"ag_news": 4, "imdb": 2}

#: Files of the bundled sample per dataset (see ``bundled/README.md``).
SAMPLE_FILES = {
    "ag_news": ("ag_news_train.csv.gz", "ag_news_test.csv.gz"),
    "imdb": ("imdb_train.csv.gz", "imdb_test.csv.gz"),
}

#: Seed of the random subset taken for data.max_train_samples / max_test_samples.
SUBSET_SEED = 0

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_FIELD_CHARS = 2**31 - 1  # one CSV field (a text) may be as long as it likes


class DataError(ValueError):
    """Unusable input data; the message is one line naming the file (and line when known)."""


@dataclass
class RawData:
    """Cleaned texts and 0-based labels of both splits."""

    train_texts: list[str]
    train_labels: np.ndarray  # int64 [N]
    test_texts: list[str]
    test_labels: np.ndarray  # int64 [N]
    num_classes: int
    description: str
    fingerprint: str  # sha256 hex of the source bytes (or of the text content for hf)


# --------------------------------------------------------------------------- cleaning

# Order matters: ' #39;' must be replaced before the generic whitespace collapse.
_AG_REPLACEMENTS = (
    ("\\", " "),
    (" #39;", "'"),
    (" #36;", "$"),
    ("quot;", '"'),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&amp;", "&"),
    (" amp;", "&"),
)
_WS = re.compile(r"\s+")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_ag_news(text: str) -> str:
    """Undo AG News escape artefacts (see module docstring) and collapse whitespace."""
    for old, new in _AG_REPLACEMENTS:
        if old in text:
            text = text.replace(old, new)
    return _WS.sub(" ", text).strip()


def clean_imdb(text: str) -> str:
    """Replace IMDB's ``<br />`` tags by spaces (whitespace is left to the tokenizer)."""
    # str.replace handles the only form in the release ~20x faster than the regex.
    text = text.replace("<br />", " ")
    if "<" in text:  # other spellings, in any case (<BR>, <Br/>)
        text = _BR.sub(" ", text)
    return text.strip()


# --------------------------------------------------------------------------- helpers


def bundled_dir() -> Path:
    """Folder of the files shipped with the package (sample data, BERT vocab)."""
    return Path(str(resources.files("scalelab.data") / "bundled"))


def resolve_path(path: str) -> Path:
    """Expand ``bundled:<file>`` to the shipped file; other paths are used as given."""
    if path.startswith("bundled:"):
        return bundled_dir() / path[len("bundled:") :]
    return Path(path).expanduser()


def path_kind(path: Path) -> str:
    """'file', 'folder', 'missing' or 'other' (a pipe, socket or device). A path that cannot be
    looked at (no permission on a folder above it, a name too long, a link loop) is one line:
    Path.exists() and is_dir() raise those errors."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise DataError(f"{path}: cannot access it ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        return "file"
    return "folder" if stat.S_ISDIR(mode) else "other"


def _read_bytes(path: Path) -> tuple[str, bytes, bool]:
    """(sha256 of the bytes as stored, content gunzipped when gzip -- detected by magic --,
    whether it was)."""
    kind = path_kind(path)
    if kind == "missing":
        raise DataError(f"{path}: file not found")
    if kind == "folder":
        raise DataError(f"{path}: is a folder, expected a CSV file")
    data = _read_file(path)
    digest = _sha256(data)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # zlib.error: damaged deflate data
            raise DataError(f"{path}: corrupt gzip file ({exc})") from None
        return digest, data, True
    return digest, data, False


def _read_file(path: Path) -> bytes:
    if path_kind(path) == "other":
        # a named pipe or device: reading it could block forever (or never end)
        raise DataError(f"{path}: not a regular file (a pipe, socket or device); give a file")
    try:
        return path.read_bytes()
    except OSError as exc:  # permissions, a dangling link, an I/O error
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _decode(path: Path, data: bytes, gzipped: bool = False) -> str:
    if data.startswith(codecs.BOM_UTF8):  # as Excel and Notepad write UTF-8
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if gzipped:
            raise DataError(
                f"{path}: its gzip content is not UTF-8 text (byte 0x{data[exc.start]:02x} on "
                f"line {line}); re-save the file as UTF-8 and compress it again"
            ) from None
        if path.suffix.lower() == ".gz":  # a plain CSV named .gz reads; random bytes do not
            raise DataError(
                f"{path}: named .gz but neither a gzip file (no gzip header) nor UTF-8 text "
                f"(byte 0x{data[exc.start]:02x} on line {line})"
            ) from None
        raise DataError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8"
        ) from None


def _csv_rows(path: Path, text: str) -> Iterable[tuple[int, list[str]]]:
    """Yield (1-based first line of the record, fields); records may span lines."""
    # Python's default field limit (128 KiB) would reject long documents as "malformed"
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD_CHARS))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}: line {start}: malformed CSV ({exc})") from None


def _parse_label(path: Path, line: int, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise DataError(f"{path}: line {line}: label {raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise DataError(f"{path}: line {line}: label {value} out of range {lo}..{hi}")
    return value


def _sha256(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# --------------------------------------------------------------------------- readers


def read_ag_news_csv(path: Path) -> tuple[list[str], np.ndarray, str]:
    """AG News layout: no header, ``"class","title","description"``, class 1..4 -> 0..3."""
    digest, data, gzipped = _read_bytes(path)
    text = _decode(path, data, gzipped)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    texts: list[str] = []
    labels: list[int] = []
    for line, row in _csv_rows(path, text):
        if not row:  # blank line (e.g. trailing newline at the end of the file)
            continue
        if len(row) != 3:
            raise DataError(
                f'{path}: line {line}: expected 3 fields "class","title","description", '
                f"got {len(row)}"
            )
        if line == 1 and not row[0].strip().lstrip("+-").isdigit():
            raise DataError(
                f"{path}: line 1: label {row[0]!r} is not an integer (the AG News layout has no "
                'header: every line is "class","title","description" with class 1..4)'
            )
        label = _parse_label(path, line, row[0], 1, 4)
        body = clean_ag_news(row[1] + " " + row[2])
        if not body:
            raise DataError(f"{path}: line {line}: empty text")
        texts.append(body)
        labels.append(label - 1)
    if not texts:
        raise DataError(f"{path}: file is empty")
    return texts, np.asarray(labels, dtype=np.int64), digest


def read_imdb_csv(path: Path) -> tuple[list[str], np.ndarray, str]:
    """IMDB layout: header ``text,label`` (any column order), label 0 (neg) / 1 (pos)."""
    digest, data, gzipped = _read_bytes(path)
    text = _decode(path, data, gzipped)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    rows = iter(_csv_rows(path, text))
    _, header = next(rows)
    names = [h.strip().lower() for h in header]
    if "text" not in names or "label" not in names:
        raise DataError(
            f"{path}: line 1: expected a header with columns text,label, got "
            f"{[cell if len(cell) <= 40 else cell[:37] + '...' for cell in header]!r}"
        )
    for column in ("text", "label"):
        if names.count(column) > 1:
            raise DataError(
                f"{path}: line 1: column {column!r} appears {names.count(column)} times in the "
                "header; it may appear once"
            )
    ti, li, ncol = names.index("text"), names.index("label"), len(names)
    texts: list[str] = []
    labels: list[int] = []
    for line, row in rows:
        if not row:
            continue
        if len(row) != ncol:
            raise DataError(f"{path}: line {line}: expected {ncol} fields, got {len(row)}")
        label = _parse_label(path, line, row[li], 0, 1)
        body = clean_imdb(row[ti])
        if not body:
            raise DataError(f"{path}: line {line}: empty text")
        texts.append(body)
        labels.append(label)
    if not texts:
        raise DataError(f"{path}: no data rows after the header")
    return texts, np.asarray(labels, dtype=np.int64), digest


def _acl_files(root: Path) -> list[tuple[Path, int]]:
    """(file, label) of an aclImdb split folder, ordered by class then numeric review id."""
    out: list[tuple[Path, int]] = []
    for sub, label in (("neg", 0), ("pos", 1)):
        folder = root / sub
        if path_kind(folder) != "folder":
            raise DataError(f"{root}: not an aclImdb split folder (missing '{sub}/' subfolder)")

        def review_id(p: Path) -> tuple[int, str]:
            head = p.stem.split("_", 1)[0]
            return (int(head) if head.isdigit() else -1, p.name)

        files = sorted(folder.glob("*.txt"), key=review_id)
        if not files:  # a half-copied tree would silently train on one class
            raise DataError(f"{root}: no *.txt reviews in {sub}/ (an aclImdb split has both)")
        out += [(p, label) for p in files]
    return out


def read_aclimdb_dir(root: Path) -> tuple[list[str], np.ndarray, str]:
    """The original ``aclImdb/{train,test}`` tree: ``{neg,pos}/<id>_<rating>.txt``."""
    texts: list[str] = []
    labels: list[int] = []
    h = hashlib.sha256()
    for path, label in _acl_files(root):
        data = _read_file(path)
        h.update(f"{path.parent.name}/{path.name}\0{len(data)}\0".encode())
        h.update(data)
        body = clean_imdb(_decode(path, data))
        if not body:
            raise DataError(f"{path}: line 1: empty text")
        texts.append(body)
        labels.append(label)
    return texts, np.asarray(labels, dtype=np.int64), h.hexdigest()


def read_split(dataset: str, path: Path) -> tuple[list[str], np.ndarray, str]:
    """Read one split, picking the reader from the path (folder = aclImdb) and dataset.

    Returns (texts, labels, fingerprint) with the same fingerprint as :func:`file_fingerprint`.
    """
    if path_kind(path) == "folder":
        if dataset != "imdb":
            raise DataError(f"{path}: a folder (aclImdb tree) is only supported for dataset=imdb")
        return read_aclimdb_dir(path)
    if dataset == "ag_news":
        return read_ag_news_csv(path)
    return read_imdb_csv(path)


def file_fingerprint(path: Path, dataset: str = "imdb") -> str:
    """sha256 of the bytes as stored (cheap: no parsing, no gunzip) or of an aclImdb tree."""
    kind = path_kind(path)
    if kind == "folder":
        if dataset != "imdb":
            raise DataError(f"{path}: a folder (aclImdb tree) is only supported for dataset=imdb")
        return read_aclimdb_dir(path)[2]
    if kind == "missing":
        raise DataError(f"{path}: file not found")
    return _sha256(_read_file(path))


def split_paths(cfg: DataConfig) -> tuple[Path, Path]:
    """Train and test paths for source=sample/files."""
    if cfg.source == "sample":
        train, test = SAMPLE_FILES[cfg.dataset]
        return bundled_dir() / train, bundled_dir() / test
    if cfg.source == "files":
        if not cfg.train_path or not cfg.test_path:
            raise DataError("data.source=files needs both data.train_path and data.test_path")
        return resolve_path(cfg.train_path), resolve_path(cfg.test_path)
    raise DataError(f"data.source={cfg.source!r} has no local files")


def _combine(dataset: str, train_fp: str, test_fp: str) -> str:
    return _sha256(f"{dataset}\0{train_fp}\0{test_fp}".encode())


def source_fingerprint(cfg: DataConfig) -> str:
    """Fingerprint of the local source files, computed without parsing them (for cache keys).

    Equals ``load_raw(cfg).fingerprint`` for source=sample/files.
    """
    train, test = split_paths(cfg)
    return _combine(
        cfg.dataset, file_fingerprint(train, cfg.dataset), file_fingerprint(test, cfg.dataset)
    )


def _subset(texts: list[str], labels: np.ndarray, n: int) -> tuple[list[str], np.ndarray]:
    """A seeded random subset (in file order) of n examples; 0 or n >= len keeps everything.

    Random rather than "first n" because IMDB is sorted by class: the first n would be
    all-negative.
    """
    if n <= 0 or n >= len(texts):
        return texts, labels
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(len(texts))[:n])
    return [texts[i] for i in keep], labels[keep]


def _load_hf(dataset: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataError(
            "data.source=hf needs the Hugging Face 'datasets' package: "
            "pip install 'scalelab[hf]' (or use data.source=files / sample)"
        ) from None
    try:
        ds = datasets.load_dataset(dataset)
    except Exception as exc:  # network, hub or cache problems all look different
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"data.source=hf: could not load '{dataset}' from the Hugging Face hub "
            f"({type(exc).__name__}: {first}); check the network or use data.source=files"
        ) from None
    clean = clean_ag_news if dataset == "ag_news" else clean_imdb
    out = []
    for split in ("train", "test"):
        where = f"data.source=hf: '{dataset}' split '{split}'"
        if split not in ds:
            raise DataError(f"{where} is missing (the hub copy has {', '.join(ds) or 'none'})")
        columns = ds[split].column_names
        if "text" not in columns or "label" not in columns:
            raise DataError(f"{where} needs 'text' and 'label' columns, has {columns}")
        raw_texts, raw_labels = ds[split]["text"], ds[split]["label"]
        if not all(isinstance(t, str) for t in raw_texts):
            raise DataError(f"{where}: every 'text' must be a string")
        try:
            labels = np.asarray(raw_labels, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: every 'label' must be an integer") from None
        if labels.ndim != 1 or len(labels) != len(raw_texts):
            raise DataError(f"{where}: one integer label per text expected")
        out += [[clean(t) for t in raw_texts], labels]
    return out[0], out[1], out[2], out[3]


def _content_fingerprint(dataset: str, *parts: tuple[list[str], np.ndarray]) -> str:
    h = hashlib.sha256(f"{dataset}\0".encode())
    for texts, labels in parts:
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
        h.update(labels.astype(np.int64).tobytes())
    return h.hexdigest()


_PARALLEL_MIN_BYTES = 2 << 20  # test split files from this size on are read in a child


def load_raw(cfg: DataConfig) -> RawData:
    """Read, validate and clean both splits described by ``cfg``; raises DataError."""
    if cfg.dataset not in NUM_CLASSES:
        raise DataError(
            f"data.dataset must be one of {', '.join(NUM_CLASSES)}; got {cfg.dataset!r}"
        )
    num_classes = NUM_CLASSES[cfg.dataset]
    if cfg.source == "hf":
        tr_x, tr_y, te_x, te_y = _load_hf(cfg.dataset)
        fingerprint = _content_fingerprint(cfg.dataset, (tr_x, tr_y), (te_x, te_y))
    else:
        train_path, test_path = split_paths(cfg)
        # A large test split is read in a forked child meanwhile (CSV parsing is Python work
        # on one core: ~1 s per 25k IMDB reviews here).
        kind = path_kind(test_path)
        big = kind == "folder" or (
            kind == "file" and test_path.stat().st_size >= _PARALLEL_MIN_BYTES
        )
        with forked(read_split, cfg.dataset, test_path, enabled=big) as test_split:
            tr_x, tr_y, tr_fp = read_split(cfg.dataset, train_path)
            te_x, te_y, te_fp = test_split()
        fingerprint = _combine(cfg.dataset, tr_fp, te_fp)
    for name, labels in (("train", tr_y), ("test", te_y)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{cfg.dataset} {name} split: labels must be in 0..{num_classes - 1}")
    tr_x, tr_y = _subset(tr_x, tr_y, cfg.max_train_samples)
    te_x, te_y = _subset(te_x, te_y, cfg.max_test_samples)
    description = describe(cfg, len(tr_x), len(te_x), num_classes)
    return RawData(tr_x, tr_y, te_x, te_y, num_classes, description, fingerprint)


def check_splits(cfg: DataConfig, train_labels: np.ndarray, test_labels: np.ndarray) -> list[str]:
    """Refuse a training split of a single class; return warnings (one line each) for test
    classes the training split never shows and for a test split read from the training file."""
    seen = np.unique(train_labels)
    as_in_file = 1 if cfg.dataset == "ag_news" else 0  # AG News files number classes 1..4

    def shown(labels: Sequence[int]) -> str:
        return ", ".join(str(int(v) + as_in_file) for v in labels)

    if len(seen) < 2:
        raise DataError(
            f"{cfg.dataset} train split: all {len(train_labels):,} examples have label "
            f"{shown(seen)}; a classifier needs at least two classes (check the label column"
            + (", or raise data.max_train_samples)" if cfg.max_train_samples else ")")
        )
    warnings = []
    unseen = sorted(set(np.unique(test_labels).tolist()) - set(seen.tolist()))
    if unseen:
        warnings.append(
            f"test label(s) {shown(unseen)} never occur in the training split (labels as in the "
            f"files; {len(seen)} of {NUM_CLASSES[cfg.dataset]} classes there): the model cannot "
            "learn them, so their accuracy is 0"
        )
    if cfg.max_train_samples > len(train_labels):
        warnings.append(
            f"data.max_train_samples={cfg.max_train_samples:,} but the training split has "
            f"{len(train_labels):,} examples: all of them are used"
        )
    if cfg.source == "files":
        train_path, test_path = split_paths(cfg)
        if train_path.resolve() == test_path.resolve():
            warnings.append(
                f"data.train_path and data.test_path are the same file ({train_path}): "
                "val_acc is measured on the training data"
            )
    return warnings


def describe(cfg: DataConfig, n_train: int, n_test: int, num_classes: int) -> str:
    """One line naming the dataset, where its texts come from and its size."""
    if cfg.source == "hf":
        origin = "Hugging Face datasets"
    elif cfg.source == "sample":
        origin = "bundled sample"
    else:
        train_path, test_path = split_paths(cfg)
        origin = f"{train_path}, {test_path}"
    return f"{cfg.dataset} ({origin}): {n_train:,} train / {n_test:,} test, {num_classes} classes"
