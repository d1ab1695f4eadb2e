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


def data_parallel_mlp(
    out_dir, cfg, batch_size: int, dropout: float = 0.0, resume: bool = False, crash_at_call: int | None = None
) -> None:
    """One process's part of a data-parallel TinyMLP run (``panglot.training.distributed.launch`` target): its
    shard of ``regression_data``, ``batch_size / processes`` items a batch; writes its final weights and step
    count to ``out_dir/rank{r}.safetensors`` / ``.json``. ``crash_at_call``: every process raises at that call
    of the loss (the same step on each)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from panglot.data.loader import StatefulLoader
    from panglot.training import Trainer, distributed, seed_everything

    rank, world = distributed.rank(), distributed.world_size()
    seed_everything(0)
    model = TinyMLP(dropout=dropout)
    data = StatefulLoader(regression_data(n=64), batch_size=batch_size // world, seed=1, shard=(rank, world))
    calls = 0

    def loss(model, batch):
        nonlocal calls
        calls += 1
        if calls == crash_at_call:
            raise RuntimeError(f"crash at call {calls}")
        return mse_loss(model, batch)

    trainer = Trainer(cfg, model, loss, data, out_dir)
    summary = trainer.train(resume=resume)
    out = Path(out_dir)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / f"rank{rank}.safetensors")
    record = {"steps": summary.steps, "max_steps": trainer.cfg.max_steps, "resumed_from": summary.resumed_from}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
