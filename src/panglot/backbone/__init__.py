"""Decoder-only transformer backbone: config, model, named sizes, Hugging Face weight maps."""

from panglot.backbone.config import TransformerConfig
from panglot.backbone.hf import (
    KEY_MAPS,
    config_from_hf,
    export_hf_state_dict,
    hf_config_from,
    load_hf_causal_lm,
)
from panglot.backbone.sizes import SIZES, build_transformer, transformer_config
from panglot.backbone.transformer import Transformer, TransformerBlock

__all__ = [
    "KEY_MAPS",
    "SIZES",
    "Transformer",
    "TransformerBlock",
    "TransformerConfig",
    "build_transformer",
    "config_from_hf",
    "export_hf_state_dict",
    "hf_config_from",
    "load_hf_causal_lm",
    "transformer_config",
]
