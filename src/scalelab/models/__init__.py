"""Models know nothing about DDP: the trainer wraps them."""

from __future__ import annotations

from torch import nn

from scalelab.config import ModelConfig
from scalelab.models.transformer import TransformerClassifier


def build_model(cfg: ModelConfig, vocab_size: int, num_classes: int, pad_id: int = 0) -> nn.Module:
    """Build the classifier named by cfg.arch for a tokenizer of `vocab_size` ids whose padding
    id is `pad_id` (DistilBERT keeps that embedding row out of training; scalelab's transformer
    masks padding and needs no such row)."""
    if cfg.arch == "transformer":
        return TransformerClassifier(
            vocab_size=vocab_size,
            num_classes=num_classes,
            d_model=cfg.d_model,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            d_ff=cfg.d_ff,
            max_seq_len=cfg.max_seq_len,
            dropout=cfg.dropout,
        )
    if cfg.arch == "distilbert":
        from scalelab.models.distilbert import DistilBertClassifier

        return DistilBertClassifier(
            vocab_size, num_classes, cfg.max_seq_len, cfg.dropout, cfg.pretrained, pad_id
        )
    raise ValueError(f"model.arch: unknown architecture {cfg.arch!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["TransformerClassifier", "build_model", "count_parameters"]
