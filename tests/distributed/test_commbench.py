"""All-reduce benchmark on 2 real gloo ranks started by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scalelab.commbench import (
    after_compute_sizes,
    default_iters,
    format_bytes,
    measure_allreduce,
    measure_buckets,
    measure_sync_latency,
    parse_bytes,
    sweep_sizes,
)
from scalelab.distributed import DistEnv
from tests.conftest import REPO, subprocess_env, torchrun

RESULT_KEYS = {
    "backend",
    "world_size",
    "num_nodes",
    "device",
    "torch_version",
    "date",
    "hostname",
    "command",
    "results",
    "fit",
    "sync_latency",
}
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_sizes_and_units() -> None:
    assert parse_bytes("4K") == 4096
    assert parse_bytes("256M") == 256 * 1024**2
    assert parse_bytes("1GiB") == 1024**3
    assert parse_bytes("4096") == 4096
    assert format_bytes(4096) == "4K" and format_bytes(256 * 1024**2) == "256M"
    assert sweep_sizes(4096, 64 * 1024, factor=4) == [4096, 16384, 65536]
    assert sweep_sizes(4096, 16384) == [4096, 8192, 16384]
    # small messages are latency-bound and noisy: more repetitions than large ones
    assert default_iters(4096) > default_iters(256 * 1024**2) >= 1


def test_single_process_has_no_communication() -> None:
    env = DistEnv()
    assert measure_allreduce(1 << 20, env, iters=3, warmup=1) == 0.0
    assert measure_buckets([1 << 20, 1 << 10], env) == 0.0
    assert measure_sync_latency(env)["median_ms"] == 0.0
    assert measure_sync_latency(env, wait="block")["wait"] == "block"
    assert after_compute_sizes(4 * 1024**2) == [4, 64 * 1024, 1024**2]
    assert after_compute_sizes(1024) == [4]


@pytest.mark.slow
def test_commbench_two_gloo_ranks(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = torchrun(
        ["-m", "scalelab.commbench", "--out", str(out), "--max-bytes", "4M", "--backend", "gloo"],
        nproc=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "commbench.png").stat().st_size > 0
    result = json.loads((out / "commbench.json").read_text())
    assert set(result) == RESULT_KEYS
    assert result["backend"] == "gloo" and result["world_size"] == 2 and result["num_nodes"] == 1
    rows = result["results"]
    assert [r["bytes"] for r in rows] == sweep_sizes(4096, 4 * 1024**2)
    for r in rows:
        assert set(r) == {"bytes", "time_ms", "algbw_gbps", "busbw_gbps"}
        assert r["time_ms"] > 0
        assert r["algbw_gbps"] == pytest.approx(r["bytes"] / (r["time_ms"] * 1e-3) / 1e9)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2)
    # latency dominates small messages, bandwidth large ones: busbw must rise with size
    assert rows[-1]["busbw_gbps"] > 4 * rows[0]["busbw_gbps"], rows
    assert result["fit"]["alpha_ms"] >= 0
    assert result["fit"]["busbw_gbps"] > 0
    lat = result["sync_latency"]
    assert lat["iters"] == 40 and lat["busy_ms"] == 20.0
    assert lat["wait"] == "spin"  # gloo: as the trainer waits (distributed.collective_wait)
    assert 0 < lat["median_ms"] <= lat["p90_ms"]
    # after compute at 4 bytes and at the larger sizes up to --max-bytes (16 MB is beyond 4M)
    assert [r["bytes"] for r in lat["sizes"]] == [4, 64 * 1024, 1024**2]
    assert lat["sizes"][0]["median_ms"] == lat["median_ms"]
    for r in lat["sizes"]:
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["mean_ms"] > 0
    assert "busbw" in proc.stdout and "sync latency after 20 ms" in proc.stdout
    assert "last rank to arrive, waits spinning" in proc.stdout
    assert "1M after compute: median" in proc.stdout
    assert str(out / "commbench.json") in proc.stdout


@pytest.mark.slow
def test_commbench_needs_two_ranks(tmp_path: Path) -> None:
    env = {k: v for k, v in subprocess_env().items() if k not in _DIST_VARS}
    proc = subprocess.run(
        [sys.executable, "-m", "scalelab.commbench", "--out", str(tmp_path / "bench")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torchrun --nproc_per_node=N" in lines[0], proc.stderr
    assert lines[0].startswith("scalelab: error:"), lines[0]
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_measure_buckets_all_reduces_every_bucket_back_to_back(tmp_path: Path) -> None:
    # what is timed, counted (timings of a few ms on a shared machine are too noisy to compare
    # with each other: a 2 MB all-reduce once took longer than the three buckets together)
    script = tmp_path / "buckets.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            import torch.distributed as dist
            from scalelab.commbench import measure_allreduce, measure_buckets
            from scalelab.config import DistributedConfig
            from scalelab.distributed import cleanup, init_distributed

            env = init_distributed(DistributedConfig(backend="gloo"))
            calls = []
            real = dist.all_reduce

            def counted(t, *args, **kwargs):
                calls.append(t.numel() * t.element_size())
                return real(t, *args, **kwargs)

            dist.all_reduce = counted
            buckets = [1 << 20, 2 << 20, 4 << 20]
            total = measure_buckets(buckets, env, iters=10, warmup=3)
            in_buckets = list(calls)
            single = measure_allreduce(2 << 20, env, iters=10, warmup=3)
            if env.is_main:
                print("RESULT " + json.dumps({"total": total, "single": single,
                                              "calls": in_buckets}))
            cleanup()
            """
        )
    )
    proc = torchrun([str(script)], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    data = json.loads(line.removeprefix("RESULT "))
    assert data["total"] > 0 and data["single"] > 0
    # 3 warm-up and 10 timed rounds, each all-reducing the three buckets in order, then the
    # tiny collectives that take the maximum over ranks
    sizes = [1 << 20, 2 << 20, 4 << 20]
    assert data["calls"][: 13 * 3] == sizes * 13, data["calls"]
    assert all(b < 1024 for b in data["calls"][13 * 3 :]), data["calls"]
