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


@pytest.mark.parametrize("shared", [False, True], ids=["cache-per-node", "shared-cache"])
def test_each_node_builds_a_missing_cache(tmp_path: Path, shared: bool) -> None:
    port = _free_port()
    procs = []
    for node in (0, 1):
        cache = tmp_path / ("cache" if shared else f"cache{node}")  # empty: nothing cached yet
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
               "-m", "scalelab", "train", *TINY, f"data.cache_dir={cache}",
               f"output.dir={tmp_path / 'exp'}"]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=subprocess_env({"OMP_NUM_THREADS": "1"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
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
