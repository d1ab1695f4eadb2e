"""Configuration of the decoder-only transformer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TransformerConfig:
    """Shape and numerics of a Llama-style decoder (pre-norm, RMSNorm, RoPE, SwiGLU, GQA).

    `qkv_bias` adds biases to the q/k/v projections (Qwen2). `scaled_residual_init` scales the init
    of the projections that write into the residual stream (attention out, MLP down) by
    1/sqrt(2 * n_layers), as GPT-2 does.
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

    def __post_init__(self) -> None:
        errors = []
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
