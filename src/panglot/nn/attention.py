"""Multi-head self-attention with grouped-query heads, RoPE and an optional KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from panglot.nn.kv_cache import KVCache
from panglot.nn.rope import apply_rotary


class Attention(nn.Module):
    """Causal self-attention through `F.scaled_dot_product_attention`.

    n_kv_heads < n_heads gives grouped-query attention (each key/value head serves
    n_heads / n_kv_heads query heads). `qkv_bias` adds biases to q/k/v (Qwen2).
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D); cos/sin (B, 1, T, Dh); mask (B, 1, T, S) bool or None for plain causal.

        With a cache, the new keys/values are written into it (slots reserved by `cache.extend`)
        and the queries attend over everything cached so far.
        """
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, Dh)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k.to(cache.keys[layer].dtype), v.to(cache.values[layer].dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


def document_layout(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention mask of packed rows: several documents one after another in each row.

    document_ids (B, T): each maximal run of equal ids is one document (so ids may repeat across rows
    or even within a row, as long as neighbours differ). Returns positions (B, T) long, restarting at
    0 where each run starts, and a block-diagonal causal mask (B, 1, T, T) bool (True = attend): a
    query sees the keys of its own run up to itself, never another document's.
    """
    b, t = document_ids.shape
    index = torch.arange(t, device=document_ids.device).expand(b, t)  # (B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    run_start = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) index where each run begins
    run = starts.long().cumsum(1)  # (B, T) run number, unique within a row
    causal = index[:, None, :] <= index[:, :, None]  # (B, T_q, T_k)
    mask = causal & (run[:, :, None] == run[:, None, :])
    return index - run_start, mask[:, None]
