"""The study's model as the study built it: stock PyTorch modules (nn.TransformerEncoder).

Same architecture and parameter count as scalelab's TransformerClassifier (token + learned position
embeddings, pre-norm encoder blocks with GELU, final LayerNorm, mean pooling over real tokens,
linear head), but written the usual way: nn.TransformerEncoderLayer with its own attention and
nn.Dropout. The baseline uses it so "the study's way" is what users ran before scalelab.
"""

from __future__ import annotations

import torch
from torch import nn

from scalelab.config import ModelConfig


class StudyTransformerClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.tok_emb = nn.Embedding(vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, d)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            cfg.num_heads,
            cfg.d_ff,
            cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, cfg.num_layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.head = nn.Linear(d, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(pos))
        x = self.encoder(x, src_key_padding_mask=~attention_mask)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.head((x * m).sum(1) / m.sum(1).clamp_min(1.0))
