"""Tiny models, datasets and losses shared by the training tests and the resume subprocess script."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, dim_in: int = 4, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(dim_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim_in) -> (B, 1)
        return self.out(self.drop(F.gelu(self.norm(self.inp(x)))))


class TinyLM(nn.Module):
    """Embedding, one pre-norm causal attention + MLP block with dropout, and an untied head."""

    def __init__(self, vocab: int = 16, dim: int = 16, heads: int = 2, dropout: float = 0.1):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.embed = nn.Embedding(vocab, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        x = self.embed(tokens)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=True, dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.head(x)


def regression_data(n: int = 64, dim_in: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim_in, generator=g)
    y = torch.tanh(x @ torch.randn(dim_in, 1, generator=g))
    return list(zip(x, y))


def mse_loss(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch
    return F.mse_loss(model(x).float(), y), {"samples": float(len(x))}


def counting_sequences(n: int = 64, length: int = 9, vocab: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Sequences ``start, start+step, ...`` mod vocab: learnable, so the loss has somewhere to go."""
    rng = np.random.default_rng(seed)
    starts, steps = rng.integers(0, vocab, n), rng.integers(1, 4, n)
    return [torch.tensor((s + d * np.arange(length)) % vocab) for s, d in zip(starts, steps)]


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    logits = model(tokens[:, :-1])  # (B, T-1, V)
    targets = tokens[:, 1:]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    return loss, {"tokens": float(targets.numel())}
