"""Hugging Face Llama / Qwen2 causal-LM weights <-> panglot `Transformer`, through explicit key maps.

Only local directories are read (`config.json` + `*.safetensors`, sharded or not); nothing is
downloaded and nothing is unpickled. Both architectures use the "rotate half" RoPE layout that
`panglot.nn.rope` uses, so q/k weights are copied as they are.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from panglot.backbone.config import TransformerConfig
from panglot.backbone.transformer import Transformer
from panglot.nn.precision import resolve_dtype

# Hugging Face name -> panglot name; "{i}" stands for the layer index.
LLAMA_KEY_MAP: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attention.wq.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attention.wk.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attention.wv.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attention.wo.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.feed_forward.w1.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.feed_forward.w3.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.feed_forward.w2.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

QWEN2_KEY_MAP: dict[str, str] = {
    **LLAMA_KEY_MAP,
    "model.layers.{i}.self_attn.q_proj.bias": "layers.{i}.attention.wq.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "layers.{i}.attention.wk.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "layers.{i}.attention.wv.bias",
}

KEY_MAPS: dict[str, dict[str, str]] = {"llama": LLAMA_KEY_MAP, "qwen2": QWEN2_KEY_MAP}

# Checkpoint entries that carry no weights (old exports saved RoPE's inverse frequencies).
IGNORED_HF_KEYS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# Values transformers assumes when config.json leaves a field out.
HF_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    },
    "qwen2": {
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "hidden_act": "silu",
    },
}

_REQUIRED_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


def _rename(name: str, key_map: dict[str, str]) -> str | None:
    for source, target in key_map.items():
        match = _pattern(source).fullmatch(name)
        if match:
            return target.format(**match.groupdict())
    return None


def _model_type(hf_config: dict[str, Any]) -> str:
    model_type = hf_config.get("model_type")
    if model_type not in KEY_MAPS:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(KEY_MAPS)}")
    return model_type


def _rope_theta(cfg: dict[str, Any]) -> float:
    """rope_theta lives at the top level (transformers 4.x) or in `rope_parameters` (5.x)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"unsupported RoPE scaling {rope_type!r}; only plain RoPE ('default') is supported")
    return float(rope.get("rope_theta", cfg["rope_theta"]))


def config_from_hf(hf_config: dict[str, Any]) -> TransformerConfig:
    """TransformerConfig from a Llama or Qwen2 `config.json` dict; unsupported features are errors."""
    model_type = _model_type(hf_config)
    missing = [name for name in _REQUIRED_HF_FIELDS if name not in hf_config]
    if missing:
        raise ValueError(f"{model_type} config.json lacks required field(s) {missing}")
    cfg = {**HF_CONFIG_DEFAULTS[model_type], **hf_config}
    n_heads = cfg["num_attention_heads"]
    problems = []
    if cfg["hidden_act"] != "silu":
        problems.append(f"hidden_act {cfg['hidden_act']!r} (expected 'silu')")
    if cfg.get("mlp_bias"):
        problems.append("mlp_bias=true")
    if cfg.get("use_sliding_window"):
        problems.append("use_sliding_window=true")
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // n_heads):
        problems.append(f"head_dim {cfg['head_dim']} != hidden_size / num_attention_heads")
    if problems:
        raise ValueError(f"unsupported {model_type} config: " + "; ".join(problems))
    return TransformerConfig(
        vocab_size=cfg["vocab_size"],
        dim=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        ffn_dim=cfg["intermediate_size"],
        rope_theta=_rope_theta(cfg),
        norm_eps=cfg["rms_norm_eps"],
        max_seq_len=cfg["max_position_embeddings"],
        tie_embeddings=cfg["tie_word_embeddings"],
        qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias")),
    )


def hf_config_from(cfg: TransformerConfig, model_type: str = "llama") -> dict[str, Any]:
    """The transformers config dict (for `LlamaConfig(**d)` / `Qwen2Config(**d)`) matching `cfg`."""
    _model_type({"model_type": model_type})
    if model_type == "qwen2" and not cfg.qkv_bias:
        raise ValueError("qwen2 always has q/k/v biases; this config has qkv_bias=False")
    extra = {"attention_bias": cfg.qkv_bias} if model_type == "llama" else {}
    return {
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.ffn_dim,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        **extra,
    }


def _read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard(s) that are not in {directory}: {missing}")
        files = [directory / name for name in shards]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise ValueError(
                f"{directory} holds only pickled weights {pickled}; they are never unpickled here. "
                "Convert them to safetensors first (e.g. save_pretrained(..., safe_serialization=True))."
            )
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def convert_hf_state_dict(
    hf_tensors: dict[str, torch.Tensor], model_type: str, cfg: TransformerConfig
) -> dict[str, torch.Tensor]:
    """Rename HF tensors to panglot names; errors name every unknown HF key."""
    key_map = KEY_MAPS[model_type]
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in hf_tensors.items():
        if IGNORED_HF_KEYS.fullmatch(name) or (cfg.tie_embeddings and name == "lm_head.weight"):
            continue
        target = _rename(name, key_map)
        if target is None:
            unexpected.append(name)
        else:
            state[target] = tensor
    if unexpected:
        raise ValueError(
            f"checkpoint has {len(unexpected)} key(s) with no {model_type} mapping: {sorted(unexpected)}"
        )
    return state


def load_hf_causal_lm(directory: str | Path, dtype: str | torch.dtype = "fp32") -> Transformer:
    """Load a local Llama/Qwen2 causal LM directory (config.json + safetensors) as a `Transformer`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    hf_config = json.loads(config_path.read_text())
    cfg = config_from_hf(hf_config)
    state = convert_hf_state_dict(_read_hf_tensors(directory), hf_config["model_type"], cfg)
    model = Transformer(cfg)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(
            f"weights in {directory} do not fit the config: missing {missing}, unexpected {extra}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(resolve_dtype(dtype))


def export_hf_state_dict(model: Transformer, model_type: str = "llama") -> dict[str, torch.Tensor]:
    """panglot weights under Hugging Face names (for `LlamaForCausalLM.load_state_dict`)."""
    reverse = {target: source for source, target in KEY_MAPS[_model_type({"model_type": model_type})].items()}
    out = {}
    for name, tensor in model.state_dict().items():
        source = _rename(name, reverse)
        if source is None:
            raise ValueError(f"panglot weight {name!r} has no {model_type} name")
        out[source] = tensor
    if model.cfg.tie_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out
