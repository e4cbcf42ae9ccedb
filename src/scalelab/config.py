"""Typed run configuration: YAML presets + dotted CLI overrides, validated up front.

Every field carries a docstring-like comment; `scalelab config` prints them.
User errors raise :class:`ConfigError` (a ValueError) whose message names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import types
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

#: torch.compile's modes (train.compile_mode).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


_MAX_INT = 2**31 - 1
_MAX_DELAY_S = 86_400.0  # data.delay_per_batch_s: a simulated loader, not a sleep of years
_MAX_THREADS = 1024
_MAX_NAME_BYTES = 255  # a file name's limit on Linux and macOS file systems


class ConfigError(ValueError):
    """A problem with the user's configuration; the message names the key."""

    # rank 0 prints the line; True: each rank that raises it does (only some ranks may)
    every_rank = False


def is_number(value: Any) -> bool:
    """An int or float, not a bool (True is an int to Python, never a figure to us)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, or its type's name: the part of a library's message
    that fits a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def not_a_folder(folder: str | Path) -> str | None:
    """Why `folder` cannot be (made into) a folder: it is a file, or a file stands where one of
    its parents would be made (mkdir would fail there with a traceback); None when it can."""
    folder = Path(folder)
    longest = max((len(os.fsencode(p)) for p in folder.parts), default=0)
    if longest > _MAX_NAME_BYTES:  # the file system refuses it (and exists() raises on it)
        return f"cannot be made (a name in it is {longest} bytes; at most 255)"
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            if path.is_dir():
                return None
            what = "is a broken symbolic link" if not path.exists() else "is not a folder"
            if path == folder:
                return "exists and is not a folder" if path.exists() else what
            return f"cannot be made ({path} {what})"
    return None


@dataclass
class ModelConfig:
    arch: str = "transformer"
    """'transformer' (the study's encoder classifier) or 'distilbert' (needs the `hf` extra)."""
    vocab_size: int = 20000
    """Tokenizer vocabulary size when a WordPiece tokenizer is trained on the training split."""
    d_model: int = 128
    """Width of token embeddings and encoder blocks."""
    num_layers: int = 2
    """Number of encoder blocks."""
    num_heads: int = 4
    """Attention heads per block; must divide d_model."""
    d_ff: int = 256
    """Hidden width of each block's feed-forward network."""
    max_seq_len: int = 128
    """Longest sequence in tokens (incl. [CLS]/[SEP]); longer texts are truncated."""
    dropout: float = 0.1
    """Dropout probability in embeddings, attention output and FFN."""
    num_classes: int = 0
    """Number of labels; 0 takes it from the dataset."""
    pretrained: str = ""
    """distilbert only: local path of pretrained weights; empty = random initialisation."""


@dataclass
class DataConfig:
    dataset: str = "ag_news"
    """'ag_news' or 'imdb'."""
    source: str = "sample"
    """'sample' (small stratified sample shipped in the package), 'files' (train_path/test_path) or 'hf' (Hugging Face datasets)."""
    train_path: str = ""
    """source=files: AG News CSV ("class","title","description"), IMDB text,label CSV, or an aclImdb/train folder. .gz is fine."""
    test_path: str = ""
    """source=files: the matching test split."""
    vocab_path: str = ""
    """A WordPiece vocab.txt or a tokenizers tokenizer.json; empty = train WordPiece on the training split."""
    lowercase: bool = True
    """Lower-case and strip accents before tokenizing (BERT 'uncased')."""
    cache_dir: str = ""
    """Where encoded datasets are cached; empty = $SCALELAB_CACHE or ~/.cache/scalelab. Local rank 0 of every node builds a missing cache (nodes need not share the folder; a shared one is written atomically; a trained vocabulary is the same on every build). Before training, all ranks compare their tokenizer and split sizes and stop with one line naming the rank and cache file that differ."""
    pad_to_max_len: bool = False
    """Pad every batch to model.max_seq_len (the study's way) instead of to the longest sequence in the batch."""
    pad_multiple: int = 1
    """Round each batch's length up to a multiple of this (no longer than model.max_seq_len; a multiple above max_seq_len is refused): fewer distinct shapes for torch.compile / CUDA graphs, tensor-core-friendly sizes (8 or 16 on GPUs). 1 = pad to the longest sequence."""
    bucket_multiplier: int = 50
    """Length bucketing: sort each window of bucket_multiplier x global batch examples by length before batching."""
    max_train_samples: int = 0
    """Use a seeded random subset of N training examples, kept in file order (0 = all)."""
    max_test_samples: int = 0
    """Use a seeded random subset of N test examples, kept in file order (0 = all)."""
    on_device: bool = True
    """CUDA only: keep the encoded dataset on the GPU and gather each batch there; only the batch's indices go host->device (sampling and batch lengths stay on the host)."""
    delay_per_batch_s: float = 0.0
    """Diagnostics knob: sleep this long per batch to simulate a slow input pipeline."""


@dataclass
class TrainConfig:
    epochs: int = 3
    """Number of passes over the training data."""
    batch_size: int = 32
    """GLOBAL batch size per optimizer step; per-rank batch = batch_size / (world_size * grad_accum_steps)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; non-final micro-steps skip the all-reduce (DDP no_sync)."""
    lr: float = 5e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, norms, embeddings)."""
    warmup_ratio: float = 0.1
    """Fraction of all optimizer steps spent in linear warm-up."""
    lr_schedule: str = "cosine"
    """'cosine', 'linear' or 'constant' decay after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    precision: str = "fp32"
    """'fp32', 'bf16' (autocast) or 'fp16' (autocast + GradScaler: a step whose gradients overflow is skipped on the GPU, without a host sync, so the learning-rate schedule still advances on it). bf16 also runs on CPUs (autocast; fastest where the CPU has AMX or AVX-512 BF16: benchmarks/cpu_precision.py), fp16 needs CUDA; 'auto' = bf16 on CUDA, else fp32."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    compile_mode: str = "default"
    """torch.compile mode with train.compile=true: 'default', 'reduce-overhead' (CUDA graphs, for small launch-bound models on a GPU; one graph per batch shape, so pair it with data.pad_multiple), 'max-autotune' or 'max-autotune-no-cudagraphs'."""
    embedding_grad: str = "auto"
    """Token-embedding gradient: 'dense' (PyTorch's backward fills all vocab_size x d_model values each step), 'rows' (sparse backward added into a kept dense gradient, zeroing and clipping only the rows the batch used: the same AdamW update, less work per step) or 'auto' (rows on CPU when the embedding is not in DDP's buckets and compile is off, else dense)."""
    seed: int = 42
    """Seed for initialisation, shuffling and dropout."""
    resume: str = ""
    """'' = start fresh, 'auto' = continue the run named by output.run_name (required) from its last checkpoint if any, or a checkpoint path."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N optimizer steps (0 = only at the end of each epoch)."""
    save_checkpoint: bool = True
    """Write checkpoints at all."""
    log_every_steps: int = 50
    """Update the progress line every N steps; each update is a host-device sync for the loss. (Whether any rank got SIGTERM/SIGUSR1 the ranks agree about every ~5 s of training, one tiny all-reduce, and stop together: every N steps, N set from the step time measured at the previous poll.)"""
    timing_warmup_steps: int = 5
    """First optimizer steps of each invocation excluded from the per-phase timing (warm-up, compile); a resumed run warms up again, over at most half of the epoch's steps left."""
    profile_steps: int = 0
    """Run N optimizer steps of the first epoch (right after the timing warm-up; at most half of the epoch's remaining steps, but at least one when more epochs follow) under torch.profiler: each rank writes profile-rank<r>.json (a chrome trace) into the run folder, and summary.json's `profile` holds rank 0's GPU busy/idle time, launches, host syncs and pageable-memory copies inside the steps, and top kernels and host ops. Profiled steps are left out of the phase timing. 0 = off."""
    comm_calibration_steps: int = 16
    """Batches each timed with and without the gradient all-reduce after training (which first alternates), to measure exposed communication where the steps do not time it themselves (with grad_sync=fused on gloo they do, and this figure is kept as comm.calibrated_exposed_comm_ms): the mean of the differences, plus one batch that warms up (0 = skip)."""
    num_threads: int = 0
    """torch intra-op threads per rank on CPU; 0 = OMP_NUM_THREADS if set (torchrun with >1 rank per node sets 1 when it is unset; scalelab sweep sets cores / ranks), else cores / local ranks."""
    max_steps_per_epoch: int = 0
    """Stop each epoch after N optimizer steps (0 = full epoch). For smoke tests."""
    stop_after_steps: int = 0
    """Checkpoint and exit after N optimizer steps of this invocation, as if preempted (0 = never; needs train.save_checkpoint); resume with train.resume=auto."""
    eval_batch_size: int = 0
    """Per-rank evaluation batch size; 0 = 2 x per-rank training batch."""

    def per_rank_batch(self, world_size: int) -> int:
        return self.batch_size // (world_size * self.grad_accum_steps)


@dataclass
class DistributedConfig:
    backend: str = "auto"
    """'auto' (nccl on CUDA, gloo on CPU), 'nccl' or 'gloo'."""
    bucket_cap_mb: float = 25.0
    """DDP gradient bucket size in MB."""
    static_graph: bool = False
    """DDP static_graph=True (the graph is the same every step)."""
    gradient_as_bucket_view: bool = True
    """Gradients are views into DDP's buckets (saves a copy and memory)."""
    find_unused_parameters: bool = False
    """DDP searches for unused parameters each step (slow; only if the model really has them)."""
    comm_hook: str = "none"
    """'none', 'fp16', 'bf16' (compress gradients to 16 bit) or 'powersgd' (low-rank; its per-rank state is checkpointed; on gloo the buckets are reduced one after another)."""
    powersgd_rank: int = 4
    """Rank of the PowerSGD approximation."""
    embedding_grad_sync: str = "auto"
    """How ranks sum the token-embedding gradient: 'dense' (DDP all-reduces all vocab_size x d_model values), 'rows' (one all-reduce of only the rows the global batch used: the same sum, ~20x fewer bytes with a 20k vocabulary) or 'auto' (rows with gloo, dense with nccl)."""
    grad_sync: str = "auto"
    """When ranks sum gradients: 'buckets' (DDP all-reduces each bucket as it fills, overlapping the backward; the embedding rows follow in one more all-reduce), 'fused' (one all-reduce per step after the backward: DDP's buckets and the embedding rows together, one collective's latency instead of one per bucket plus one; needs embedding_grad_sync=rows, comm_hook=none, find_unused_parameters=false) or 'auto' (fused with gloo when those hold, else buckets)."""
    collective_wait: str = "auto"
    """How a gloo rank waits for the gradient all-reduce scalelab itself issues (distributed.grad_sync=fused, or the embedding rows' own), and the barrier before each step of the exposed-communication calibration: 'spin' (yield the CPU in a loop, for up to 50 ms, then block: the rank goes on as soon as the sum is in instead of being woken from sleep; measured in README Performance's 'DDP 2x1 spinning vs blocking wait' row), 'block' (gloo's wait()) or 'auto' (spin). DDP's own bucket all-reduces wait inside DDP; NCCL's run on the GPU's stream (no host wait)."""
    timeout_s: int = 600
    """Collective timeout in seconds."""
    pin_cpus: bool = False
    """CPU runs with several ranks per node: bind each rank's threads to its own train.num_threads cores, out of those the job may use, when they fit (false: placement is left to the OS scheduler)."""


@dataclass
class OutputConfig:
    dir: str = "experiments"
    """Parent folder of run folders; on several nodes, a folder they all share (rank 0 writes, every rank resumes from it; ranks that disagree about resuming stop with one line)."""
    run_name: str = ""
    """Run folder name inside output.dir (a plain name: no '/', not '.' or '..'); empty = '<config name>-ws<world size>-<timestamp>'."""
    progress: str = "auto"
    """'auto' (bar on a TTY, plain lines otherwise), 'bar', 'plain' or 'none'."""


@dataclass
class Config:
    name: str = "custom"
    """Preset name, recorded in outputs and used to group runs in reports."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world_size: int | None = None) -> Config:
        """Check values and combinations; raise ConfigError naming the key."""
        m, d, t, dist, o = self.model, self.data, self.train, self.distributed, self.output
        # every float field of every section: nan/inf pass all the range checks below
        for sec_name in _SECTIONS:
            if sec_name == "name":
                continue
            section = getattr(self, sec_name)
            for key, typ in _section_types(type(section)).items():
                value = getattr(section, key)
                if typ is float and not math.isfinite(value):
                    raise ConfigError(f"{sec_name}.{key} must be a finite number, got {value}")
                # sizes and counts beyond this overflow the tokenizer's and torch's arguments
                if typ is int and abs(value) > _MAX_INT and f"{sec_name}.{key}" != "train.seed":
                    raise ConfigError(f"{sec_name}.{key} must be at most {_MAX_INT}, got {value}")
        _choice("model.arch", m.arch, ("transformer", "distilbert"))
        _choice("data.dataset", d.dataset, ("ag_news", "imdb"))
        _choice("data.source", d.source, ("sample", "files", "hf"))
        _choice("train.precision", t.precision, ("fp32", "bf16", "fp16", "auto"))
        _choice("train.lr_schedule", t.lr_schedule, ("cosine", "linear", "constant"))
        _choice("train.embedding_grad", t.embedding_grad, ("auto", "dense", "rows"))
        _choice("distributed.backend", dist.backend, ("auto", "nccl", "gloo"))
        _choice("distributed.comm_hook", dist.comm_hook, ("none", "fp16", "bf16", "powersgd"))
        _choice(
            "distributed.embedding_grad_sync", dist.embedding_grad_sync, ("auto", "dense", "rows")
        )
        _choice("distributed.grad_sync", dist.grad_sync, ("auto", "buckets", "fused"))
        _choice("distributed.collective_wait", dist.collective_wait, ("auto", "spin", "block"))
        if dist.grad_sync == "fused":
            clash = (
                ("distributed.embedding_grad_sync=dense", dist.embedding_grad_sync == "dense"),
                (f"distributed.comm_hook={dist.comm_hook}", dist.comm_hook != "none"),
                ("distributed.find_unused_parameters=true", dist.find_unused_parameters),
            )
            for what, bad in clash:
                if bad:
                    raise ConfigError(
                        f"distributed.grad_sync=fused does not combine with {what} (it sums DDP's "
                        "buckets and the embedding rows in one plain all-reduce)"
                    )
        _choice("output.progress", o.progress, ("auto", "bar", "plain", "none"))
        # the run folder is output.dir/<run_name or name-ws<n>-<time>>: it must stay inside
        for key, value in (("output.run_name", o.run_name), ("name", self.name)):
            if value in (".", "..") or any(
                c in "/\\" or unicodedata.category(c) == "Cc" for c in value
            ):
                raise ConfigError(
                    f"{key} must be a plain folder name (no '/', no control characters, not '.' "
                    f"or '..'), got {value!r}"
                )
            # a folder name of at most 255 bytes; name is followed by -ws<n>-<date>-<time>
            room = _MAX_NAME_BYTES - (0 if key == "output.run_name" else 32)
            size = len(os.fsencode(value))
            if size > room:
                raise ConfigError(f"{key} is {size} bytes long; at most {room}")
        if not self.name:
            raise ConfigError("name must not be empty (it names the run folders)")
        _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
        for key, value in (
            ("model.vocab_size", m.vocab_size),
            ("model.d_model", m.d_model),
            ("model.num_layers", m.num_layers),
            ("model.num_heads", m.num_heads),
            ("model.d_ff", m.d_ff),
            ("model.max_seq_len", m.max_seq_len),
            ("data.bucket_multiplier", d.bucket_multiplier),
            ("data.pad_multiple", d.pad_multiple),
            ("train.epochs", t.epochs),
            ("train.batch_size", t.batch_size),
            ("train.grad_accum_steps", t.grad_accum_steps),
            ("train.log_every_steps", t.log_every_steps),
            ("distributed.powersgd_rank", dist.powersgd_rank),
            ("distributed.timeout_s", dist.timeout_s),
        ):
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        for key, value in (
            ("model.num_classes", m.num_classes),
            ("data.max_train_samples", d.max_train_samples),
            ("data.max_test_samples", d.max_test_samples),
            ("train.checkpoint_every_steps", t.checkpoint_every_steps),
            ("train.timing_warmup_steps", t.timing_warmup_steps),
            ("train.profile_steps", t.profile_steps),
            ("train.comm_calibration_steps", t.comm_calibration_steps),
            ("train.num_threads", t.num_threads),
            ("train.max_steps_per_epoch", t.max_steps_per_epoch),
            ("train.stop_after_steps", t.stop_after_steps),
            ("train.eval_batch_size", t.eval_batch_size),
            ("train.max_grad_norm", t.max_grad_norm),
            ("train.weight_decay", t.weight_decay),
            ("data.delay_per_batch_s", d.delay_per_batch_s),
        ):
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if d.delay_per_batch_s > _MAX_DELAY_S:  # 1e300 overflowed time.sleep mid-training
            raise ConfigError(
                f"data.delay_per_batch_s must be at most {_MAX_DELAY_S:g} s (a day), got "
                f"{d.delay_per_batch_s}"
            )
        if t.num_threads > _MAX_THREADS:  # 10,000 crashed torch (a segfault, no message)
            raise ConfigError(
                f"train.num_threads must be at most {_MAX_THREADS}, got {t.num_threads}"
            )
        if m.max_seq_len < 3:
            raise ConfigError(
                f"model.max_seq_len must be >= 3 ([CLS] text [SEP]), got {m.max_seq_len}"
            )
        if d.pad_multiple > m.max_seq_len:
            raise ConfigError(
                f"data.pad_multiple={d.pad_multiple} is above model.max_seq_len={m.max_seq_len}: "
                "every batch would be padded to max_seq_len (data.pad_to_max_len=true does that)"
            )
        if m.num_classes == 1:
            raise ConfigError("model.num_classes must be 0 (from the dataset) or >= 2, got 1")
        if m.d_model % m.num_heads:
            raise ConfigError(
                f"model.num_heads={m.num_heads} must divide model.d_model={m.d_model}"
            )
        if not 0.0 <= m.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
        if not 0.0 <= t.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {t.lr}")
        if dist.bucket_cap_mb <= 0:
            raise ConfigError(f"distributed.bucket_cap_mb must be > 0, got {dist.bucket_cap_mb}")
        if not 0 <= t.seed <= 2**32 - 1:
            raise ConfigError(f"train.seed must be in [0, 2**32 - 1], got {t.seed}")
        if d.source == "files" and not (d.train_path and d.test_path):
            raise ConfigError("data.source=files needs both data.train_path and data.test_path")
        if d.source != "files" and (d.train_path or d.test_path):
            given = "data.train_path" if d.train_path else "data.test_path"
            raise ConfigError(
                f"{given} is set but data.source={d.source} does not read it; add "
                "data.source=files to train on your files"
            )
        if m.pretrained and m.arch != "distilbert":
            raise ConfigError("model.pretrained is only used with model.arch=distilbert")
        if t.stop_after_steps and not t.save_checkpoint:
            raise ConfigError(
                "train.stop_after_steps needs train.save_checkpoint=true: a stopped run without a "
                "checkpoint cannot be continued"
            )
        if t.resume not in ("", "auto") and not Path(t.resume).expanduser().is_file():
            found = Path(t.resume).expanduser()
            if found.is_dir():  # a run folder: its checkpoint, or resume=auto with its name
                raise ConfigError(
                    f"train.resume: {t.resume} is a folder; give its {found / 'checkpoint.pt'}, "
                    "or train.resume=auto with output.run_name naming the run"
                )
            raise ConfigError(f"train.resume: checkpoint file not found: {t.resume}")
        if world_size is not None:
            per_step = world_size * t.grad_accum_steps
            if t.batch_size % per_step:
                raise ConfigError(
                    f"train.batch_size={t.batch_size} is not divisible by world_size x "
                    f"train.grad_accum_steps = {world_size} x {t.grad_accum_steps} = {per_step}; "
                    f"use a multiple of {per_step}"
                )
        return self


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


_SECTIONS = {f.name: f for f in fields(Config)}


def _section_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise naming the key."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    pass
                else:
                    if f.is_integer():
                        return int(f)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise AssertionError(f"unsupported field type {typ} for {key}")


def _is_str_type(typ: Any) -> bool:
    """str, or str | None / Optional[str]."""
    if typ is str:
        return True
    if get_origin(typ) in (Union, types.UnionType):
        return set(get_args(typ)) == {str, type(None)}
    return False


def _field_type(key: str) -> Any:
    """Declared type of a dotted key, or None for an unknown key."""
    if key == "name":
        return str
    sec, _, name = key.partition(".")
    if sec == "name" or sec not in _SECTIONS:
        return None
    return _section_types(_SECTIONS[sec].default_factory).get(name)


_NULL_TAG = "tag:yaml.org,2002:null"
_RESOLVER = yaml.resolver.Resolver()  # SafeLoader's implicit tags (YAML 1.1)


def _resolves_to_null(text: str) -> bool:
    """'', '~', 'null', 'Null', 'NULL': what YAML reads as "no value" (a str field's '')."""
    return _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _NULL_TAG


def _str_override(raw: str) -> str:
    """A str field's override text as written: YAML 1.1 would read 010 as 8, 12:30 as 750,
    0x10 as 16, yes as True and 2024-12-01 as a date. A quoted value is unquoted; null is ''."""
    text = raw.strip()
    if text[:1] in ("'", '"'):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, str) else text
    return "" if _resolves_to_null(text) else text


def _keep_plain_strings(raw: Any, node: yaml.Node | None) -> None:
    """In a loaded config file, give str fields the text of an unquoted value back (as for
    CLI overrides: `run_name: 010` is '010', not 8). Quoted and block values are already str."""

    def text(value_node: yaml.Node) -> str | None:
        if not isinstance(value_node, yaml.ScalarNode) or value_node.style is not None:
            return None
        return "" if value_node.tag == _NULL_TAG else value_node.value

    if not isinstance(raw, dict) or not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:  # merge keys (<<) are flattened in place already
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        sec = key_node.value
        if sec == "name" and "name" in raw and (value := text(value_node)) is not None:
            raw["name"] = value
        elif (
            sec in _SECTIONS
            and sec != "name"
            and isinstance(raw.get(sec), dict)
            and isinstance(value_node, yaml.MappingNode)
        ):
            body = raw[sec]
            hints = _section_types(_SECTIONS[sec].default_factory)
            for k_node, v_node in value_node.value:
                if (
                    isinstance(k_node, yaml.ScalarNode)
                    and k_node.value in body
                    and _is_str_type(hints.get(k_node.value))
                    and (value := text(v_node)) is not None
                ):
                    body[k_node.value] = value


def _unknown(key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
    return ConfigError(f"unknown config key '{key}'{extra}")


def all_keys() -> list[str]:
    keys = ["name"]
    for sec_name, sec_field in _SECTIONS.items():
        if sec_name == "name":
            continue
        keys += [f"{sec_name}.{f.name}" for f in fields(sec_field.default_factory)]
    return keys


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (e.g. 'train.batch_size') with type checking."""
    if key == "name":
        cfg.name = _coerce(key, value, str)
        return
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _SECTIONS or parts[0] == "name":
        raise _unknown(key, all_keys())
    section = getattr(cfg, parts[0])
    types = _section_types(type(section))
    if parts[1] not in types:
        raise _unknown(key, all_keys())
    setattr(section, parts[1], _coerce(key, value, types[parts[1]]))


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    cfg = Config()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: top level must be a mapping of sections, got {type(raw).__name__}"
        )
    for sec, body in raw.items():
        if sec == "name":
            set_value(cfg, "name", body)
            continue
        if sec not in _SECTIONS:
            raise _unknown(str(sec), all_keys())
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{sec}' must be a mapping, got {body!r}")
        for k, v in body.items():
            set_value(cfg, f"{sec}.{k}", v)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'train.batch_size=128' -> ('train.batch_size', 128) with YAML scalar parsing; a str
    field keeps its text ('output.run_name=010' -> '010'), see _str_override."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if _is_str_type(_field_type(key)):
        return key, _str_override(raw)
    try:
        value = _load_scalar(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError):  # int() of over 4300 digits; brackets nested 1000 deep
        shown = raw if len(raw) <= 40 else f"{raw[:37]}..."
        raise ConfigError(
            f"override {key}={shown}: not a usable value ({len(raw)} characters)"
        ) from None
    if isinstance(value, (dict, list)):
        value = raw
    return key, value


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (`train:` twice, or `lr:` twice
    in a section): YAML requires unique keys, and PyYAML would silently keep the last one. Keys
    a merge (<<) brings in may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:  # before flatten_mapping mixes in the merged keys
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says why
                    break
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key '{key}' (first given at line {first.start_mark.line + 1}); "
                        "each key may appear once",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 017 as octal 15, 1:30 as sexagesimal 90, 0x10 as 16 and 1_000 as
# 1000: in a config file or an override each is a surprise, so numbers are read as YAML 1.2's
# core schema and JSON read them (decimal only); anything else stays text for _coerce to judge.
# Dates too (2024-02-03 was a datetime.date, 2024-02-30 a ValueError): no key takes one.
_REPLACED_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+|[0-9]+\.[0-9]*|\.[0-9]+)$"
        r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _load_scalar(text: str) -> Any:
    """One YAML value (an override's right-hand side) read as config files are."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(p: Path) -> Any:
    """Parse a config file; every problem (missing, unreadable, bad YAML) is one ConfigError line."""
    try:
        if p.is_dir():
            raise ConfigError(f"{p}: is a folder, not a YAML config file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{p}: cannot read config file: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not valid YAML: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
        _keep_plain_strings(raw, node)
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML for a config: nested too deeply") from None
    except ValueError as exc:  # int() of a number of over 4300 digits
        why = first_line(exc)
        if "Exceeds the limit" in why:  # without Python's hint about its own limit
            why = f"a number it cannot read ({why.split(':')[0]})"
        raise ConfigError(f"{p}: not valid YAML for a config: {why}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        context = getattr(exc, "context", None)
        if problem and context and problem.startswith("but "):  # "expected one document, but ..."
            problem = f"{context}, {problem}"
        if mark is not None and problem:
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            raise ConfigError(f"{p}: not valid YAML at {where}: {problem}") from None
        raise ConfigError(f"{p}: not valid YAML: {first_line(exc)}") from None
    finally:
        loader.dispose()
    return raw


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> Config:
    """Load a YAML preset (or defaults), apply dotted overrides, validate (world-size-free checks)."""
    if path is None:
        cfg = Config()
    else:
        p = Path(path)
        raw = _read_yaml(p)
        # an empty file (or only comments) is an empty config; 0, [] or false is not a config
        cfg = from_dict({} if raw is None else raw, source=str(p))
        if cfg.name == "custom":
            cfg.name = p.stem
    for item in overrides or []:
        key, value = parse_override(item)
        set_value(cfg, key, value)
    return cfg.validate()


def save_config(cfg: Config, path: Path) -> None:
    """Write cfg as YAML atomically: config.yaml is rewritten on every resume, and a crash must
    leave the old file or the new one, never half of one."""
    from scalelab.checkpoint import write_run_file  # imports torch: only when saving

    write_run_file(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """Human-readable reference of every key, default and meaning (from the field docstrings)."""
    import ast
    import inspect

    lines = []
    for sec_name, sec_field in _SECTIONS.items():
        if sec_name == "name":
            continue
        cls = sec_field.default_factory
        docs: dict[str, str] = {}
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
                docs[node.target.id] = nxt.value.value  # type: ignore[union-attr]
        lines.append(f"[{sec_name}]")
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else ""
            meaning = " ".join(docs.get(f.name, "").split())  # one line, however wrapped
            lines.append(f"  {sec_name}.{f.name} = {default!r}\n      {meaning}")
    return "\n".join(lines)
