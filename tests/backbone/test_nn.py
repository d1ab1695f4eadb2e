"""Unit tests of the small layers in panglot.nn."""

import pytest
import torch

from panglot.nn import (
    Attention,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    attend,
    attention_mask,
    autocast_context,
    default_device,
    fast_bf16,
    resolve_device,
    resolve_dtype,
    warn_if_slow_bf16,
)
from panglot.nn import precision as precision_module


def test_resolve_dtype_names_and_errors():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, caplog):
    # what this machine has: "auto" follows fast_bf16, and an explicit name is taken as given
    assert resolve_dtype("auto") is (torch.bfloat16 if fast_bf16("cpu") else torch.float32)
    assert resolve_dtype("bf16") is torch.bfloat16
    assert fast_bf16("meta") is False and resolve_dtype("auto", "meta") is torch.float32
    # both kinds of CPU, by torch's own feature checks (an x86 machine) ...
    monkeypatch.setattr(precision_module.platform, "machine", lambda: "x86_64")
    for amx, avx512_bf16, native in [(False, False, False), (True, False, True), (False, True, True)]:
        precision_module._fast_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx=avx512_bf16: avx)
        assert fast_bf16("cpu") is native
        assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if native else torch.float32)
        with autocast_context("cpu", "auto"):
            assert torch.is_autocast_enabled("cpu") is native
        caplog.clear()
        with caplog.at_level("WARNING", logger="panglot.nn.precision"):
            warn_if_slow_bf16("bf16", "cpu")
            warn_if_slow_bf16("auto", "cpu")  # never warns: it picks fp32 where bf16 is slow
        assert ("no native bf16" in caplog.text) is not native and len(caplog.records) == int(not native)
    # ... and elsewhere by timing a product of each dtype
    monkeypatch.setattr(precision_module.platform, "machine", lambda: "aarch64")
    for faster in (True, False):
        precision_module._fast_bf16.cache_clear()
        monkeypatch.setattr(precision_module, "_bf16_timed_faster", lambda faster=faster: faster)
        assert fast_bf16("cpu") is faster
    precision_module._fast_bf16.cache_clear()


def test_resolve_device_checks_what_the_machine_has(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="'meta': panglot trains on"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda:1': this machine has no CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="device 'cuda:1': this machine has 1 CUDA device"):
        resolve_device("cuda:1")


def test_autocast_context_bf16_on_cpu_and_fp32_noop():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_context("cpu", "bf16"):
        assert (a @ b).dtype is torch.bfloat16
    with autocast_context("cpu", "fp32"):
        assert (a @ b).dtype is torch.float32
    assert default_device().type in ("cpu", "cuda")


def test_rmsnorm_matches_formula_and_keeps_dtype():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    # bf16 input is normalised in fp32: result equals the fp32 computation rounded to bf16
    xb = (x * 1000).bfloat16()
    out = RMSNorm(16)(xb)
    assert out.dtype is torch.float32  # fp32 weight * bf16 promotes, as in Llama
    torch.testing.assert_close(out, RMSNorm(16)(xb.float()).bfloat16().float())
    with autocast_context("cpu", "bf16"):  # cast once for the matmuls that follow
        out = norm(x)
    assert out.dtype is torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16())


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8, max_seq_len=64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum()

    torch.testing.assert_close(score(5, 2), score(40, 37))
    assert not torch.allclose(score(5, 2), score(5, 3))
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(head_dim=7, max_seq_len=8)


def test_gqa_attention_equals_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Attention(dim=32, n_heads=4, n_kv_heads=2, head_dim=8)
    mha = Attention(dim=32, n_heads=4, n_kv_heads=4, head_dim=8)
    mha.wq.weight.data, mha.wo.weight.data = gqa.wq.weight.data, gqa.wo.weight.data
    for name in ("wk", "wv"):  # each kv head serves two query heads
        w = getattr(gqa, name).weight.data.view(2, 8, 32)
        getattr(mha, name).weight.data = w.repeat_interleave(2, dim=0).reshape(32, 32)
    x = torch.randn(2, 5, 32)
    cos, sin = RotaryEmbedding(8, 16)(torch.arange(5)[None])
    torch.testing.assert_close(gqa(x, cos, sin, None), mha(x, cos, sin, None))
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        Attention(dim=32, n_heads=4, n_kv_heads=3, head_dim=8)


def test_attention_mask_hides_padding_and_future():
    valid = torch.tensor([[False, True, True], [True, True, True]])
    mask = attention_mask(valid)[:, 0]
    assert mask[0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert mask[1].tolist() == torch.ones(3, 3, dtype=torch.bool).tril().tolist()
    assert attention_mask(valid, query_start=2).shape == (2, 1, 1, 3)


def test_kv_cache_positions_and_overflow():
    cache = KVCache(
        n_layers=1, batch=2, n_kv_heads=1, max_len=4, head_dim=2, dtype=torch.float32, device="cpu"
    )
    positions, mask = cache.extend(torch.tensor([[False, True], [True, True]]))
    assert positions.tolist() == [[0, 0], [0, 1]]
    positions, mask = cache.extend(torch.ones(2, 1, dtype=torch.bool))
    assert positions.tolist() == [[1], [2]] and mask.shape == (2, 1, 1, 3)
    k = torch.randn(2, 1, 1, 2)
    keys, values = cache.update(0, k, -k)
    torch.testing.assert_close(values[:, :, 2:], -k)
    torch.testing.assert_close(keys[:, :, 2:], k)
    assert keys.shape == (2, 1, 3, 2)
    with pytest.raises(ValueError, match="cache holds 4 slots; 3 used, 2 more requested"):
        cache.extend(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch 2, got 3 rows"):
        cache.extend(torch.ones(3, 1, dtype=torch.bool))


def test_sdpa_causal_route_equals_explicit_mask():
    torch.manual_seed(0)
    attn = Attention(dim=32, n_heads=4, n_kv_heads=2, head_dim=8)
    x = torch.randn(2, 6, 32)
    cos, sin = RotaryEmbedding(8, 16)(torch.arange(6)[None])
    mask = attention_mask(torch.ones(2, 6, dtype=torch.bool))
    torch.testing.assert_close(attn(x, cos, sin, None), attn(x, cos, sin, mask))


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float", None])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attend_explicit_path_equals_sdpa_values_and_gradients(mask_kind, kv_heads):
    """The explicit products (training on CPU) and SDPA give the same outputs and gradients, for a causal mask,
    a bool mask (True = attend), a float bias added to the logits, no mask, and grouped-query heads."""
    gen = torch.Generator().manual_seed(0)
    t, s = (7, 7) if mask_kind == "causal" else (5, 9)
    q = torch.randn(2, 4, t, 8, generator=gen, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, s, 8, generator=gen, requires_grad=True) for _ in range(2))
    mask = {"bool": torch.rand(2, 1, t, s, generator=gen) > 0.3, "float": torch.randn(t, s, generator=gen)}.get(mask_kind)
    if mask_kind == "bool":
        mask[..., 0] = True  # no query without a key
    outs = [attend(q, k, v, mask, is_causal=mask_kind == "causal", explicit=e) for e in (True, False)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v)) for out in outs]
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attend_takes_the_explicit_path_only_when_training_short_sequences_on_cpu(monkeypatch):
    import panglot.nn.attention as module

    calls = []
    monkeypatch.setattr(module, "_explicit", lambda *args: calls.append("explicit") or module.F.scaled_dot_product_attention(*args[:3]))
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    attend(q, k, v)  # no autograd: SDPA
    assert calls == []
    q.requires_grad_(True)
    attend(q, k, v)
    assert calls == ["explicit"]
    with torch.no_grad():
        attend(q, k, v)
    long_k, long_v = (torch.randn(1, 2, module.MATMUL_ATTENTION_MAX_LENGTH + 1, 8) for _ in range(2))
    attend(q, long_k, long_v)  # too many keys for the score matrix: SDPA
    assert calls == ["explicit"]
