"""Small layers shared by the backbone and codecs: norms, RoPE, MLP, attention, KV cache, precision."""

from panglot.nn.attention import Attention, attend
from panglot.nn.kv_cache import KVCache, attention_mask
from panglot.nn.mlp import SwiGLU
from panglot.nn.norms import RMSNorm
from panglot.nn.precision import (
    autocast_context,
    default_device,
    fast_bf16,
    resolve_device,
    resolve_dtype,
    warn_if_slow_bf16,
)
from panglot.nn.rope import RotaryEmbedding, apply_rotary

__all__ = [
    "Attention",
    "KVCache",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "attend",
    "attention_mask",
    "autocast_context",
    "default_device",
    "fast_bf16",
    "resolve_device",
    "resolve_dtype",
    "warn_if_slow_bf16",
]
