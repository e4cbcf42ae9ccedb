"""WordPiece tokenizers: trained on the training split, or loaded from a vocab.txt / tokenizer.json.

All tokenizers returned here add ``[CLS] ... [SEP]`` and truncate to ``max_seq_len`` tokens
*including* those two, so ``encode_batch`` output can be used as-is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from tokenizers.processors import TemplateProcessing
from tokenizers.trainers import WordPieceTrainer

from scalelab.config import DataConfig, first_line
from scalelab.data.sources import DataError, path_kind, resolve_path

#: Special tokens of a trained tokenizer, in id order ([PAD] must be 0).
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PAD_CANDIDATES = ("[PAD]", "<pad>", "<PAD>")
#: A character that is not printable ASCII (or tab, newline, return). On text without one, BERT
#: normalisation is `str.lower` (or nothing).
NOT_PLAIN_CHAR = re.compile(r"[^\t\n\r -~]")


def split_not_plain(text: str, not_plain: re.Pattern[str] = NOT_PLAIN_CHAR) -> list[str]:
    """``text`` cut into stretches that alternate: plain ASCII (even indices, maybe empty) and
    space-separated pieces holding a `not_plain` character (odd indices); ``"".join`` restores
    it. Linear: each such character is found, then its piece extended to the spaces around it."""
    parts, pos = [], 0
    for m in not_plain.finditer(text):
        i = m.start()
        if i < pos:
            continue  # in the piece just cut out
        a = text.rfind(" ", 0, i) + 1
        b = text.find(" ", i)
        b = len(text) if b < 0 else b
        parts += [text[pos:a], text[a:b]]
        pos = b
    parts.append(text[pos:])
    return parts


def prenormalize(
    tok: Tokenizer, texts: list[str], pieces: set[str] | None = None
) -> tuple[Tokenizer, list[str]]:
    """(tokenizer without normaliser, normalised texts) giving the same encodings, faster.

    BertNormalizer (NFD accent stripping etc.) is about 40% of the Rust encode/train time, yet
    on printable ASCII it is exactly ``str.lower()`` (or the identity), which Python does far
    faster. In other texts only the space-separated pieces that are not printable ASCII go
    through the real normaliser (it works character by character and keeps spaces, so piece by
    piece gives the same text). Tokenizers with another normaliser are returned unchanged.
    ``pieces``, if given, receives every normalised piece that was not plain.
    """
    norm = tok.normalizer
    if not isinstance(norm, BertNormalizer):
        return tok, texts
    lower = norm.normalize_str("A") == "a"

    def normalize(text: str) -> str:
        parts = split_not_plain(text)  # odd indices: the pieces that are not plain
        for i, part in enumerate(parts):
            parts[i] = norm.normalize_str(part) if i % 2 else part.lower() if lower else part
        if pieces is not None:
            pieces.update(parts[1::2])
        return "".join(parts)

    out = [normalize(t) for t in texts]
    bare = Tokenizer.from_str(tok.to_str())
    bare.normalizer = None
    return bare, out


# Printable ASCII but the space, and of it what BertPreTokenizer keeps inside words: letters and
# digits (the rest is punctuation, each a word of its own).
_ASCII_PRINTABLE = [bytes([c]) for c in range(33, 127)]
_ASCII_IN_WORD = [c for c in _ASCII_PRINTABLE if c.isalnum()]
_BYTE_IN_WORD = np.array([bytes([c]).isalnum() for c in range(256)])  # False from 128 on
_CHUNK_TEXTS = 4096  # texts joined per scan (bounds the temporary bytes and masks)


def word_characters(texts: list[str], pieces: set[str]) -> tuple[list[str], list[str]]:
    """(every character of the words BertPreTokenizer cuts ``texts`` into, the characters that
    also occur after a word's first character), each sorted by code point.

    ``texts`` are normalised (see `prenormalize`) and ``pieces`` are their space-separated
    pieces that are not printable ASCII, which hold every word with another character (or a
    control character: normalisation removed those). Printable ASCII is looked for in the texts'
    UTF-8 bytes, where the bytes of other characters count as spaces (two ASCII letters or
    digits side by side are in one word whatever surrounds them); the pieces are cut into words
    one by one.
    """
    seen: set[bytes] = set()
    later: set[bytes] = set()
    for i in range(0, len(texts), _CHUNK_TEXTS):
        data = " ".join(texts[i : i + _CHUNK_TEXTS]).encode()
        seen.update(c for c in _ASCII_PRINTABLE if c not in seen and c in data)  # memchr
        b = np.frombuffer(data, np.uint8)
        in_word = _BYTE_IN_WORD[b]
        # each letter or digit that follows a letter or digit, else 0
        follows = np.multiply(b[1:], in_word[1:] & in_word[:-1]).tobytes()
        later.update(c for c in _ASCII_IN_WORD if c not in later and c in follows)
    chars = {c.decode() for c in seen}
    after = {c.decode() for c in later}
    pre = BertPreTokenizer()
    for piece in pieces:
        for word, _ in pre.pre_tokenize_str(piece):
            chars.update(word)
            after.update(word[1:])
    return sorted(chars), sorted(after)


def vocab_fingerprint(cfg: DataConfig) -> str:
    """sha256 of the vocab file's content ('' when a tokenizer is trained)."""
    if not cfg.vocab_path:
        return ""
    path = _vocab_file(cfg)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:  # no permission, an I/O error
        raise DataError(f"{path}: cannot read it ({first_line(exc)}) (data.vocab_path)") from None


def _vocab_file(cfg: DataConfig) -> Path:
    """data.vocab_path as a file, or one line saying what it is instead."""
    path = resolve_path(cfg.vocab_path)
    kind = path_kind(path)
    if kind == "folder":
        raise DataError(
            f"{path}: is a folder; data.vocab_path names a file, a WordPiece vocab.txt or a "
            "tokenizers tokenizer.json"
        )
    if kind != "file":
        what = "not a regular file" if kind == "other" else "vocab file not found"
        raise DataError(f"{path}: {what} (data.vocab_path)")
    return path


def _normalizer(lowercase: bool) -> BertNormalizer:
    # strip_accents=None follows `lowercase`, as in BERT's "uncased" setting.
    return BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)


def _add_cls_sep(tok: Tokenizer, where: str) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise DataError(
            f"{where}: tokenizer has no [CLS]/[SEP] tokens; cannot add them around texts"
        )
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def pad_id(tokenizer: Tokenizer, where: str = "tokenizer") -> int:
    """Id used for padding: the tokenizer's padding id if set, else the [PAD] token."""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in _PAD_CANDIDATES:
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    raise DataError(f"{where}: tokenizer has no padding token ([PAD] or <pad>)")


def build_tokenizer(
    cfg: DataConfig,
    vocab_size: int,
    train_texts: list[str],
    max_seq_len: int | None = None,
) -> Tokenizer:
    """Tokenizer per ``cfg.vocab_path``: '' trains WordPiece on ``train_texts``.

    A path ending in ``.json`` is loaded with ``Tokenizer.from_file`` (its own normaliser and
    post-processor are kept; ``[CLS]/[SEP]`` are added only if it has no post-processor);
    anything else is read as a BERT ``vocab.txt`` (one token per line, id = line number).
    ``max_seq_len`` enables truncation (counting [CLS] and [SEP]). Padding stays off: the
    cache pads with numpy, which is faster than padding every encoding.
    """
    return tokenizer_and_pad_id(cfg, vocab_size, train_texts, max_seq_len)[0]


def tokenizer_and_pad_id(
    cfg: DataConfig,
    vocab_size: int,
    train_texts: list[str],
    max_seq_len: int | None = None,
) -> tuple[Tokenizer, int]:
    """``build_tokenizer`` and the id to pad with: a tokenizer.json's own padding token if it
    sets one (read before padding is switched off), else its [PAD] or <pad> token."""
    where = "the trained tokenizer"
    if not cfg.vocab_path:
        tok = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
        tok.normalizer = _normalizer(cfg.lowercase)
        tok.pre_tokenizer = BertPreTokenizer()
        pieces: set[str] = set()
        bare, normed = prenormalize(tok, train_texts, pieces)
        # The trainer numbers the single characters in code-point order but the "##c"
        # continuations in the order of a Rust HashMap, which changes from run to run, and it
        # breaks ties between equally frequent pairs by those numbers: the learned vocabulary
        # differed between two builds of the same AG News cache (16 of 20,000 tokens). Given
        # up front, in code-point order, as tokens the vocabulary starts with (they would be
        # in it anyway), every number is fixed and so is the vocabulary.
        chars, later = word_characters(normed, pieces)
        trainer = WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS + chars + ["##" + c for c in later],
            continuing_subword_prefix="##",
            show_progress=False,
        )
        bare.train_from_iterator(normed, trainer=trainer, length=len(normed))
        tok.model = _canonical_ids(bare.get_vocab())
        _add_cls_sep(tok, where)
    else:
        path = _vocab_file(cfg)
        where = str(path)
        if path.suffix.lower() == ".json":
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
                raise DataError(f"{path}: not a tokenizers tokenizer.json ({exc})") from None
            if tok.post_processor is None:
                _add_cls_sep(tok, where)
            _check_unknown_token(tok, where)
        else:
            tok = _from_vocab_txt(path, cfg.lowercase)
    tok.decoder = tok.decoder or decoders.WordPiece(prefix="##")
    pad = pad_id(tok, where)
    tok.no_padding()
    if max_seq_len is not None:
        tok.enable_truncation(max_length=max_seq_len)
    return tok, pad


def _check_unknown_token(tok: Tokenizer, where: str) -> None:
    """A tokenizer.json whose model names an unknown token its vocabulary lacks fails on the
    first word it does not know, deep inside encoding: say so before."""
    unk = getattr(tok.model, "unk_token", None)
    if isinstance(unk, str) and unk and tok.token_to_id(unk) is None:
        raise DataError(
            f"{where}: its unknown token {unk!r} is not in its vocabulary (words it does not "
            "know could not be encoded)"
        )


def check_ids(space: int, pad: int, largest: int, where: str) -> None:
    """Every id the encoded data holds (the padding id among them) must have an embedding row:
    a tokenizer.json may pad with, or wrap texts in, ids beyond its vocabulary."""
    bad = max(pad, largest)
    if bad >= space:
        what = "its padding id" if pad >= space else "an encoded text's id"
        raise DataError(
            f"{where}: {what} {bad} is beyond the tokenizer's vocabulary of {space} ids "
            f"(0..{space - 1}; check its padding and post-processor's special tokens)"
        )


def id_space(tokenizer: Tokenizer) -> int:
    """Highest token id + 1: the embedding rows the ids need. More than the number of distinct
    tokens when a vocab.txt repeats a line (the repeat keeps its line number free)."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1


def _canonical_ids(vocab: dict[str, int]) -> WordPiece:
    """WordPiece with specials at 0..4 and the rest in sorted order.

    The trainer's ids follow the order its tokens were made in; sorted ids are a function of
    the token set alone.
    """
    rest = sorted(set(vocab) - set(SPECIAL_TOKENS))
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}
    return WordPiece(ids, unk_token="[UNK]", continuing_subword_prefix="##")


def _from_vocab_txt(path: Path, lowercase: bool) -> Tokenizer:
    try:
        # a BOM is not part of [PAD]; lines end at "\n" only, as BERT's load_vocab reads them
        # (splitlines() also splits at \x0b, \x1c, \u2028 ...: every later id would shift)
        lines = path.read_text(encoding="utf-8-sig").split("\n")
        if lines[-1] == "":
            lines.pop()
    except UnicodeDecodeError:
        raise DataError(f"{path}: vocab.txt is not valid UTF-8") from None
    except OSError as exc:  # no permission, an I/O error
        raise DataError(f"{path}: cannot read it ({first_line(exc)}) (data.vocab_path)") from None
    if not lines:
        raise DataError(f"{path}: vocab.txt is empty")
    # Build the dict ourselves rather than WordPiece.from_file so duplicate lines keep the
    # first id (ids must equal line numbers, as in BERT) and errors name the file.
    vocab: dict[str, int] = {}
    for i, token in enumerate(lines):
        vocab.setdefault(token.rstrip("\r"), i)
    if "[UNK]" not in vocab:
        raise DataError(f"{path}: vocab.txt has no [UNK] token")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = _normalizer(lowercase)
    tok.pre_tokenizer = BertPreTokenizer()
    _add_cls_sep(tok, str(path))
    return tok
