"""Does scalelab's faster loop train as well? Test accuracy, scalelab vs the study's way.

Trains the small preset on the shared AG News files (10,429 training rows, the full 7,600-row
test split) for the same number of epochs both ways, and reports both test accuracies
(``--imdb`` adds IMDB small on the full 25k/25k split; long on a CPU). scalelab trains through
``scalelab.train.fit`` exactly as ``scalelab train`` does (its schedule, clipping, length
bucketing); the study's way is ``study_baseline.train_and_evaluate_study_way``. Both use the
same tokenised cache, model, global batch and peak learning rate.

    python benchmarks/quality.py [--epochs 3] [--imdb] [--shared-data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_SHARED_DATA,
    default_out,
    load_preset,
    positive_int,
    print_table,
    run_header,
    shared_data_overrides,
    write_result,
)
from study_baseline import KERNELS, train_and_evaluate_study_way  # noqa: E402


def compare(
    preset: str,
    dataset: str,
    shared: Path,
    epochs: int,
    work: Path,
    limit: list[str],
    study_kernels: str = "textbook",
) -> dict[str, Any]:
    """Train `preset` both ways on the shared `dataset` files; return both test accuracies."""
    from scalelab.data import prepare_data
    from scalelab.train import fit

    overrides = [
        *shared_data_overrides(shared, dataset),
        f"data.cache_dir={work / 'cache'}",
        f"train.epochs={epochs}",
        f"output.dir={work / 'runs'}",
        f"output.run_name={preset}",
        "train.save_checkpoint=false",
        "output.progress=plain",
        *limit,
    ]
    cfg = load_preset(preset, overrides)
    data = prepare_data(cfg)  # built once; both ways then read the same cache
    print(
        f"[{preset}] {data.description}: {len(data.train):,} train / {len(data.test):,} test",
        flush=True,
    )

    t0 = time.perf_counter()
    run_dir = fit(cfg)
    scalelab_wall = time.perf_counter() - t0
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())

    t0 = time.perf_counter()
    study = train_and_evaluate_study_way(
        load_preset(preset, overrides), data, epochs, kernels=study_kernels
    )
    study_wall = time.perf_counter() - t0
    return {
        "preset": preset,
        "data": data.description,
        "num_train": len(data.train),
        "num_test": len(data.test),
        "epochs": epochs,
        "global_batch": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "scalelab": {
            "test_acc": float(rows[-1]["val_acc"]),
            "test_loss": float(rows[-1]["val_loss"]),
            "test_acc_per_epoch": [float(r["val_acc"]) for r in rows],
            "train_loss_per_epoch": [float(r["train_loss"]) for r in rows],
            "samples_per_s": summary["samples_per_s"],
            "wall_s": scalelab_wall,
            "wall_includes": f"scalelab.train.fit: training, a test-split evaluation after each "
            f"of the {epochs} epochs, the communication calibration, the run folder's files",
            "recipe": "AdamW (no decay on bias/norm/emb), warm-up + cosine schedule, grad clip 1.0, "
            "length-bucketed batches padded to the batch's longest",
        },
        "study": {
            **study,
            "wall_s": study_wall,
            "wall_includes": "training and one test-split evaluation after the last epoch",
            "recipe": "default AdamW, constant lr, no clipping, shuffled batches padded to max_seq_len",
        },
        "acc_difference": float(rows[-1]["val_acc"]) - study["test_acc"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument(
        "--imdb",
        action="store_true",
        help="also IMDB small on the full 25k/25k split (slow on CPU)",
    )
    p.add_argument(
        "--only",
        choices=("ag_news", "imdb"),
        default=None,
        help="run just this dataset (imdb implies --imdb)",
    )
    p.add_argument(
        "--study-kernels",
        choices=KERNELS,
        default="textbook",
        help="kernels of the study-way model: 'scalelab' is the same maths, faster on a CPU "
        "(accuracy is what is compared here, not speed)",
    )
    p.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA)
    p.add_argument(
        "--max-train-samples", type=int, default=0, help="subset for smoke runs (0 = all)"
    )
    p.add_argument(
        "--max-test-samples", type=int, default=0, help="subset for smoke runs (0 = all)"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not (args.shared_data / "ag_news" / "train.csv.gz").is_file():
        print(
            f"quality.py: shared data not found at {args.shared_data} (give --shared-data)",
            file=sys.stderr,
        )
        return 2
    limit = [
        f"data.max_train_samples={args.max_train_samples}",
        f"data.max_test_samples={args.max_test_samples}",
    ]
    jobs = [("ag_news_small", "ag_news")] + (
        [("imdb_small", "imdb")] if args.imdb or args.only == "imdb" else []
    )
    if args.only:
        jobs = [job for job in jobs if job[1] == args.only]
    result: dict[str, Any] = {
        **run_header(None if argv is None else [sys.argv[0], *argv]),
        "subset": bool(args.max_train_samples or args.max_test_samples),
        "results": {},
    }
    work = Path(tempfile.mkdtemp(prefix="scalelab-bench-quality-"))
    try:
        for preset, dataset in jobs:
            result["results"][preset] = compare(
                preset, dataset, args.shared_data, args.epochs, work, limit, args.study_kernels
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        [
            name,
            str(r["epochs"]),
            f"{r['scalelab']['test_acc']:.4f}",
            f"{r['study']['test_acc']:.4f}",
            f"{r['acc_difference']:+.4f}",
            f"{r['scalelab']['wall_s']:.0f} / {r['study']['wall_s']:.0f}",
        ]
        for name, r in result["results"].items()
    ]
    print()
    print_table(
        rows,
        [
            "preset",
            "epochs",
            "scalelab acc",
            "study acc",
            "difference",
            "wall s (scalelab / study)",
        ],
    )
    print(
        "(wall s: scalelab's includes an evaluation after every epoch, the study's one after the "
        "last: accuracy is compared here, speed by run.py)"
    )
    out = args.out or default_out("-quality")
    write_result(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
