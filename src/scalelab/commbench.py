"""All-reduce micro-benchmark: time vs message size, bandwidth, and an alpha-beta fit.

Runs on the process group that :func:`scalelab.distributed.init_distributed` creates (torchrun
environment), so it measures exactly the backend/transport the trainer uses. Bandwidths follow the
nccl-tests definitions: ``algbw = bytes / time`` and ``busbw = algbw * 2(n-1)/n``; busbw is the
per-link rate a ring all-reduce achieves and is comparable across world sizes.

Run with ``torchrun --nproc_per_node=N -m scalelab commbench`` (or ``-m scalelab.commbench``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from scalelab.analysis.predict import AnalysisError, fit_alpha_beta, ring_factor
from scalelab.arguments import ArgumentParser, folder
from scalelab.checkpoint import atomic_write_text
from scalelab.config import DistributedConfig, first_line, not_a_folder
from scalelab.distributed import (
    DistEnv,
    LaunchError,
    all_reduce_mean_max,
    all_reduce_waiting,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
    is_main_process,
    waits_spinning,
)

GB = 1e9  # bandwidths in GB/s with decimal giga, like nccl-tests
_SWEEP_BYTES_PER_SIZE = 1 << 30  # default iterations move about this many bytes per message size
_MIN_ITERS, _MAX_ITERS = 10, 200


def _buffer_device(env: DistEnv) -> torch.device:
    # gloo reduces host memory; NCCL needs the tensor on this rank's GPU.
    return env.device if env.backend == "nccl" else torch.device("cpu")


def _max_over_ranks(value: float, env: DistEnv) -> float:
    # The slowest rank defines when the collective is done for everyone.
    _, maxima = all_reduce_mean_max([value], env)  # host-device sync (one tiny collective)
    return maxima[0]


def _time_ops(ops: list[torch.Tensor], env: DistEnv, *, iters: int, warmup: int) -> float:
    """Median ms of all-reducing every tensor in `ops` back to back, max over ranks."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    # first calls set up connections/communicators and page in buffers: keep them out of the timing
    for _ in range(max(0, warmup)):
        for t in ops:
            dist.all_reduce(t)
    on_cuda = ops[0].is_cuda
    if on_cuda:
        torch.cuda.synchronize(ops[0].device)  # host-device sync: warm-up must finish before timing
    # ranks enter the timed loop together, so no rank's time includes waiting for a late peer
    barrier(env)
    if on_cuda:
        torch.cuda.synchronize(ops[0].device)  # host-device sync: the barrier itself has completed
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends, strict=True):
            s.record()
            for t in ops:
                dist.all_reduce(t)
            e.record()
        # host-device sync: the only one in the loop, so the host never stalls the GPU queue while timing
        torch.cuda.synchronize(ops[0].device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            for t in ops:
                dist.all_reduce(t)  # blocking on CPU tensors: returns when the reduction is done
            times.append((time.perf_counter() - t0) * 1e3)
    return _max_over_ranks(statistics.median(times), env)


def measure_allreduce(
    num_bytes: int,
    env: DistEnv,
    *,
    iters: int,
    warmup: int,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Time in ms of one all-reduce of `num_bytes` on the current group (max over ranks of the median).

    Returns 0.0 for a single process: there is nothing to communicate.
    """
    if not env.is_distributed:
        return 0.0
    numel = max(1, num_bytes // torch.empty((), dtype=dtype).element_size())
    device = _buffer_device(env)
    try:
        # zeros: repeated SUMs stay 0, so no inf/denormal values can change the arithmetic speed
        buf = torch.zeros(numel, dtype=dtype, device=device)
    except RuntimeError as exc:  # torch.OutOfMemoryError (CUDA) is one too
        # memory taken since check_buffers_fit; the other ranks stop when torchrun sees this one end
        raise LaunchError(
            f"cannot allocate a {format_bytes(num_bytes)} all-reduce buffer on {device} "
            f"({first_line(exc)}); use a smaller --max-bytes"
        ) from None
    return _time_ops([buf], env, iters=iters, warmup=warmup)


def measure_buckets(
    bucket_bytes: list[int], env: DistEnv, *, iters: int = 10, warmup: int = 3
) -> float:
    """Total ms to all-reduce the given gradient buckets back to back (DDP's T_comm for one step).

    Returns 0.0 for a single process or no buckets.
    """
    if not env.is_distributed or not bucket_bytes:
        return 0.0
    device = _buffer_device(env)
    # allocated once, so the timed loop measures communication, not the allocator
    bufs = [torch.zeros(max(1, b // 4), dtype=torch.float32, device=device) for b in bucket_bytes]
    return _time_ops(bufs, env, iters=iters, warmup=warmup)


def sweep_sizes(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    """min_bytes, min_bytes*factor, ... up to and including max_bytes."""
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"need 1 <= min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2, got {factor}")
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def default_iters(num_bytes: int) -> int:
    """Many repetitions for small (latency-bound, noisy) messages, few for large ones.

    About 1 GiB per size (10..200 iterations): 2 gloo ranks on 2 CPU cores finish the 4K..64M
    sweep in ~15 s and 4K..256M in ~17 s, torchrun start-up included.
    """
    return int(min(_MAX_ITERS, max(_MIN_ITERS, _SWEEP_BYTES_PER_SIZE // max(1, num_bytes))))


def _fit(results: list[dict[str, Any]], world_size: int) -> dict[str, float]:
    """alpha/busbw from analysis.predict's fit (the one reports and predictions use, so they agree).

    A sweep whose time does not grow with size (pure noise) gets busbw 0, which readers of the
    JSON treat as "no fit" and refit from the raw results themselves.
    """
    try:
        alpha, busbw = fit_alpha_beta(results, world_size)
    except AnalysisError as exc:
        print(f"commbench: warning: no alpha-beta fit: {exc}", file=sys.stderr)
        return {"alpha_ms": 0.0, "busbw_gbps": 0.0}
    return {"alpha_ms": max(0.0, alpha), "busbw_gbps": busbw}


#: Message sizes of the after-compute probe besides 4 bytes (up to the sweep's largest): a
#: gradient all-reduce reached from compute can cost more than its size's back-to-back time.
AFTER_COMPUTE_BYTES = (64 * 1024, 1024 * 1024, 16 * 1024 * 1024)


def after_compute_sizes(max_bytes: int) -> list[int]:
    """4 bytes, then the AFTER_COMPUTE_BYTES that do not exceed `max_bytes`."""
    return [4, *(b for b in AFTER_COMPUTE_BYTES if b <= max_bytes)]


def measure_sync_latency(
    env: DistEnv,
    *,
    sizes: Sequence[int] = (4,),
    busy_ms: float = 20.0,
    iters: int = 40,
    warmup: int = 4,
    wait: str = "spin",
) -> dict[str, Any]:
    """Time of all-reduces that the ranks reach straight from `busy_ms` of compute.

    A training step's gradient all-reduce does not start from a warm, idle loop as the size
    sweep's back-to-back calls do: every rank arrives from computing. Per iteration, for each
    of `sizes` in turn (interleaved, so drift affects all alike), all ranks compute for
    `busy_ms` (small matrix products), then all-reduce that many bytes; an iteration's time is
    that of the rank that arrived last (the minimum over ranks), which waited for nobody.
    Returns the first size's median and 90th percentile in ms (4 bytes: the sync latency), and
    under ``sizes`` each size's median, mean and 90th percentile (their spread is wide: most
    calls are quick, some wait for a sleeping thread; the mean is what a step pays on average).
    ``wait``: how each rank waits, as the trainer's distributed.collective_wait ('spin' with
    gloo by default: `all_reduce_waiting`; NCCL always blocks here, to time the collective).
    """
    spin = waits_spinning(wait, env.backend)
    how = "spin" if spin else "block"
    if not env.is_distributed:
        return {"median_ms": 0.0, "p90_ms": 0.0, "busy_ms": busy_ms, "iters": 0, "sizes": [],
                "wait": how}  # fmt: skip
    dev = _buffer_device(env)
    bufs = [torch.zeros(max(1, b // 4), device=dev) for b in sizes]
    a = torch.randn(128, 128)
    times: list[list[float]] = [[] for _ in sizes]
    for i in range(warmup + iters):
        for buf, out in zip(bufs, times, strict=True):
            until = time.perf_counter() + busy_ms / 1e3
            while time.perf_counter() < until:
                a @ a
            t0 = time.perf_counter()
            all_reduce_waiting(buf, spin)
            if dev.type == "cuda":  # host-device sync: the collective must be done to time it
                torch.cuda.synchronize(dev)
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1e3)
    mine = torch.tensor(times, dtype=torch.float64, device=dev)  # [size, iteration]
    every = [torch.zeros_like(mine) for _ in range(env.world_size)]
    dist.all_gather(every, mine)
    last_arrival = torch.stack(every).min(dim=0).values.cpu()  # host-device sync (once)
    per_size = [
        {
            "bytes": int(b),
            # the mean of the middle two for an even count, as statistics.median (the sweep's);
            # Tensor.median() takes the lower one, low for this long-tailed distribution
            "median_ms": float(torch.quantile(row, 0.5)),
            "mean_ms": float(row.mean()),
            "p90_ms": float(torch.quantile(row, 0.9)),
        }
        for b, row in zip(sizes, last_arrival, strict=True)
    ]
    return {
        "median_ms": per_size[0]["median_ms"],
        "p90_ms": per_size[0]["p90_ms"],
        "busy_ms": busy_ms,
        "iters": iters,
        "sizes": per_size,
        "wait": how,
    }


def _cgroup_memory_left() -> int | None:
    """Bytes this process's cgroup (v2) may still take, or None without a limit (or cgroup v1)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                limit = (folder / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                return max(0, int(limit) - int((folder / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return None


def host_memory_available() -> int:
    """Bytes of host memory a new allocation can take without swapping: MemAvailable, capped by
    the cgroup's limit (a SLURM job's or a container's)."""
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if have is None:  # no /proc (macOS): the free physical pages
        have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    left = _cgroup_memory_left()
    return have if left is None else min(have, left)


#: The share of the free memory the sweep's buffers may take (the ranks need some for themselves).
_MEMORY_SHARE = 0.9


def buffer_memory(env: DistEnv, max_bytes: int) -> tuple[int, int, str]:
    """(bytes the largest message needs, bytes free for it, where) on this rank's device.

    On the CPU every rank of the node allocates its buffer in the same host memory; on a GPU
    each rank has its own device.
    """
    dev = _buffer_device(env)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max_bytes, int(free * _MEMORY_SHARE), f"{torch.cuda.get_device_name(dev)} {dev}"
    ranks = max(1, env.local_world_size)
    where = f"host memory of {socket.gethostname()}"
    if ranks > 1:
        where += f", shared by its {ranks} ranks"
    return max_bytes * ranks, int(host_memory_available() * _MEMORY_SHARE), where


def check_buffers_fit(env: DistEnv, max_bytes: int) -> None:
    """Refuse (LaunchError, on every rank alike) a --max-bytes whose buffer does not fit in the
    memory of some rank's device: its allocation would fail with a traceback, or the OOM killer
    would end the ranks mid-sweep. Collective: every rank calls it before the sweep."""
    need, have, where = buffer_memory(env, max_bytes)
    worst = max(gather_objects((need - have, need, have, where), env))
    if worst[0] <= 0:
        return
    _, need, have, where = worst
    per_rank = have * max_bytes // need  # the share of one rank
    hint = (
        f"use --max-bytes {format_bytes(1 << (per_rank.bit_length() - 1))} or less"
        if per_rank >= 1
        else "free some memory first"
    )
    raise LaunchError(
        f"--max-bytes {format_bytes(max_bytes)} does not fit in memory: its buffers need "
        f"{format_bytes(need)}, and {have / 2**30:.1f}G is usable in the {where}; {hint}"
    )


def _device_name(env: DistEnv) -> str:
    dev = _buffer_device(env)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return "cpu"


def run_commbench(
    env: DistEnv,
    *,
    min_bytes: int = 4 * 1024,
    max_bytes: int = 256 * 1024 * 1024,
    iters: int | None = None,
    factor: int = 2,
    command: str | None = None,
    wait: str = "spin",
) -> dict[str, Any]:
    """Sweep all-reduce sizes on the current group; every rank returns the same result dict.
    ``wait``: how the after-compute all-reduces are waited for (`measure_sync_latency`)."""
    if not env.is_distributed:
        raise LaunchError("all-reduce needs >= 2 ranks: run under torchrun --nproc_per_node=N")
    results = []
    for size in sweep_sizes(min_bytes, max_bytes, factor):
        n = iters if iters is not None else default_iters(size)
        t_ms = measure_allreduce(size, env, iters=n, warmup=max(2, n // 10))
        algbw = size / (t_ms * 1e-3) / GB if t_ms > 0 else 0.0
        results.append(
            {
                "bytes": size,
                "time_ms": t_ms,
                "algbw_gbps": algbw,
                "busbw_gbps": algbw * ring_factor(env.world_size),
            }
        )
    return {
        "backend": env.backend,
        "world_size": env.world_size,
        "num_nodes": env.num_nodes,
        "device": _device_name(env),
        "torch_version": torch.__version__,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "command": command if command is not None else shlex.join(sys.orig_argv),
        "results": results,
        "fit": _fit(results, env.world_size),
        "sync_latency": measure_sync_latency(env, sizes=after_compute_sizes(max_bytes), wait=wait),
    }


def format_bytes(n: float) -> str:
    """4096 -> '4K', 268435456 -> '256M' (binary units)."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:g}{unit}" if unit else f"{int(n)}"
        n /= 1024
    return str(n)  # unreachable


def parse_bytes(text: str) -> int:
    """'4K' / '4KiB' / '256M' / '1G' / '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 4096, 4K, 256M, 1G)")
    value = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " ")
    if value < 1 or not value.is_integer():
        raise argparse.ArgumentTypeError(f"size must be a whole number of bytes >= 1, got {text!r}")
    if value % 4:  # the buffers are float32: 6 bytes would send 4 and report 6
        raise argparse.ArgumentTypeError(
            f"size must be a multiple of 4 bytes (float32 elements), got {text!r}"
        )
    return int(value)


def format_table(result: dict[str, Any]) -> str:
    """Human-readable sweep table plus the fitted alpha/busbw."""
    lines = [f"{'size':>8} {'time ms':>10} {'algbw GB/s':>11} {'busbw GB/s':>11}"]
    for r in result["results"]:
        lines.append(
            f"{format_bytes(r['bytes']):>8} {r['time_ms']:>10.4f} "
            f"{r['algbw_gbps']:>11.3f} {r['busbw_gbps']:>11.3f}"
        )
    fit = result["fit"]
    lines.append(
        f"fit: t = {fit['alpha_ms']:.4f} ms + {ring_factor(result['world_size']):.3g} x bytes / "
        f"{fit['busbw_gbps']:.3f} GB/s  ({result['backend']}, {result['world_size']} ranks, "
        f"{result['num_nodes']} node(s), {result['device']})"
    )
    lat = result.get("sync_latency")
    if lat:
        lines.append(
            f"sync latency after {lat['busy_ms']:g} ms of compute (4-byte all-reduce, last rank "
            f"to arrive{', waits spinning' if lat.get('wait') == 'spin' else ''}): median "
            f"{lat['median_ms']:.3f} ms, p90 {lat['p90_ms']:.3f} ms"
        )
        for row in lat.get("sizes") or []:
            if row["bytes"] > 4:
                lines.append(
                    f"  {format_bytes(row['bytes'])} after compute: median {row['median_ms']:.3f}"
                    f" ms, mean {row['mean_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms"
                )
    return "\n".join(lines)


def save_commbench(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write commbench.json and commbench.png (time and busbw vs size) into out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "commbench.json"

    rows = result["results"]
    sizes = [r["bytes"] for r in rows]
    fit = result["fit"]
    factor = ring_factor(result["world_size"])
    fit_t = [
        fit["alpha_ms"]
        + (factor * s / (fit["busbw_gbps"] * GB) * 1e3 if fit["busbw_gbps"] > 0 else 0)
        for s in sizes
    ]
    # busbw the fitted model predicts at each size: algbw (bytes / t) times the bus factor
    fit_bw = [
        factor * s / (t * 1e-3) / GB if t > 0 else math.nan
        for s, t in zip(sizes, fit_t, strict=True)
    ]
    size_fmt = FuncFormatter(lambda v, _: format_bytes(v))

    fig, (ax_t, ax_bw) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.loglog(sizes, [r["time_ms"] for r in rows], "o-", label="measured")
    ax_t.loglog(
        sizes,
        fit_t,
        "--",
        color="gray",
        label=(
            f"fit: {fit['alpha_ms']:.3g} ms + {factor:.3g} x bytes / {fit['busbw_gbps']:.3g} GB/s"
        ),
    )
    after = [r for r in (result.get("sync_latency") or {}).get("sizes") or [] if r["bytes"] > 4]
    if after:  # reached from compute: what a training step's gradient all-reduce meets
        ax_t.loglog(
            [r["bytes"] for r in after],
            [r["mean_ms"] for r in after],
            "^",
            color="tab:red",
            label=f"after {result['sync_latency']['busy_ms']:g} ms of compute (mean)",
        )
    ax_t.set_ylabel("all-reduce time (ms)")
    ax_t.set_title("Time per all-reduce")
    ax_bw.semilogx(sizes, [r["busbw_gbps"] for r in rows], "o-", label="busbw")
    ax_bw.semilogx(sizes, [r["algbw_gbps"] for r in rows], "s:", label="algbw")
    ax_bw.semilogx(sizes, fit_bw, "--", color="gray", label="fit busbw")
    ax_bw.set_yscale("log")
    ax_bw.set_ylabel("bandwidth (GB/s)")
    ax_bw.set_title("Bandwidth")
    for ax in (ax_t, ax_bw):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(size_fmt)
        ax.set_xlabel("message size (bytes)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"all-reduce, {result['backend']}, {result['world_size']} ranks on {result['num_nodes']} "
        f"node(s), {result['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    png_path = out / "commbench.png"
    # the plot first, then the JSON atomically: a failure leaves no new JSON beside an old plot
    staged_png = out / ".commbench.png.tmp"
    try:
        fig.savefig(staged_png, dpi=120, format="png")
    finally:
        plt.close(fig)
    os.replace(staged_png, png_path)
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    return json_path, png_path


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="scalelab commbench",
        description="All-reduce time and bandwidth vs message size on the torchrun process group. "
        "Run as: torchrun --nproc_per_node=N -m scalelab commbench [options]",
    )
    p.add_argument("--min-bytes", type=parse_bytes, default=4 * 1024, help="smallest message (4K)")
    p.add_argument(
        "--max-bytes", type=parse_bytes, default=256 * 1024 * 1024, help="largest message (256M)"
    )
    p.add_argument("--factor", type=int, choices=(2, 4), default=2, help="size step (2)")
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help="timed iterations per size (default: adapts to the size)",
    )
    p.add_argument("--out", type=folder, default="experiments/commbench", help="output folder")
    p.add_argument(
        "--wait",
        choices=("spin", "block"),
        default="spin",
        help="how gloo ranks wait for the all-reduces after compute, as the trainer's "
        "distributed.collective_wait (spin)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="auto = nccl on CUDA, gloo on CPU",
    )
    return p


def _user_error(msg: str) -> int:
    """One `scalelab: error:` line (from rank 0 only, as every other subcommand), status 2."""
    if is_main_process():
        print(f"scalelab: error: {msg}", file=sys.stderr, flush=True)
    return 2


def commbench_main(argv: list[str]) -> int:
    """CLI entry point: sweep, then rank 0 prints a table and writes commbench.json/.png."""
    args = _parser().parse_args(argv)
    if args.min_bytes > args.max_bytes:
        return _user_error(f"commbench --min-bytes {args.min_bytes} > --max-bytes {args.max_bytes}")
    if len(sweep_sizes(args.min_bytes, args.max_bytes, args.factor)) < 2:
        return _user_error(
            f"commbench: --min-bytes {args.min_bytes} to --max-bytes {args.max_bytes} is one "
            f"message size; the latency/bandwidth fit needs two (max >= {args.factor} x min)"
        )
    if args.iters is not None and args.iters < 1:
        return _user_error(f"commbench --iters must be >= 1, got {args.iters}")
    why = not_a_folder(args.out)
    if why:
        return _user_error(f"commbench --out {args.out}: {why}")
    try:
        env = init_distributed(DistributedConfig(backend=args.backend))
        if not env.is_distributed:
            return _user_error(
                "commbench: all-reduce needs >= 2 ranks; run under torchrun --nproc_per_node=N "
                "-m scalelab commbench"
            )
        check_buffers_fit(env, args.max_bytes)
        result = run_commbench(
            env,
            min_bytes=args.min_bytes,
            max_bytes=args.max_bytes,
            iters=args.iters,
            factor=args.factor,
            wait=args.wait,
        )
        if env.is_main:
            try:
                json_path, png_path = save_commbench(result, args.out)
            except OSError as exc:
                return _user_error(f"commbench: cannot write into {args.out} ({exc})")
            print(format_table(result))
            print(f"wrote {json_path} and {png_path}")
        return 0
    except LaunchError as exc:
        return _user_error(f"commbench: {exc}")
    finally:
        cleanup()


if __name__ == "__main__":
    raise SystemExit(commbench_main(sys.argv[1:]))
