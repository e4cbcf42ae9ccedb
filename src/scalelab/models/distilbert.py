"""DistilBERT classifier from Hugging Face `transformers` (the `hf` extra), random init or local weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scalelab.config import ConfigError


class DistilBertClassifier(nn.Module):
    """Thin wrapper so DistilBERT takes (input_ids, attention_mask) and returns logits like our model."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_seq_len: int,
        dropout: float,
        pretrained: str = "",
    ) -> None:
        super().__init__()
        try:
            from transformers import DistilBertConfig, DistilBertForSequenceClassification
        except ImportError:
            raise ConfigError(
                "model.arch=distilbert needs the `transformers` package: pip install 'scalelab[hf]'"
            ) from None
        if pretrained:
            # Local files only: no downloads at run time. transformers would take a missing path
            # for a Hub repo id and say so in a traceback.
            if not Path(pretrained).is_dir():
                raise ConfigError(
                    f"model.pretrained: no such folder: {pretrained} (give a local folder saved "
                    "with save_pretrained: config.json and the weights; nothing is downloaded)"
                )
            try:
                self.net = DistilBertForSequenceClassification.from_pretrained(
                    pretrained,
                    num_labels=num_classes,
                    # model.dropout applies to loaded weights too (not the saved config's)
                    dropout=dropout,
                    attention_dropout=dropout,
                    # a saved classifier with another number of labels: a new head, same body
                    ignore_mismatched_sizes=True,
                    local_files_only=True,
                )
            except (OSError, ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"model.pretrained={pretrained}: not loadable DistilBERT weights ({first})"
                ) from None
            saved = self.net.config
            if max_seq_len > saved.max_position_embeddings:
                raise ConfigError(
                    f"model.max_seq_len={max_seq_len} but model.pretrained={pretrained} has "
                    f"{saved.max_position_embeddings} positions: lower model.max_seq_len"
                )
            if vocab_size > saved.vocab_size:
                raise ConfigError(
                    f"the tokenizer has {vocab_size:,} ids but model.pretrained={pretrained} has "
                    f"{saved.vocab_size:,} embedding rows: use the vocabulary it was trained with "
                    "(data.vocab_path)"
                )
        else:
            cfg = DistilBertConfig(
                vocab_size=vocab_size,
                max_position_embeddings=max(512, max_seq_len),
                num_labels=num_classes,
                dropout=dropout,
                attention_dropout=dropout,
                attn_implementation="sdpa",
            )
            self.net = DistilBertForSequenceClassification(cfg)

    def token_embedding(self) -> nn.Embedding:
        return self.net.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits
