"""DistilBERT classifier from Hugging Face `transformers` (the `hf` extra), random init or local weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scalelab.config import ConfigError, first_line

#: Parameters of DistilBertForSequenceClassification outside the DistilBERT body: a folder may
#: lack them (a saved DistilBertModel or masked-LM) or hold another number of labels.
HEAD_PREFIXES = ("pre_classifier.", "classifier.")


def _body_keys(keys) -> list[str]:
    """Names among `keys` (str, or (name, shape, shape) for mismatched keys) outside the head."""
    names = (k[0] if isinstance(k, tuple) else k for k in keys)
    return sorted(n for n in names if not n.startswith(HEAD_PREFIXES))


def _takes_prepared_mask() -> bool:
    """Whether this transformers builds DistilBERT's attention mask with
    `masking_utils.create_bidirectional_mask` (transformers 5), which returns a 4-D mask as it
    is given. Given the 2-D padding mask it asks the device whether any token is padding
    (`padding_mask.all()` in a Python `if`): a host sync in every eager forward, so the CPU
    cannot queue the next kernels while the GPU works. transformers 4 takes only a 2-D mask."""
    from transformers.models.distilbert import modeling_distilbert

    return hasattr(modeling_distilbert, "create_bidirectional_mask")


def _few(names: list[str]) -> str:
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


class DistilBertClassifier(nn.Module):
    """Thin wrapper so DistilBERT takes (input_ids, attention_mask) and returns logits like our model."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_seq_len: int,
        dropout: float,
        pretrained: str = "",
        pad_token_id: int = 0,
    ) -> None:
        super().__init__()
        try:
            from safetensors import SafetensorError
            from transformers import (
                DistilBertConfig,
                DistilBertForSequenceClassification,
                PretrainedConfig,
            )
        except ImportError:
            raise ConfigError(
                "model.arch=distilbert needs the `transformers` package: pip install 'scalelab[hf]'"
            ) from None
        if pretrained:
            # Local files only: no downloads at run time. transformers would take a missing path
            # for a Hub repo id and say so in a traceback.
            if not Path(pretrained).is_dir():
                what = "not a folder" if Path(pretrained).exists() else "no such folder"
                raise ConfigError(
                    f"model.pretrained: {what}: {pretrained} (give a local folder saved "
                    "with save_pretrained: config.json and the weights; nothing is downloaded)"
                )
            where = f"model.pretrained={pretrained}"
            if not (Path(pretrained) / "config.json").is_file():
                raise ConfigError(
                    f"{where}: not loadable DistilBERT weights (no config.json in the folder; "
                    "save it with save_pretrained)"
                )
            try:
                saved_dict, _ = PretrainedConfig.get_config_dict(pretrained, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"{where}: not loadable DistilBERT weights ({first_line(exc)})"
                ) from None
            # another model type (a saved BERT, say) would "load" with every DistilBERT weight
            # newly initialised
            model_type = saved_dict.get("model_type")
            if model_type != "distilbert":
                raise ConfigError(
                    f"{where}: config.json has model_type {model_type!r}, not 'distilbert' "
                    "(give a folder saved from a DistilBERT model)"
                )
            try:
                self.net, info = DistilBertForSequenceClassification.from_pretrained(
                    pretrained,
                    num_labels=num_classes,
                    # model.dropout applies to loaded weights too (not the saved config's)
                    dropout=dropout,
                    attention_dropout=dropout,
                    seq_classif_dropout=dropout,
                    pad_token_id=pad_token_id,  # the tokenizer's: its row gets no gradient
                    # a saved classifier with another number of labels: a new head, same body
                    ignore_mismatched_sizes=True,
                    local_files_only=True,
                    output_loading_info=True,
                )
            except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
                # SafetensorError (a truncated model.safetensors) is no OSError
                raise ConfigError(
                    f"{where}: not loadable DistilBERT weights ({first_line(exc)})"
                ) from None
            # only the classification head may be new: a body tensor missing from the weights,
            # or of another shape, would be trained from random initialisation without a word
            missing = _body_keys(info.get("missing_keys", ()))
            if missing:
                raise ConfigError(
                    f"{where}: the weights lack {len(missing)} DistilBERT body tensor(s) "
                    f"({_few(missing)}); only the classification head (pre_classifier, "
                    "classifier) may be new"
                )
            mismatched = _body_keys(info.get("mismatched_keys", ()))
            if mismatched:
                raise ConfigError(
                    f"{where}: {len(mismatched)} DistilBERT body tensor(s) have another shape "
                    f"than config.json says ({_few(mismatched)})"
                )
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
                seq_classif_dropout=dropout,
                pad_token_id=pad_token_id,  # the tokenizer's: its row gets no gradient
                attn_implementation="sdpa",
            )
            self.net = DistilBertForSequenceClassification(cfg)

        self.prepared_mask = _takes_prepared_mask()

    def token_embedding(self) -> nn.Embedding:
        return self.net.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.prepared_mask and self.net.config._attn_implementation == "sdpa":
            # the mask SDPA takes (bool, True = attend), broadcast over heads and queries: no
            # host sync. A batch without padding then runs SDPA with an all-true mask (the
            # memory-efficient kernel) rather than none (flash): whether a batch is padded is
            # known on the host only, before the batch is made.
            attention_mask = attention_mask[:, None, None, :].to(torch.bool)
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits
