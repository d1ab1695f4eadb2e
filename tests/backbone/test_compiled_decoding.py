"""Transformer.compile_for_decoding: compiled one-token steps over a static KV cache decode what the eager
growing cache decodes, across calls of other batch sizes and prompt lengths, and leave the model alone."""

import torch
from torch._dynamo.utils import counters

from panglot.backbone import build_transformer
from panglot.generation import generate

VOCAB = 97


def _prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def test_compiled_decoding_equals_eager_decoding():
    torch.manual_seed(0)
    model = build_transformer("debug", VOCAB).eval()
    compiled = model.for_decoding(compile=True)  # a compiled copy; the model stays eager
    counters.clear()
    assert compiled.new_cache(2, 8).static and not model.new_cache(2, 8).static
    assert not compiled.for_decoding(torch.bfloat16).new_cache(2, 8).static  # a cast copy starts eager
    for batch, seed in ((3, 1), (5, 2)):  # a second batch size and prompt lengths: the graph is reused or retraced
        prompts, uncond = _prompts(batch, seed), [[1, 2]] * batch
        args = dict(max_new_tokens=12, uncond_prompts=uncond, cfg_scale=2.0)
        assert generate(compiled, prompts, **args) == generate(model, prompts, **args)
        tokens = torch.tensor([p[:2] for p in prompts])
        steps = {}
        for name, m in (("eager", model), ("compiled", compiled)):
            with torch.inference_mode():
                cache = m.new_cache(batch, 6)
                m(tokens, cache=cache)
                steps[name] = torch.cat([m(tokens[:, :1] + k, cache=cache) for k in range(4)], dim=1)
        torch.testing.assert_close(steps["compiled"], steps["eager"], atol=1e-5, rtol=1e-4)
    assert model._compiled_layers is None and compiled._compiled_layers is not None
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled steps ran (graphs were traced)
