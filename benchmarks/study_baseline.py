"""The study's way of training, reproduced as the baseline that scalelab is compared against.

Same model (`scalelab.models.build_model`: same architecture, parameters and initial weights),
same global batch and the same tokenised data (scalelab's cache from `prepare_data`). The
study's implementation is reproduced with the textbook kernels (`cpu_kernels=False`:
F.dropout and SDPA with dropout_p, as a model written without scalelab's CPU kernels runs on
a CPU); `kernels="scalelab"` keeps scalelab's CPU kernels, so that only the loop differs
(the "pipeline only" figure). The study's loop:

* a map-style ``Dataset`` that returns each example padded to a FIXED length
  (``model.max_seq_len``) with its attention mask, so every batch costs the full length;
* ``DataLoader(batch_size=global_batch, shuffle=True, num_workers=2)``: worker processes
  collate the batches, as the study did (on a 2-core machine they compete with the
  compute threads for the cores);
* default ``torch.optim.AdamW(model.parameters(), lr)`` (no foreach/fused flags, no
  parameter groups, no schedule, no clipping);
* ``loss.item()`` every step (a host-device sync on a GPU).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from scalelab.config import Config
from scalelab.data import EncodedData, EncodedSplit
from scalelab.models import TransformerClassifier, build_model

STUDY_NUM_WORKERS = 2


class PaddedDataset(Dataset):
    """Example i as (input_ids int64 [max_len], attention_mask bool [max_len], label int64)."""

    def __init__(self, split: EncodedSplit, max_len: int) -> None:
        # Host copies: DataLoader workers index these (cheap to fork, nothing on a GPU).
        self.tokens = split.tokens.cpu().numpy()
        self.lengths = np.asarray(split.lengths)
        self.labels = split.labels.cpu().numpy()
        self.pad_id = split.pad_id
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = int(self.lengths[i])
        ids = torch.full((self.max_len,), self.pad_id, dtype=torch.long)
        ids[:n] = torch.from_numpy(self.tokens[i, :n].astype(np.int64))
        mask = torch.zeros(self.max_len, dtype=torch.bool)
        mask[:n] = True
        return ids, mask, torch.tensor(int(self.labels[i]), dtype=torch.long)


def make_loader(
    split: EncodedSplit,
    cfg: Config,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = STUDY_NUM_WORKERS,
    seed: int = 0,
) -> DataLoader:
    """The study's DataLoader over a split padded to model.max_seq_len."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        PaddedDataset(split, cfg.model.max_seq_len),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=g,
    )


KERNELS = ("textbook", "scalelab")


def build_study_model(
    cfg: Config, data: EncodedData, device: torch.device, kernels: str = "textbook"
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model with the study's optimiser (default AdamW over all parameters).

    kernels="textbook": F.dropout and SDPA on every device, the study's implementation;
    "scalelab": scalelab's CPU dropout/attention kernels (the same maths, faster on a CPU).
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    model = build_model(cfg.model, data.vocab_size, cfg.model.num_classes or data.num_classes)
    if kernels == "textbook" and isinstance(model, TransformerClassifier):
        model.set_cpu_kernels(False)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    return model, opt


def study_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, ...],
    device: torch.device,
) -> float:
    """One step as the study wrote it, including the per-step `loss.item()`."""
    ids, mask, labels = (t.to(device) for t in batch)
    logits = model(ids, mask)
    loss = F.cross_entropy(logits, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


class StudyTrainer:
    """Model, optimiser and a DataLoader iterator that restarts each epoch, as `for batch in loader`."""

    def __init__(
        self,
        cfg: Config,
        data: EncodedData,
        device: torch.device | None = None,
        num_workers: int = STUDY_NUM_WORKERS,
        seed: int | None = None,
        kernels: str = "textbook",
    ) -> None:
        self.cfg = cfg
        self.kernels = kernels
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        seed = cfg.train.seed if seed is None else seed
        torch.manual_seed(seed)
        self.model, self.opt = build_study_model(cfg, data, self.device, kernels)
        self.loader = make_loader(
            data.train,
            cfg,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            num_workers=num_workers,
            seed=seed,
        )
        self._it: Any = None
        self.losses: list[float] = []
        self.samples = 0  # the last batch of an epoch may be partial (drop_last=False)
        self.real_tokens = 0

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:  # new epoch: the study's loop re-enters `for batch in loader`
            self._it = iter(self.loader)
            return next(self._it)

    def step(self) -> float:
        self.model.train()
        batch = self.next_batch()
        loss = study_step(self.model, self.opt, batch, self.device)
        self.losses.append(loss)
        self.samples += len(batch[2])
        self.real_tokens += int(batch[1].sum())
        return loss

    def close(self) -> None:
        """Stop the loader's worker processes (between timed blocks they would only idle)."""
        self._it = None


def train_study_way(
    cfg: Config,
    data: EncodedData,
    num_steps: int,
    *,
    warmup_steps: int = 3,
    trainer: StudyTrainer | None = None,
    num_workers: int = STUDY_NUM_WORKERS,
) -> dict[str, Any]:
    """Time `num_steps` study-way steps after `warmup_steps` untimed ones.

    The warm-up steps also start the DataLoader workers, so worker start-up is excluded
    from the timed steps (it is paid again at every epoch start in the study's loop).
    Pass `trainer` to continue one model across several timed blocks.
    """
    own = trainer is None
    tr = trainer or StudyTrainer(cfg, data, num_workers=num_workers)
    tr.close()  # start from a fresh iterator, like the top of an epoch
    for _ in range(warmup_steps):
        tr.step()
    samples0, tokens0 = tr.samples, tr.real_tokens
    t0 = time.perf_counter()
    for _ in range(num_steps):
        tr.step()  # loss.item() inside: the step has finished when this returns
    elapsed = time.perf_counter() - t0
    tr.close()
    out = {
        "samples_per_s": (tr.samples - samples0) / elapsed,
        "step_ms": 1000.0 * elapsed / num_steps,
        "num_steps": num_steps,
        "warmup_steps": warmup_steps,
        "elapsed_s": elapsed,
        "real_tokens": tr.real_tokens - tokens0,
        "padded_tokens": (tr.samples - samples0) * cfg.model.max_seq_len,
        "global_batch": cfg.train.batch_size,
        "seq_len": cfg.model.max_seq_len,
        "last_loss": tr.losses[-1] if tr.losses else None,
    }
    if own:
        del tr
    return out


@torch.no_grad()
def evaluate_study_way(
    model: nn.Module, data: EncodedData, cfg: Config, device: torch.device, batch_size: int = 0
) -> tuple[float, float, float]:
    """(test loss, test accuracy, examples/s) over the full test split, padded to max_seq_len."""
    loader = make_loader(
        data.test,
        cfg,
        batch_size=batch_size or 2 * cfg.train.batch_size,
        shuffle=False,
        num_workers=STUDY_NUM_WORKERS,
    )
    was = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    t0 = time.perf_counter()
    for ids, mask, labels in loader:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        logits = model(ids, mask)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum().item())
        count += len(labels)
    elapsed = time.perf_counter() - t0
    model.train(was)
    return loss_sum / count, correct / count, count / elapsed


def train_and_evaluate_study_way(
    cfg: Config, data: EncodedData, epochs: int, *, log: bool = True, kernels: str = "textbook"
) -> dict[str, Any]:
    """Train `epochs` full epochs the study's way, then evaluate on the full test split.

    `kernels` as in `build_study_model`: "scalelab" runs the same maths faster on a CPU (its
    dropout draws different random numbers, like another seed), for long quality runs.
    """
    tr = StudyTrainer(cfg, data, kernels=kernels)
    steps_per_epoch = len(tr.loader)
    epoch_times, epoch_losses = [], []
    for epoch in range(epochs):
        tr.close()
        t0 = time.perf_counter()
        losses = [tr.step() for _ in range(steps_per_epoch)]
        epoch_times.append(time.perf_counter() - t0)
        epoch_losses.append(float(np.mean(losses)))
        if log:
            print(
                f"[study] epoch {epoch + 1}/{epochs}: train_loss {epoch_losses[-1]:.4f} "
                f"{epoch_times[-1]:.1f}s ({steps_per_epoch * cfg.train.batch_size / epoch_times[-1]:,.0f} samples/s)",
                flush=True,
            )
    tr.close()
    test_loss, test_acc, eval_sps = evaluate_study_way(tr.model, data, cfg, tr.device)
    return {
        "epochs": epochs,
        "kernels": kernels,
        "steps_per_epoch": steps_per_epoch,
        "train_loss_per_epoch": epoch_losses,
        "epoch_time_s": epoch_times,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "eval_examples_per_s": eval_sps,
    }
