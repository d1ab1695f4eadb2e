"""Transformer.compile_for_decoding: compiled one-token steps over a static KV cache decode what the eager
growing cache decodes, across calls of other batch sizes and prompt lengths, and leave the model alone."""

import torch
from torch._dynamo.utils import counters

from panglot.backbone import build_transformer
from panglot.generation import Multinomial, TopK, generate

VOCAB = 97


def _prompts(n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def _steps(model, tokens: torch.Tensor, n: int = 3) -> torch.Tensor:
    """Logits of n one-token steps after the prompt ``tokens``, on a fresh cache (of the model's default kind)
    that holds exactly them."""
    with torch.inference_mode():
        cache = model.new_cache(tokens.shape[0], tokens.shape[1] + n)
        model(tokens, cache=cache)
        return torch.cat([model(tokens[:, :1] + k, cache=cache) for k in range(n)], dim=1)


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
        torch.testing.assert_close(_steps(compiled, tokens, 4), _steps(model, tokens, 4), atol=1e-5, rtol=1e-4)
    assert model._compiled_step is None and compiled._compiled_step is not None
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled steps ran (graphs were traced)


def test_frozen_decoders_each_decode_their_own_weights():
    """Decoding copies freeze their weights into their graphs; two models in one process get a graph each
    (not the first model's weights), and each matches its eager steps."""
    tokens = torch.tensor([[5, 7], [9, 11]])
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_transformer("debug", VOCAB).eval())
    compiled = [m.for_decoding(compile=True) for m in models]
    counters.clear()
    for model, copy in zip(models, compiled):
        torch.testing.assert_close(_steps(copy, tokens), _steps(model, tokens), atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] >= 2  # one frozen graph per model
    assert (_steps(compiled[0], tokens) - _steps(compiled[1], tokens)).abs().max() > 1e-2  # different models


def test_training_model_compiled_in_place_is_not_frozen():
    """A model whose weights still require grad compiles without freezing: a later weight update reaches the
    compiled steps (a frozen graph would keep the old weights)."""
    torch.manual_seed(0)
    model = build_transformer("debug", VOCAB)
    model.compile_for_decoding()
    tokens = torch.tensor([[5, 7], [9, 11]])
    before = _steps(model, tokens)
    with torch.no_grad():
        model.layers[0].feed_forward.w2.weight.mul_(3.0)
    after = _steps(model, tokens)
    assert (after - before).abs().max() > 1e-3
    model._compiled_step, model.static_cache = None, True  # the same steps eagerly over a static cache
    torch.testing.assert_close(after, _steps(model, tokens), atol=1e-5, rtol=1e-4)


def test_fused_decode_steps_sample_what_the_plain_loop_samples():
    """`generate` runs each step after the first as one `decode_step` (forward + guidance + processors + the
    sampler's pick; one compiled graph on a compiled copy) when the sampler returns a `SampleRun`; a sampler that
    returns a plain function takes the step-by-step loop. Same draws, same ids, eager or compiled."""
    torch.manual_seed(0)
    model = build_transformer("debug", VOCAB).eval()
    compiled = model.for_decoding(compile=True)

    class PlainFunction:  # Multinomial's draws behind a plain function: generate cannot fuse it
        def __init__(self, seed: int) -> None:
            self.sampler = Multinomial(seed)

        def start(self, *args):
            run = self.sampler.start(*args)
            return lambda logits, step: run(logits, step)

    prompts, uncond = _prompts(4, 3), [[1, 2]] * 4
    args = dict(max_new_tokens=10, uncond_prompts=uncond, cfg_scale=2.5, processors=[TopK(20)])
    plain = generate(model, prompts, sampler=PlainFunction(5), **args)
    assert generate(model, prompts, sampler=Multinomial(5), **args) == plain
    counters.clear()
    assert generate(compiled, prompts, sampler=Multinomial(5), **args) == plain
    assert counters["stats"]["unique_graphs"] >= 1
    # guidance's plausibility constraint inside the fused step too (0.8: a random model's logits are flat, so a
    # smaller alpha keeps every token and changes nothing)
    args["cfg_plausibility"] = 0.8
    constrained = generate(model, prompts, sampler=PlainFunction(5), **args)
    assert constrained != plain
    assert generate(compiled, prompts, sampler=Multinomial(5), **args) == constrained
