"""Configuration of the decoder-only transformer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TransformerConfig:
    """Shape and numerics of a Llama-style decoder (pre-norm, RMSNorm, RoPE, SwiGLU, GQA).

    `qkv_bias` adds biases to the q/k/v projections (Qwen2). `scaled_residual_init` scales the init
    of the projections that write into the residual stream (attention out, MLP down) by
    1/sqrt(2 * n_layers), as GPT-2 does.

    Span positions (`span_rows` > 0): the ids in [`span_start`, `span_end`) are a codec's tokens, which come
    in runs (one image = one run of `span_rows * span_cols` ids, row-major); each such token's embedding
    gets a learned row embedding and a column embedding by its index in its run, so the model knows where
    in the image grid every image token lies (RoPE alone gives only its distance to other tokens).
    `span_cols` 1 makes it a plain learned position per index (a 1-D run, e.g. the Q-Former's 32 ids).
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False
    init_std: float = 0.02
    scaled_residual_init: bool = True
    span_start: int = 0
    span_end: int = 0
    span_rows: int = 0  # 0: no span positions
    span_cols: int = 1

    def __post_init__(self) -> None:
        errors = []
        if self.span_rows < 0 or self.span_cols < 1:
            errors.append(f"span_rows must be >= 0 and span_cols >= 1, got {self.span_rows}, {self.span_cols}")
        if self.span_rows and not 0 <= self.span_start < self.span_end <= self.vocab_size:
            errors.append(
                f"span ids [{self.span_start}, {self.span_end}) must be a non-empty range inside the vocabulary "
                f"of {self.vocab_size}"
            )
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads > 0 and self.dim % self.n_heads:
            errors.append(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        elif self.n_heads > 0 and (self.dim // self.n_heads) % 2:
            errors.append(f"head_dim = dim / n_heads = {self.dim // self.n_heads} must be even for RoPE")
        if self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads:
            errors.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if errors:
            raise ValueError("invalid TransformerConfig: " + "; ".join(errors))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads
