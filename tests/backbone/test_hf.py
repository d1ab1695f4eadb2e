"""Parity with transformers' Llama / Qwen2 on tiny random models, and loader errors."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from panglot.backbone import config_from_hf, export_hf_state_dict, hf_config_from, load_hf_causal_lm

TINY = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


def _random_hf(model_cls, config_cls, seed=0, **overrides):
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **overrides}, attn_implementation="eager")).eval()
    with torch.no_grad():  # perturb everything (norms start at 1, biases at 0) so the key map is tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _assert_same_logits(ours, theirs):
    tokens = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), theirs(tokens).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("model_cls", "config_cls", "overrides"),
    [
        (LlamaForCausalLM, LlamaConfig, {"num_key_value_heads": 4}),
        (LlamaForCausalLM, LlamaConfig, {"num_key_value_heads": 2, "rope_theta": 500000.0}),  # GQA
        (LlamaForCausalLM, LlamaConfig, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
        (Qwen2ForCausalLM, Qwen2Config, {"num_key_value_heads": 2}),
    ],
    ids=["llama", "llama-gqa", "llama-tied-mqa", "qwen2-gqa"],
)
def test_logits_match_transformers(tmp_path, model_cls, config_cls, overrides):
    reference = _random_hf(model_cls, config_cls, **overrides)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_causal_lm(tmp_path).eval()
    assert ours.cfg.n_kv_heads == overrides["num_key_value_heads"]
    _assert_same_logits(ours, reference)


def test_sharded_checkpoint_loads(tmp_path):
    reference = _random_hf(Qwen2ForCausalLM, Qwen2Config, num_key_value_heads=2)
    reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _assert_same_logits(load_hf_causal_lm(tmp_path).eval(), reference)


def test_export_loads_into_transformers(tmp_path):
    reference = _random_hf(LlamaForCausalLM, LlamaConfig, num_key_value_heads=2)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_hf_causal_lm(tmp_path).eval()
    hf_config = LlamaConfig(**hf_config_from(ours.cfg, "llama"))
    assert config_from_hf(hf_config.to_dict()) == ours.cfg
    rebuilt = LlamaForCausalLM(hf_config).eval()
    rebuilt.load_state_dict(export_hf_state_dict(ours, "llama"), strict=True)
    _assert_same_logits(ours, rebuilt)


def _write_llama(directory, tensors=None, **config):
    directory.mkdir(exist_ok=True)
    reference = _random_hf(LlamaForCausalLM, LlamaConfig, num_key_value_heads=2)
    tensors = reference.state_dict() if tensors is None else tensors
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({**reference.config.to_dict(), **config}))
    return reference


def test_missing_directory_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_causal_lm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_hf_causal_lm(tmp_path)


def test_missing_weights_and_pickles_refused(tmp_path):
    _write_llama(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors weights"):
        load_hf_causal_lm(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(
        ValueError, match=r"only pickled weights \['pytorch_model.bin'\]; they are never unpickled"
    ):
        load_hf_causal_lm(tmp_path)


def test_unsupported_model_type_and_features(tmp_path):
    _write_llama(tmp_path, model_type="mistral")
    with pytest.raises(
        ValueError, match=r"unsupported model_type 'mistral'; supported: \['llama', 'qwen2'\]"
    ):
        load_hf_causal_lm(tmp_path)
    base = LlamaConfig(**TINY).to_dict()
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        config_from_hf({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="unsupported RoPE scaling 'llama3'"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match=r"lacks required field\(s\) \['hidden_size'\]"):
        config_from_hf({k: v for k, v in base.items() if k != "hidden_size"})


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _random_hf(LlamaForCausalLM, LlamaConfig, num_key_value_heads=2).state_dict()
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    _write_llama(tmp_path / "a", missing)
    with pytest.raises(ValueError, match=r"missing \['layers.1.feed_forward.w3.weight'\]"):
        load_hf_causal_lm(tmp_path / "a")
    _write_llama(tmp_path / "b", {**state, "model.layers.0.mlp.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no llama mapping: \['model.layers.0.mlp.extra.weight'\]"):
        load_hf_causal_lm(tmp_path / "b")
