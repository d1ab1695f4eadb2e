"""Preallocated key/value cache for incremental decoding.

All rows of a batch share slot indices: every forward call appends the same number of slots T to
every row, and rows that are shorter are left-padded (their padding slots are marked invalid). Each row
keeps its own next RoPE position, so left padding never shifts positions.

Use per forward call: `extend(valid)` once (records the new slots, returns positions and the attention
mask), then `update(layer, k, v)` once per layer (writes the new keys/values, returns all so far).

A *static* cache (``static=True``) is what a compiled forward (``Transformer.compile_for_decoding``) decodes
over: `update` writes at the reserved slots through a slot-index tensor and returns the whole buffers
(``max_len`` + 1 slots, below), so no Python slot number reaches the graph. The mask covers the slots written so far, as for a growing
cache, and attention reads only those (`Attention` cuts the buffers to the mask's length): the mask's length is
the one size that changes from step to step, so dynamo makes it dynamic at the second step and every later step
runs the same graph. (Masking all ``max_len`` slots instead kept every shape fixed, but attention then read all
of them at every step: 1.07x slower at batch 16, docs/benchmarks.md.)
"""

from __future__ import annotations

import copy

import torch


class KVCache:
    """Per-layer (B, H_kv, T_max, Dh) key/value buffers plus per-slot validity and per-row positions."""

    def __init__(
        self,
        *,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        static: bool = False,
    ) -> None:
        # a static cache's buffers hold one slot more than it ever fills: the written slots are then never the whole
        # buffer, so their view's strides never change kind, and a compiled step does not retrace at the last slot
        shape = (batch, n_kv_heads, max_len + static, head_dim)
        self.static = static
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)  # (B, T_max)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)
        self.length = 0  # slots filled, the same for every row
        # per row: how many span tokens (a codec's ids, see Transformer span positions) end the cached tokens
        self.span_run = torch.zeros(batch, dtype=torch.long, device=device)
        self.slots = torch.zeros(0, dtype=torch.long, device=device)  # the slots of the latest extend

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def extend(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve T new slots per row; valid (B, T) bool marks real tokens (False = padding).

        Returns positions (B, T) long for RoPE and the attention mask (B, 1, T, S) bool over all
        S = length + T slots (True = may attend).
        """
        n_rows, n_new = valid.shape
        if n_rows != self.batch:
            raise ValueError(f"cache was made for batch {self.batch}, got {n_rows} rows")
        if self.length + n_new > self.max_len:
            raise ValueError(f"cache holds {self.max_len} slots; {self.length} used, {n_new} more requested")
        start, end = self.length, self.length + n_new
        self.valid[:, start:end] = valid
        positions = (self.next_position[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
        self.next_position += valid.long().sum(1)
        self.length = end
        if self.static:
            self.slots = torch.arange(start, end, device=self.valid.device)
        return positions, attention_mask(self.valid[:, :end], query_start=start)

    def take_rows(self, index: torch.Tensor) -> KVCache:
        """A new cache whose row i is a copy of this cache's row ``index[i]`` (keys, values, validity, positions,
        open span run): rows may repeat, so a prompt prefilled once can serve several rows of a batch."""
        taken = copy.copy(self)
        taken.keys = [keys.index_select(0, index) for keys in self.keys]
        taken.values = [values.index_select(0, index) for values in self.values]
        taken.valid, taken.next_position, taken.span_run = (
            t.index_select(0, index) for t in (self.valid, self.next_position, self.span_run)
        )
        return taken

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, Dh) into the last T reserved slots; return keys/values (B, H_kv, S, Dh)
        (static: the whole max_len + 1-slot buffers, with the same tensor shapes at every step; the mask of `extend` says how many
        are written)."""
        if self.static:  # no Python int reaches the tensors, so a compiled caller sees the same graph
            self.keys[layer].index_copy_(2, self.slots, k)
            self.values[layer].index_copy_(2, self.slots, v)
            return self.keys[layer], self.values[layer]
        start = self.length - k.shape[2]
        self.keys[layer][:, :, start : self.length] = k
        self.values[layer][:, :, start : self.length] = v
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]


def attention_mask(key_valid: torch.Tensor, query_start: int = 0, n_queries: int | None = None) -> torch.Tensor:
    """Causal mask over slots that also hides invalid (padding) keys.

    key_valid (B, S) bool; queries are slots [query_start, query_start + n_queries) (default: up to S).
    Returns (B, 1, T, S) bool, True = attend.
    Every query may always see its own slot, so a padding query attends to itself instead of to
    nothing (an all-masked row would give NaN that then leaks through the next layer's values).
    """
    n_keys = key_valid.shape[1]
    query_end = n_keys if n_queries is None else query_start + n_queries
    if query_start == n_keys - 1:  # one query in the last slot (a decode step): causality hides nothing
        mask = key_valid.clone()
        mask[:, -1] = True
        return mask[:, None, None]
    query_slots = torch.arange(query_start, query_end, device=key_valid.device)[:, None]  # (T, 1)
    key_slots = torch.arange(n_keys, device=key_valid.device)[None, :]  # (1, S)
    causal = key_slots <= query_slots  # (T, S)
    mask = (causal & key_valid[:, None, :]) | (key_slots == query_slots)  # (B, T, S)
    return mask[:, None]
