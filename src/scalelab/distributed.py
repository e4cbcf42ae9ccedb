"""Joins the process group that `scalelab.host` reads from RANK/WORLD_SIZE/SLURM_*, owns it, wraps DDP."""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from scalelab.config import DistributedConfig, first_line
from scalelab.data.batching import to_device

# read without torch (for the CLI and launchers); D.LaunchError and the others as before
from scalelab.host import (  # noqa: F401
    LaunchError,
    available_cpus,
    check_layout,
    count_nodes,
    env_int,
    is_main_process,
    launch_layout,
)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    num_nodes: int = 1
    backend: str = "none"
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def bind_cpus(env: DistEnv, threads: int) -> list[int] | None:
    """On CPU with several ranks per node, bind this rank's threads to its own ``threads`` CPUs.

    Local rank r takes the r-th slice of the CPUs this process may use (taskset, cgroup or SLURM's
    binding decide which), so ranks neither share a core nor migrate between cores, and a rank's
    communication threads wake on the core its compute just left. Every thread started so far is
    bound (gloo's, the tokenizer's); threads started later inherit the binding. Returns the CPUs,
    or None where nothing was bound: a GPU run, one rank per node, no sched_setaffinity, or
    slices that do not fit (SLURM may already have given each task its own CPUs).
    """
    if env.device.type != "cpu" or env.local_world_size < 2 or threads < 1:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if env.local_world_size * threads > len(allowed):
        return None
    mine = allowed[env.local_rank * threads : (env.local_rank + 1) * threads]
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), mine)
    return mine


def init_distributed(cfg: DistributedConfig) -> DistEnv:
    """Join the process group described by torchrun's (or SLURM's) environment; single process otherwise.

    torchrun sets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; under plain `srun` we map the
    SLURM_* variables instead so one task per GPU works without torchrun.
    """
    world_size, rank, local_rank, local_world_size = launch_layout()
    check_layout(world_size, rank, local_rank, local_world_size)
    num_nodes = count_nodes(world_size, local_world_size)
    use_cuda = torch.cuda.is_available()

    num_gpus = torch.cuda.device_count() if use_cuda else 0
    if use_cuda:
        # torchrun: each process sees the node's GPUs and takes its own; srun --gpus-per-task=1:
        # each sees only its GPU, as cuda:0
        device = torch.device("cuda", local_rank % num_gpus)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    if world_size == 1:
        return DistEnv(device=device)

    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if backend == "nccl" and not use_cuda:
        raise LaunchError("distributed.backend=nccl needs CUDA GPUs; use gloo on CPU")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise LaunchError(
                f"WORLD_SIZE > 1 but {var} is not set: start with torchrun (or srun under "
                "scalelab's sbatch)"
            )
    port = env_int("MASTER_PORT", default=0)
    if not 1 <= port <= 65535:
        raise LaunchError(f"MASTER_PORT={port} is not a TCP port (1..65535)")
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=cfg.timeout_s)}
    # More ranks on this node than GPUs each rank sees: either every rank was given its own
    # GPU (srun --gpus-per-task=1: each sees one, as cuda:0) or two ranks would share one.
    # NCCL's communicator, created eagerly by `device_id`, would fail on a shared GPU before
    # the check below can say why, so it is then created lazily.
    maybe_shared = use_cuda and local_world_size > num_gpus
    if backend == "nccl" and not maybe_shared:
        kwargs["device_id"] = device  # binds the communicator to our GPU eagerly
    try:
        dist.init_process_group(**kwargs)
    # the rendezvous store's: its timeout, or an address it cannot use (a backend's own errors,
    # e.g. NCCL's, stay tracebacks: they are not about the launch)
    except (dist.DistStoreError, dist.DistNetworkError) as exc:
        what = first_line(exc)[:200]
        where = f"{os.environ['MASTER_ADDR']}:{port}"
        fix = f"start all {world_size} with torchrun, or unset a WORLD_SIZE/RANK left in the shell"
        if isinstance(exc, dist.DistStoreError):  # rank 0's store waited for the others
            err = LaunchError(
                f"rank {rank} of {world_size}: the other ranks did not join at {where} within "
                f"distributed.timeout_s={cfg.timeout_s:g} s ({what}); {fix}"
            )
        elif rank:  # a client that could not reach rank 0's store
            err = LaunchError(
                f"rank {rank} of {world_size}: cannot reach rank 0 at {where} within "
                f"distributed.timeout_s={cfg.timeout_s:g} s ({what}); {fix}"
            )
        else:  # rank 0 could not open its store there
            err = LaunchError(
                f"rank {rank} of {world_size}: cannot open the rendezvous at {where} ({what}); "
                "check MASTER_ADDR/MASTER_PORT (a port another job holds?)"
            )
        err.every_rank = True  # no process group: each rank says what it saw
        raise err from None
    global _joined_process_group
    _joined_process_group = True
    env = DistEnv(rank, local_rank, world_size, local_world_size, num_nodes, backend, device)
    # Only the GPUs' UUIDs tell whether two ranks hold one GPU (also possible with as many GPUs
    # as ranks, when ranks were given different CUDA_VISIBLE_DEVICES); DDP's first broadcast
    # would otherwise fail on it with a traceback. Checked once per job, here.
    if ranks_share_device(env):
        cleanup()
        hint = (
            f"{local_world_size} ranks per node but each sees {num_gpus} GPU(s); use "
            f"--nproc_per_node={num_gpus} or fewer, or give every rank its own GPU "
            "(srun --gpus-per-task=1)"
            if maybe_shared
            else "give each rank its own device (CUDA_VISIBLE_DEVICES)"
        )
        raise LaunchError(f"two ranks share one GPU: {hint}")
    return env


# True once this process joined a process group (see exit_process).
_joined_process_group = False


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int) -> int:
    """Return `code` for sys.exit, or, in a process that joined a process group, end it right here.

    DDP keeps its C++ ProcessGroupGloo alive after destroy_process_group (its worker threads
    `pt_gloo_runloop` and `gloo_tcp_loop` still run once every Python object is freed), and the
    interpreter's teardown then aborts ("terminate called without an active exception", SIGABRT)
    in about 1 run in 5 on a loaded 2-core machine (measured: DDP on gloo, construct, destroy,
    exit). Every output is written and fsynced before this point, so the rank leaves with
    os._exit after flushing stdio, skipping the C++ teardown.
    """
    if not _joined_process_group:
        return code
    _exit_now(code)


def _exit_now(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, e.g. after a BrokenPipeError
            stream.flush()
    os._exit(code)


def barrier(env: DistEnv, spin: bool = False) -> None:
    """All ranks meet here. `spin` (gloo): a 4-byte all-reduce waited for as
    `all_reduce_waiting` waits, so every rank leaves as soon as the last arrives instead of
    whenever its sleeping thread is woken (a start skew that timing right after would count)."""
    if not env.is_distributed:
        return
    if spin:
        all_reduce_waiting(torch.zeros(1), spin=True)
    else:
        dist.barrier()


def ranks_share_device(env: DistEnv) -> bool:
    """True if two ranks on this node hold the same CUDA device (gathered from all ranks)."""
    if not env.is_distributed or env.device.type != "cuda":
        return False
    mine = f"{socket.gethostname()}:{torch.cuda.get_device_properties(env.device).uuid}"
    everyone: list[str] = [""] * env.world_size
    # Over a gloo group: an NCCL collective on a shared GPU fails ("Duplicate GPU") before we can say why.
    gloo = dist.new_group(backend="gloo")
    dist.all_gather_object(everyone, mine, group=gloo)
    dist.destroy_process_group(gloo)
    return len(set(everyone)) < len(everyone)


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (pickled; small objects only)."""
    if not env.is_distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few floats across ranks (float64 so counts stay exact)."""
    if not env.is_distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(env))
    dist.all_reduce(t)
    return t.tolist()  # host-device sync (once per call, never per step)


def all_reduce_max(value: float, env: DistEnv) -> float:
    """The largest of one float across ranks."""
    if not env.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())  # host-device sync (once per call, never per step)


def all_reduce_maxes(values: list[float], env: DistEnv) -> list[float]:
    """The largest of each of a few floats across ranks (one collective)."""
    if not env.is_distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()  # host-device sync (once per call, never per step)


def all_reduce_mean_max(values: list[float], env: DistEnv) -> tuple[list[float], list[float]]:
    """Per-value mean and max across ranks, for straggler-aware timing."""
    if not env.is_distributed:
        return list(values), list(values)
    dev = _collective_device(env)
    s = torch.tensor(values, dtype=torch.float64, device=dev)
    m = s.clone()
    dist.all_reduce(s)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return (s / env.world_size).tolist(), m.tolist()


def _collective_device(env: DistEnv) -> torch.device:
    return env.device if env.backend == "nccl" else torch.device("cpu")


def broadcasts_buffers(model: nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers before every forward: only for buffers that
    training changes, statistics such as BatchNorm's (floating point). Index tables
    (DistilBERT's position_ids) never change, and broadcasting them cost one more collective in
    every forward, which calibration (with and without no_sync, both broadcasting) could not
    see as communication."""
    return any(b.is_floating_point() for b in model.buffers())


def _buffer_sync(every_forward: bool) -> dict[str, bool]:
    """DDP's argument for syncing buffers before each forward: torch 2.13 renamed
    broadcast_buffers forward_sync_buffers (which still syncs them once at construction; before
    2.13 broadcast_buffers=False skips that too, which leaves only buffers unsynced that are
    index tables, built alike on every rank)."""
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": every_forward}
    return {"broadcast_buffers": every_forward}


def wrap_ddp(
    model: nn.Module, cfg: DistributedConfig, env: DistEnv, rows: EmbeddingRowGrad | None = None
) -> nn.Module:
    """Wrap in DDP (multi-rank only) with the configured buckets and communication hook.

    `rows`: when it syncs the token-embedding rows itself, DDP leaves the embedding alone (it is
    broadcast from rank 0 here, as DDP does for the others), and under
    distributed.grad_sync=fused DDP's buckets are handed to it (`DeferredBuckets`).
    """
    if not env.is_distributed:
        return model
    syncs_rows = rows is not None and rows.sync_rows
    fused = fuses_grad_sync(cfg, env.backend)
    if fused and not syncs_rows:
        raise LaunchError(
            "distributed.grad_sync=fused needs the token-embedding rows summed outside DDP "
            f"(distributed.embedding_grad_sync=rows; with {env.backend} 'auto' is dense)"
        )
    if syncs_rows:
        assert rows is not None
        DDP._set_params_and_buffers_to_ignore_for_model(model, [rows.name])
        dist.broadcast(rows.weight.data, src=0)
    if cfg.comm_hook == "bf16" and env.backend != "nccl":
        # torch's bf16 compression hook is NCCL-only (it needs CUDA and NCCL >= 2.10)
        raise LaunchError(
            "distributed.comm_hook=bf16 needs CUDA GPUs with NCCL; use fp16 with gloo"
        )
    ddp = DDP(
        model,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        **_buffer_sync(broadcasts_buffers(model)),
        bucket_cap_mb=cfg.bucket_cap_mb,
        static_graph=cfg.static_graph,
        gradient_as_bucket_view=cfg.gradient_as_bucket_view,
        find_unused_parameters=cfg.find_unused_parameters,
    )
    if fused:
        assert rows is not None
        rows.deferred = DeferredBuckets()
        ddp.register_comm_hook(rows.deferred, DeferredBuckets.hook)
    else:
        register_comm_hook(ddp, cfg, env.backend)
    return ddp


def planned_backend(cfg: DistributedConfig) -> str:
    """The backend a multi-rank run of this config uses (a 1-rank run asks for its predictions)."""
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def syncs_embedding_rows(cfg: DistributedConfig, backend: str | None = None) -> bool:
    """Whether the token-embedding gradient is summed row-wise (distributed.embedding_grad_sync)."""
    if cfg.embedding_grad_sync == "auto":
        return (backend or planned_backend(cfg)) == "gloo"
    return cfg.embedding_grad_sync == "rows"


#: How long `all_reduce_waiting` spins before it blocks in gloo's wait() (which keeps the
#: process group's timeout): far beyond a healthy step's wait, short enough that a hung peer
#: costs no CPU.
SPIN_WAIT_S = 0.05


def spins_waiting(cfg: DistributedConfig, backend: str | None = None) -> bool:
    """Whether scalelab's own gradient all-reduce is waited for by spinning
    (distributed.collective_wait, `waits_spinning`)."""
    return waits_spinning(cfg.collective_wait, backend or planned_backend(cfg))


def waits_spinning(wait: str, backend: str) -> bool:
    """Whether a wait of `wait` ('auto', 'spin' or 'block') spins on `backend`: gloo only,
    since NCCL's collectives do not block the host."""
    return backend == "gloo" and wait != "block"


def all_reduce_waiting(t: torch.Tensor, spin: bool) -> None:
    """`dist.all_reduce(t)`; with `spin`, waited for by yielding the CPU in a loop (up to
    SPIN_WAIT_S, then gloo's blocking wait) instead of sleeping in wait().

    A rank that sleeps in gloo's wait must be woken when its peers' data is in: on the 2-vCPU
    test VM a 1 MB all-reduce reached from 20 ms of compute took a mean of 0.98 ms spinning
    against 2.1-2.4 ms blocking (commbench in demos: benchmarks/results/
    2026-12-07-vm-xeon-demo-spin-wait.json, -after-compute.json). sched_yield lets gloo's own
    threads, and a peer rank sharing the core, run meanwhile."""
    if not spin:
        dist.all_reduce(t)
        return
    work = dist.all_reduce(t, async_op=True)
    deadline = time.perf_counter() + SPIN_WAIT_S
    while not work.is_completed() and time.perf_counter() < deadline:
        os.sched_yield()
    work.wait()  # raises the collective's error, if it failed


def fuses_grad_sync(cfg: DistributedConfig, backend: str | None = None) -> bool:
    """Whether a step's gradients are summed in one all-reduce after the backward
    (distributed.grad_sync; 'auto': with gloo, when the embedding rows are synced outside DDP
    and no comm hook or unused-parameter search is set)."""
    if cfg.grad_sync != "auto":
        return cfg.grad_sync == "fused"
    return (
        (backend or planned_backend(cfg)) == "gloo"
        and syncs_embedding_rows(cfg, backend)
        and cfg.comm_hook == "none"
        and not cfg.find_unused_parameters
    )


class DeferredBuckets:
    """DDP communication hook for distributed.grad_sync=fused: every bucket goes back to DDP
    unreduced, and `EmbeddingRowGrad.finish` sums all of them together with the token-embedding
    rows in ONE all-reduce after the backward.

    On CPUs (gloo) the backward hides none of DDP's bucket all-reduces (they need the cores the
    compute keeps busy), and each collective pays gloo's latency and its ranks' wait for each
    other, so one collective per step is cheaper than DDP's buckets plus the rows' own. Nothing
    is lost to overlap there; on GPUs (NCCL) overlap matters, which is why 'auto' fuses with
    gloo only. The sum and the division by the world size are DDP's.
    """

    def __init__(self) -> None:
        # bucket index -> (its flat buffer, its parameters)
        self.buckets: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self.calls = 0  # hook calls (one per bucket per synchronised backward)

    # no annotations: DDP checks a hook's annotations at run time, and this module's are strings
    @staticmethod
    def hook(state, bucket):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN205
        state.calls += 1
        # after several micro-steps (static_graph's first iteration syncs each) still once
        state.buckets[bucket.index()] = (bucket.buffer(), bucket.parameters())
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(bucket.buffer())  # unchanged: DDP keeps the local gradients for now
        return fut

    def take(self) -> list[torch.Tensor]:
        """Tensors that hold the deferred buckets' gradients, in bucket order: a bucket's flat
        buffer when its gradients are views into it (gradient_as_bucket_view, after DDP's hook),
        else its gradients; forgets them."""
        out: list[torch.Tensor] = []
        for index in sorted(self.buckets):
            buffer, params = self.buckets[index]
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                raise RuntimeError(f"DDP bucket {index} has a parameter without a gradient")
            storage = buffer.untyped_storage().data_ptr()
            if all(g.untyped_storage().data_ptr() == storage for g in grads):  # type: ignore[union-attr]
                out.append(buffer)  # one contiguous copy instead of one per parameter
            else:
                out.extend(grads)  # type: ignore[arg-type]
        self.buckets = {}
        return out

    def discard(self) -> None:
        self.buckets = {}


def embedding_rows(tokens: torch.Tensor, global_batch: np.ndarray) -> torch.Tensor:
    """Sorted distinct token ids (int64, host) of the sequences `global_batch` of `tokens` [N, L].

    Padding ids are included: their rows get exactly zero gradient, like every row not listed.
    """
    used = tokens.index_select(0, torch.from_numpy(np.asarray(global_batch, dtype=np.int64)))
    return torch.unique(used).long()


class EmbeddingRowGrad:
    """The token-embedding gradient, handled only on the rows a global batch used.

    A global batch of B sequences uses at most B x L of the vocab_size embedding rows; every
    other row's gradient is exactly zero on every rank. Two costs of the dense path do not shrink
    when more ranks split the batch, so they cap data-parallel speedup on CPUs; this class removes
    both while the optimizer still steps every row with the full, dense gradient (exactly AdamW):

    * ``sparse_backward``: the embedding's backward emits only the used rows (``nn.Embedding``
      with ``sparse=True``), and `finish` adds them into one persistent dense gradient, zeroing
      only the rows the previous step wrote. The dense backward zero-fills and scatters the
      whole vocab_size x d_model gradient every step (benchmarks/embedding_grad.py measures
      the difference).
    * ``sync`` (several ranks): one all-reduce of only those rows instead of DDP's all
      vocab_size x d_model values (10.2 of the small preset's 11.4 MB of gradients). The rows
      are the token ids of the whole GLOBAL batch, which every rank knows (the sampler is
      world-size invariant), so all ranks send the same rows in the same order with no
      collective to agree on them, and the sum equals DDP's. Wrap with
      ``wrap_ddp(..., rows=this)`` so DDP leaves the embedding to this class.

    `rows` of the last `finish` let clipping measure and scale just those rows
    (`clip_grad_norm`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        env: DistEnv,
        *,
        sparse_backward: bool,
        sync: bool,
        spin_wait: bool = False,
    ) -> None:
        embedding: nn.Embedding = model.token_embedding()
        self.weight: nn.Parameter = embedding.weight
        self.name = next(n for n, p in model.named_parameters() if p is self.weight)
        self.tokens = tokens.cpu()  # host ids: the rows are found without a device sync
        self.env = env
        self.sync_rows = sync and env.is_distributed
        self.spin_wait = spin_wait  # distributed.collective_wait (`all_reduce_waiting`)
        self.sparse_backward = sparse_backward
        embedding.sparse = sparse_backward  # read by nn.Embedding.forward
        self._grad: torch.Tensor | None = None  # persistent dense gradient (sparse_backward)
        self._written = torch.empty(0, dtype=torch.long, device=self.weight.device)
        self.rows = self._written
        # distributed.grad_sync=fused: DDP's buckets, summed here with the rows (`wrap_ddp` sets it)
        self.deferred: DeferredBuckets | None = None
        self._flat = torch.empty(0, device=self.weight.device)  # its one all-reduce's buffer, kept
        #: ms the last `finish` spent in the step's one all-reduce of every gradient
        #: (grad_sync=fused), from the call until the sum was in, waiting for the last rank
        #: included; None where that is not the step's whole gradient communication (DDP's
        #: buckets all-reduced in the backward) or not a host wait (NCCL returns at once)
        self.collective_ms: float | None = None

    def finish(self, global_batch: np.ndarray, sync: bool = True) -> int:
        """After the last micro-step's backward: make the embedding's gradient dense (and summed
        over ranks unless ``sync`` is False). Returns the bytes all-reduced."""
        rows = to_device(embedding_rows(self.tokens, global_batch), self.weight.device)
        self.rows = rows
        self.collective_ms = None
        grad = self.weight.grad
        if self.sparse_backward:
            if self._grad is None:
                self._grad = torch.zeros_like(self.weight)
            dense = self._grad
            dense.index_fill_(0, self._written, 0.0)  # the only nonzero rows, from the last step
            if grad is not None:
                if not grad.is_sparse:
                    raise RuntimeError("embedding gradient is dense although sparse_backward is on")
                dense.index_add_(0, grad._indices()[0], grad._values())
            self.weight.grad = grad = dense
            self._written = rows
        elif grad is None:  # every rank must join the collective
            self.weight.grad = grad = torch.zeros_like(self.weight)
        if not (sync and self.sync_rows):
            if self.deferred is not None:
                self.deferred.discard()  # a no_sync backward: DDP called no hook anyway
            return 0
        compact = grad.index_select(0, rows)
        if self.deferred is None:
            all_reduce_waiting(compact, self.spin_wait)
            grad.index_copy_(0, rows, compact.div_(self.env.world_size))
            return compact.numel() * compact.element_size()
        # one all-reduce for DDP's buckets and the rows (every rank lays them out alike)
        grads = self.deferred.take()
        if not grads:
            raise RuntimeError("grad_sync=fused: DDP ran no bucket hook in this step's backward")
        parts = [*grads, compact]
        sizes = [t.numel() for t in parts]
        total = sum(sizes)
        if self._flat.numel() < total or self._flat.dtype != compact.dtype:
            # kept across steps (the rows vary): a fresh buffer each step costs page faults
            self._flat = torch.empty(int(total * 1.25), dtype=compact.dtype, device=grad.device)
        flat = self._flat[:total]
        torch.cat([t.reshape(-1) for t in parts], out=flat)
        t0 = time.perf_counter()
        all_reduce_waiting(flat, self.spin_wait)
        if self.env.backend == "gloo" and flat.device.type == "cpu":  # back when the sum is in
            self.collective_ms = (time.perf_counter() - t0) * 1000.0
        flat.div_(self.env.world_size)
        pieces = flat.split(sizes)
        torch._foreach_copy_(grads, [p.view_as(g) for p, g in zip(pieces, grads, strict=False)])
        grad.index_copy_(0, rows, pieces[-1].view_as(compact))
        return flat.numel() * flat.element_size()


def register_comm_hook(ddp: DDP, cfg: DistributedConfig, backend: str) -> None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if cfg.comm_hook == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif cfg.comm_hook == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif cfg.comm_hook == "powersgd":
        from scalelab.powersgd import PowerSGDHook

        hook = PowerSGDHook(ddp.module, cfg.powersgd_rank, one_bucket_at_a_time=backend == "gloo")
        ddp.register_comm_hook(hook, PowerSGDHook.hook)
        ddp.scalelab_hook = hook  # its per-rank state goes into checkpoints (comm_hook_state)


def comm_hook_state(ddp: nn.Module) -> dict[str, Any] | None:
    """This rank's communication-hook state (tensors on the CPU); None for stateless hooks.

    PowerSGD keeps per-rank state that an exact resume needs: the error feedback (each rank's
    residual of its own local gradient), the warm-start P/Q factors, its random generator and
    the iteration count (vanilla all-reduce before the second step).
    """
    hook = getattr(ddp, "scalelab_hook", None)
    return hook.state_dict() if hook is not None else None


def has_comm_hook_state(ddp: nn.Module) -> bool:
    """Whether `ddp`'s communication hook keeps state (without copying it, as
    `comm_hook_state` does)."""
    return getattr(ddp, "scalelab_hook", None) is not None


def load_comm_hook_state(ddp: nn.Module, saved: dict[str, Any], device: torch.device) -> None:
    """Restore what `comm_hook_state` returned on this rank (before the first step)."""
    ddp.scalelab_hook.load_state_dict(saved, device)


def gradient_buckets(
    model: nn.Module, bucket_cap_mb: float, exclude: Sequence[torch.Tensor] = ()
) -> list[int]:
    """Bytes per gradient bucket as DDP packs them after its first step (for 1-rank predictions).

    DDP rebuilds buckets in gradient-ready order (about reverse parameter order), closing a bucket
    once it reaches the cap, so a tensor larger than the cap gets a bucket of its own.
    `exclude`: parameters DDP is told to leave alone. Multi-rank runs use `ddp_bucket_sizes`
    instead, DDP's own record.
    """
    cap = bucket_cap_mb * 1024 * 1024
    skip = {id(p) for p in exclude}
    buckets: list[int] = []
    current = 0
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    for p in reversed(params):
        current += p.numel() * p.element_size()
        if current >= cap:
            buckets.append(current)
            current = 0
    if current:
        buckets.append(current)
    return buckets


def ddp_bucket_sizes(model: nn.Module) -> list[int] | None:
    """The bucket sizes DDP really uses (after its rebuild on the first step), from its logging data."""
    if not isinstance(model, DDP):
        return None
    data = model._get_ddp_logging_data()
    raw = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes")
    if not raw:
        return None
    return [int(x) for x in str(raw).split(",") if x.strip()]
