"""Two torchrun "nodes" on localhost (--nnodes=2, one rank each): the data cache is built by local
rank 0 of every node, so nodes without a shared cache folder train, and nodes sharing one write
the same file safely (temp file + rename)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow
TINY = [
    "data.max_train_samples=300", "data.max_test_samples=64", "model.vocab_size=1000",
    "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.d_ff=64",
    "model.max_seq_len=32", "train.batch_size=16", "train.epochs=1", "train.max_steps_per_epoch=2",
    "train.comm_calibration_steps=0", "output.progress=plain", "output.run_name=mn",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path: Path, caches: list[Path]) -> tuple[list[subprocess.Popen], list]:
    """`scalelab train` as two torchrun nodes of one rank each, node n caching in caches[n]."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "scalelab", "train", *TINY, f"data.cache_dir={caches[node]}",
               f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=subprocess_env({"OMP_NUM_THREADS": "1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )  # fmt: skip
    return procs, [p.communicate(timeout=300) for p in procs]


@pytest.mark.parametrize("shared", [False, True], ids=["cache-per-node", "shared-cache"])
def test_each_node_builds_a_missing_cache(tmp_path: Path, shared: bool) -> None:
    # empty: nothing cached yet
    procs, outs = _two_nodes(tmp_path, [tmp_path / ("cache" if shared else f"cache{n}")
                                        for n in (0, 1)])  # fmt: skip
    for p, (out, err) in zip(procs, outs, strict=True):
        # before: node 1 failed with "data cache missing after rank 0 prepared it"
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    summary = json.loads((tmp_path / "exp" / "mn" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_nodes"] == 2
    for cache in {tmp_path / ("cache" if shared else f"cache{n}") for n in (0, 1)}:
        files = sorted(f.name for f in cache.iterdir())
        assert len(files) == 1 and files[0].endswith(".npz"), files  # no temp file left over
    # only global rank 0 (on node 0) logs, however many nodes built the cache
    assert "epoch 1/1:" in outs[0][0] and "epoch 1/1:" not in outs[1][0]


def test_nodes_holding_different_encodings_stop_with_one_line(tmp_path: Path) -> None:
    """Node 1's cache has the same name but another vocabulary (as if written by another
    tokenizers version): DDP would train on mismatched token ids; both ranks must refuse."""
    import numpy as np

    from scalelab.config import load_config
    from scalelab.data import prepare_data

    caches = [tmp_path / "cache0", tmp_path / "cache1"]
    built = prepare_data(load_config(None, [*TINY, f"data.cache_dir={caches[0]}"])).cache_path
    with np.load(built) as z:
        arrays = {k: z[k] for k in z.files}
    tok = json.loads(arrays["tokenizer_json"].tobytes().decode())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    arrays["tokenizer_json"] = np.frombuffer(json.dumps(tok).encode(), np.uint8)
    caches[1].mkdir()
    np.savez(caches[1] / built.name, **arrays)

    procs, outs = _two_nodes(tmp_path, caches)
    assert [p.returncode != 0 for p in procs] == [True, True]
    err = outs[0][1]  # rank 0 (node 0) reports; the other ranks only exit
    lines = [ln for ln in err.splitlines() if "holds other data than rank 0" in ln]
    assert len(lines) == 1 and lines[0].startswith("scalelab: error: rank 1 ("), err[-3000:]
    assert str(caches[1]) in lines[0] and "scalelab/train.py" not in err  # no traceback of ours
    assert not (tmp_path / "exp" / "mn" / "metrics.csv").exists()
