"""Multi-head self-attention with grouped-query heads, RoPE and an optional KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from panglot.nn.kv_cache import KVCache
from panglot.nn.rope import apply_rotary


class Attention(nn.Module):
    """Causal self-attention (`attend`: SDPA, or explicit products where that is faster).

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
        mask: torch.Tensor | DocumentBlocks | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D); cos/sin (B, 1, T, Dh); mask (B, 1, T, S) bool, None for plain causal, or the
        ``DocumentBlocks`` of packed rows (``document_blocks``; no cache).

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
            if isinstance(mask, torch.Tensor):  # a static cache returns all its slots: attend over the mask's, written
                k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
            k, v = k.to(q.dtype), v.to(q.dtype)
        if isinstance(mask, DocumentBlocks):  # packed training rows, one attention block per document
            out = mask.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return self.wo(out)
        out = attend(q, k, v, mask, is_causal=mask is None)
        return self.wo(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


MATMUL_ATTENTION_MAX_LENGTH = 512  # longer key sequences go through SDPA: the explicit path holds all T x S scores


def _explicit(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool
) -> torch.Tensor:
    if k.shape[1] != q.shape[1]:  # grouped-query heads: each key/value head serves a group of query heads
        k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if is_causal:  # top-left aligned, as SDPA's is_causal: query i sees keys 0..i
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(-1).to(q.dtype) @ v


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    explicit: bool | None = None,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention`'s contract: q (N, H, T, Dh) over k, v (N, H_kv, S, Dh) -> (N, H, T, Dh);
    ``mask`` broadcastable to (N, H, T, S), bool (True = attend) or float (added to the logits); grouped-query
    heads when H_kv < H.

    On CPU, when autograd records (training) and there are at most ``MATMUL_ATTENTION_MAX_LENGTH`` keys, as explicit
    matrix products and an fp32 softmax: SDPA's CPU backward is 2-6x slower at the short lengths of panglot's
    training (packed documents of ~100 tokens, the Q-Former's 32 queries over 128 patches, the grid reader;
    docs/benchmarks.md "Attention at short lengths", benchmarks/attention.py). Its forward alone is as fast or faster (decoding, frozen encoders), so
    those stay on SDPA. ``explicit`` forces either path (tests, benchmarks).
    """
    if explicit is None:
        explicit = (
            q.device.type == "cpu"
            and k.shape[2] <= MATMUL_ATTENTION_MAX_LENGTH
            and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad)
        )
    if explicit:
        return _explicit(q, k, v, mask, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=k.shape[1] != q.shape[1])


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal attention of q (N, H, L, Dh) over k, v (N, H_kv, L, Dh) -> (N, H, L, Dh), as `attend`.

    Packed training blocks (one document, ~100 tokens) run 2-3x faster, forward + backward, compiled or not,
    than through the CPU flash kernel (docs/benchmarks.md "Unified training step").
    """
    return attend(q, k, v, is_causal=True)


class _Regroup(torch.autograd.Function):
    """``x[index]`` along dim 0 where ``index`` moves tokens one to one (apart from pad slots): its gradient is
    the reverse move, ``grad[inverse]`` (zeroed where ``keep`` is False), a gather instead of autograd's
    accumulating scatter, which a compiled CPU backward runs with atomic adds, slower on two threads than one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, keep: torch.Tensor | None):
        ctx.has_keep = keep is not None
        ctx.save_for_backward(inverse, *([keep] if ctx.has_keep else []))
        return x[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inverse, *keep = ctx.saved_tensors
        grad = grad[inverse]
        if ctx.has_keep:
            grad = torch.where(keep[0].view(-1, *[1] * (grad.ndim - 1)), grad, 0)
        return grad, None, None, None


@dataclass(frozen=True)
class DocumentBlocks:
    """Packed rows regrouped by document, so attention runs over each document alone.

    A row of 256 tokens holding three documents spends two thirds of a block-diagonal mask's work on pairs
    it masks out; here each document is one right-padded block instead. ``gather`` (n, length) picks each
    block slot's token from the flattened (B * T) rows (n documents, row tails counting as one each; length
    = the longest, rounded up; pad slots repeat token 0, ``real`` (n, length) marks the others); ``slot``
    (B * T,) picks each row token's output back from the flattened blocks. A pad slot is only ever a key
    after every real token of its block, so causality alone keeps it out of every real token's output and
    gradient. The sizes live in tensor shapes, not ints, so a compiled block sees them as shapes.
    """

    gather: torch.Tensor
    real: torch.Tensor
    slot: torch.Tensor

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, T, H, Dh), k / v (B, T, H_kv, Dh) in row order -> (B, T, H * Dh)."""
        b, t, heads, dim = q.shape
        n, length = self.gather.shape

        def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, T, h, Dh) -> (n, h, length, Dh)
            moved = _Regroup.apply(x.reshape(b * t, *x.shape[2:]), self.gather.view(-1), self.slot, None)
            return moved.view(n, length, *x.shape[2:]).transpose(1, 2)

        out = causal_attention(blocks(q), blocks(k), blocks(v))  # (n, H, length, Dh)
        out = out.transpose(1, 2).reshape(n * length, heads * dim)
        return _Regroup.apply(out, self.slot, self.gather.view(-1), self.real.view(-1)).view(b, t, heads * dim)


def _runs(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) ids -> index (B, T), starts (B, T) bool (a run begins), positions (B, T) (index within its run)."""
    b, t = document_ids.shape
    index = torch.arange(t, device=document_ids.device).expand(b, t)  # (B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    run_start = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) index where each run begins
    return index, starts, index - run_start


BLOCK_ROUND = 8  # block lengths are rounded up to a multiple of this: few shapes for a compiled block


def document_blocks(document_ids: torch.Tensor) -> tuple[torch.Tensor, DocumentBlocks]:
    """Positions (B, T) restarting at 0 where each run of equal ids starts (as ``document_layout``), and the
    runs as ``DocumentBlocks``: the same attention as ``document_layout``'s mask, computed per document."""
    b, t = document_ids.shape
    _, starts, positions = _runs(document_ids)
    doc = starts.reshape(-1).long().cumsum(0) - 1  # (B * T,) run number over the batch (every row starts one)
    n, length = int(doc[-1]) + 1, -(-(int(positions.max()) + 1) // BLOCK_ROUND) * BLOCK_ROUND
    slot = doc * length + positions.reshape(-1)
    gather = torch.zeros(n * length, dtype=torch.long, device=document_ids.device)
    gather.scatter_(0, slot, torch.arange(b * t, device=document_ids.device))
    real = torch.zeros(n * length, dtype=torch.bool, device=document_ids.device)
    real[slot] = True
    gather, real = gather.view(n, length), real.view(n, length)
    for x in (gather, real):  # the document count changes every batch; the length seldom
        torch._dynamo.maybe_mark_dynamic(x, 0)
    return positions, DocumentBlocks(gather, real, slot)


def document_layout(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and attention mask of packed rows: several documents one after another in each row.

    document_ids (B, T): each maximal run of equal ids is one document (so ids may repeat across rows
    or even within a row, as long as neighbours differ). Returns positions (B, T) long, restarting at
    0 where each run starts, and a block-diagonal causal mask (B, 1, T, T) bool (True = attend): a
    query sees the keys of its own run up to itself, never another document's.
    """
    index, starts, positions = _runs(document_ids)
    run = starts.long().cumsum(1)  # (B, T) run number, unique within a row
    causal = index[:, None, :] <= index[:, :, None]  # (B, T_q, T_k)
    mask = causal & (run[:, :, None] == run[:, None, :])
    return positions, mask[:, None]
