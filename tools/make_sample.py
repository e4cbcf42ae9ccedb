#!/usr/bin/env python
"""Build the bundled sample in ``src/scalelab/data/bundled/`` from the shared datasets.

Stratified, seeded and byte-reproducible (gzip mtime=0, no file name in the header), so
re-running it gives identical files. Rows are copied verbatim in the original CSV dialect
(AG News: every field quoted, ``\\n``; IMDB: minimal quoting, ``\\r\\n``) so the package's
normal readers parse the sample exactly like the full files.

    python tools/make_sample.py [--src ../shared/data] [--dst src/scalelab/data/bundled]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import shutil
from pathlib import Path

import numpy as np

SEED = 20240601
REPO = Path(__file__).resolve().parents[1]

# (source file, destination file, per-class count, has header)
PLAN = [
    ("ag_news/train.csv.gz", "ag_news_train.csv.gz", 1000, False),
    ("ag_news/test.csv.gz", "ag_news_test.csv.gz", 250, False),
    ("imdb/train.csv.gz", "imdb_train.csv.gz", 1000, True),
    ("imdb/test.csv.gz", "imdb_test.csv.gz", 500, True),
]


def read_rows(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return (rows[0], rows[1:]) if header else (None, rows)


def stratified(labels: list[str], per_class: int, rng: np.random.Generator) -> np.ndarray:
    """per_class random rows of every class, then the whole selection shuffled."""
    labels_arr = np.asarray(labels)
    picked = []
    for cls in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == cls)
        if len(idx) < per_class:
            raise SystemExit(f"class {cls} has only {len(idx)} rows, need {per_class}")
        picked.append(rng.choice(idx, size=per_class, replace=False))
    return rng.permutation(np.concatenate(picked))


def write_gzip_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    if header is None:  # AG News dialect
        writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    else:  # IMDB dialect (Python csv defaults)
        writer = csv.writer(buf)
        writer.writerow(header)
    writer.writerows(rows)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(buf.getvalue().encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    ap.add_argument("--dst", type=Path, default=REPO / "src/scalelab/data/bundled")
    args = ap.parse_args()
    args.dst.mkdir(parents=True, exist_ok=True)
    for src_name, dst_name, per_class, header in PLAN:
        # One generator per file so changing one entry does not reshuffle the others.
        rng = np.random.default_rng([SEED, PLAN.index((src_name, dst_name, per_class, header))])
        head, rows = read_rows(args.src / src_name, header)
        label_col = head.index("label") if head else 0
        order = stratified([r[label_col] for r in rows], per_class, rng)
        write_gzip_csv(args.dst / dst_name, head, [rows[i] for i in order])
        print(f"{dst_name}: {len(order)} rows")
    shutil.copyfile(
        args.src / "vocab/bert-base-uncased-vocab.txt", args.dst / "bert-base-uncased-vocab.txt"
    )
    print("bert-base-uncased-vocab.txt: copied")


if __name__ == "__main__":
    main()
