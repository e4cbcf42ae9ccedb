"""The study's encoder classifier: embeddings -> pre-norm encoder blocks (SDPA) -> masked mean pool -> linear."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool, cpu_kernels: bool = True) -> torch.Tensor:
    """F.dropout, but on CPU with a mask drawn ~7x faster (`cpu_dropout_mask`). CUDA keeps
    F.dropout: its fused Philox kernel is already cheap. cpu_kernels=False: F.dropout everywhere.
    Under torch.compile F.dropout too: the numpy draw would break the graph."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not cpu_kernels or torch.compiler.is_compiling():
        return F.dropout(x, p, True)
    return x * cpu_dropout_mask(x.shape, p, x.dtype)


def cpu_dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A float mask holding 0 (probability p) or 1/(1-p), drawn with few, vectorised passes.

    CPU `bernoulli_` (what F.dropout uses) draws one number per element through a serial
    generator and made up 30 % of the small model's training step. Here one 64-bit draw of
    numpy's SFC64 (2 ns) gives four 16-bit uniforms (p is quantised to 1/65536), and the mask
    is built from them by arithmetic on floats, which vectorises (a bool compare and a
    bool -> float cast do not). The SFC64 stream is seeded from torch's generator, so
    `torch.manual_seed` and the checkpointed torch RNG state still fix every mask.
    """
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**63 - 1, (1,)))
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)
    bits = torch.from_numpy(raw.view(np.int16)[:n]).to(torch.float32)  # uniform on -32768..32767
    keep_from = round(p * 65536) - 32768  # keep when bits >= keep_from: P(keep) = 1 - p
    scale = 1.0 / (1.0 - p)
    # bits >= keep_from  <=>  bits - keep_from + 1 >= 1; integers, so the clamp is exactly 0 or scale
    mask = bits.sub_(keep_from - 1).mul_(scale).clamp_(0.0, scale).view(shape)
    return mask if dtype == torch.float32 else mask.to(dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    p: float,
    cpu_kernels: bool = True,
) -> torch.Tensor:
    """Softmax attention with an additive key-padding bias [B,1,1,T] (0 = attend, -inf = padding).

    SDPA (flash/memory-efficient kernels) whenever it can; on CPU with attention dropout SDPA falls
    back to unfused maths with slow dropout, so we do the maths ourselves: one baddbmm applies the
    scale and the padding bias inside the matmul, then our fast dropout (not under torch.compile,
    which compiles SDPA's maths without a graph break).
    """
    bias = bias.to(q.dtype)
    if p == 0.0 or q.device.type != "cpu" or not cpu_kernels or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
    return attention_math(q, k, v, bias, p)


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, p: float
) -> torch.Tensor:
    b, h, t, d = q.shape
    scores = torch.baddbmm(
        bias.expand(b, h, 1, t).reshape(b * h, 1, t),
        q.reshape(b * h, t, d),
        k.reshape(b * h, t, d).transpose(1, 2),
        alpha=d**-0.5,
    )
    probs = dropout(torch.softmax(scores, dim=-1), p, True)
    return (probs @ v.reshape(b * h, t, d)).view(b, h, t, d)


class EncoderBlock(nn.Module):
    def __init__(
        self, d_model: int, num_heads: int, d_ff: int, dropout: float, cpu_kernels: bool = True
    ) -> None:
        super().__init__()
        self.cpu_kernels = cpu_kernels
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            self.qkv(h).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        p = self.dropout if self.training else 0.0
        # attn_bias masks padded keys; padded queries are dropped by the pooling.
        a = attention(q, k, v, attn_bias, p, self.cpu_kernels)
        fast = self.cpu_kernels
        x = x + dropout(self.proj(a.transpose(1, 2).reshape(b, t, d)), p, self.training, fast)
        h = self.ff2(dropout(F.gelu(self.ff1(self.norm2(x))), p, self.training, fast))
        return x + dropout(h, p, self.training, fast)


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, encoder blocks, mean pooling over real tokens, linear head.

    ``cpu_kernels=False`` computes the same function with the textbook kernels on every device
    (F.dropout, SDPA with dropout_p), as a model written without scalelab's CPU kernels would:
    the benchmarks' reference for the study's implementation.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        d_ff: int = 256,
        max_seq_len: int = 128,
        dropout: float = 0.1,
        cpu_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.cpu_kernels = cpu_kernels
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, num_heads, d_ff, dropout, cpu_kernels) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self.dropout = dropout
        self.apply(self._init)

    def token_embedding(self) -> nn.Embedding:
        return self.tok_emb

    def set_cpu_kernels(self, enabled: bool) -> None:
        """Switch between scalelab's CPU kernels and the textbook ones (same function)."""
        self.cpu_kernels = enabled
        for block in self.blocks:
            block.cpu_kernels = enabled

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        x = dropout(x, self.dropout, self.training, self.cpu_kernels)
        # Built once per forward and shared by every block.
        attn_bias = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
        attn_bias = attn_bias.masked_fill_(~attention_mask, float("-inf"))[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_bias)
        x = self.norm(x)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)
