"""The decode loop: one prefill, then one cached forward and one sample per step.

Prompts of different lengths are left-padded into one batch (a `valid` mask marks the padding; the
backbone keeps positions per row, so padding changes nothing for a row). With classifier-free guidance
the unconditional prompts join the same batch as rows [B, 2B) and every sampled token is appended to
both rows of its pair (see `guidance.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from panglot.generation.guidance import ClassifierFreeGuidance
from panglot.generation.processors import DecodeState, LogitsProcessor, ProcessorList
from panglot.generation.sampling import Greedy, Sampler, SampleRun
from panglot.nn.precision import resolve_dtype

StepCallback = Callable[[int, torch.Tensor], None]


class CausalLM(Protocol):
    """What `generate` needs from a model (`panglot.backbone.Transformer` is one)."""

    def __call__(
        self, tokens: torch.Tensor, *, valid: torch.Tensor | None = None, cache: Any = None, logits_to_keep: int = 0
    ) -> torch.Tensor:
        """tokens (B, T) long -> logits (B, T, V) (the last ``logits_to_keep`` positions when > 0); with a cache,
        the tokens are appended to it (a cache has ``take_rows(index)``, as `panglot.nn.KVCache`)."""
        ...

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> Any: ...

    def for_decoding(self, dtype: torch.dtype | None = None) -> CausalLM:
        """An inference copy with weights in `dtype` (None keeps them), laid out for fast decoding."""
        ...

    def parameters(self) -> Any: ...


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    processors: Sequence[LogitsProcessor] = (),
    sampler: Sampler | None = None,
    stop_ids: Sequence[int] = (),
    uncond_prompts: Sequence[Sequence[int]] | None = None,
    cfg_scale: float = 1.0,
    cfg_plausibility: float = 0.0,
    callback: StepCallback | None = None,
    dtype: str | torch.dtype | None = None,
) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` ids; returns one list of new ids per prompt.

    A row stops at the first id in `stop_ids`, which ends its list (so a finished row can be told from
    one cut at `max_new_tokens`); the loop ends early once every row has stopped. `processors` run in
    order on float32 logits; `sampler` defaults to :class:`Greedy`. `uncond_prompts` (one per prompt)
    turn on classifier-free guidance with `cfg_scale` (and its plausibility constraint with `cfg_plausibility` > 0:
    `ClassifierFreeGuidance`). `callback(step, tokens)` is called after every
    step with the ids generated so far, (B, step + 1), a view of the decode buffer (copy what you keep).
    `dtype` (e.g. "bf16") decodes with the weights and KV cache cast once to that dtype (logits go to
    float32 for the processors); None keeps the model's own dtype. The forwards run on
    `model.for_decoding(dtype)`, a copy made once per call.
    """
    _check_request(prompts, uncond_prompts, cfg_scale, max_new_tokens)
    guidance = ClassifierFreeGuidance(cfg_scale, cfg_plausibility) if uncond_prompts is not None else None
    process = ProcessorList(processors)
    device = next(iter(model.parameters())).device
    n_prompts = len(prompts)
    cache_dtype = None if dtype is None else resolve_dtype(dtype, device)
    model = model.for_decoding(cache_dtype)
    with torch.inference_mode():
        every_prompt = [*prompts, *(uncond_prompts or ())]
        tokens, valid = left_pad(every_prompt, max_new_tokens, device)  # (R, P + N)
        prompt_len = tokens.shape[1] - max_new_tokens
        sample = (sampler or Greedy()).start(n_prompts, max_new_tokens, device)
        stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        done = torch.zeros(n_prompts, dtype=torch.bool, device=device)

        # with a SampleRun and a model that has decode_step, each step after the first is one call of it: the
        # forward of the last ids and _select (one compiled graph once the model is compiled for decoding)
        fused = isinstance(sample, SampleRun) and hasattr(model, "decode_step")
        logits, cache = _prefill(
            model, every_prompt, tokens[:, :prompt_len], valid[:, :prompt_len], tokens.shape[1], cache_dtype
        )
        n_generated = 0
        for step in range(max_new_tokens):
            end = prompt_len + step
            rows = (tokens[:n_prompts, :end], valid[:n_prompts, :end], step)
            pick, noise = (sample.pick, sample.noise(step)) if fused else (_at_step(sample, step), None)
            if fused and step > 0:
                ids = model.decode_step(tokens[:, end - 1 : end], cache, _select, guidance, process, *rows, pick, noise)
            else:
                ids = _select(logits, guidance, process, *rows, pick, noise)  # (B,)
            tokens[:, end] = ids.repeat(tokens.shape[0] // n_prompts)
            n_generated = step + 1
            if callback is not None:
                callback(step, tokens[:n_prompts, prompt_len : end + 1])
            if len(stops):
                done |= torch.isin(ids, stops)
            if n_generated == max_new_tokens or (len(stops) and bool(done.all())):
                break
            if not fused:
                logits = model(tokens[:, end : end + 1], cache=cache)[:, -1]
    generated = tokens[:n_prompts, prompt_len : prompt_len + n_generated].tolist()
    return [_cut_at_stop(row, set(stop_ids)) for row in generated]


def _prefill(
    model: CausalLM,
    rows: Sequence[Sequence[int]],
    tokens: torch.Tensor,
    valid: torch.Tensor,
    max_len: int,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, Any]:
    """The prompts' forward: last-position logits (R, V) and a cache of ``max_len`` slots holding the R prompts.

    Each distinct prompt runs once and its cache row is copied to every row that holds it: with guidance the
    B unconditional prompts are usually one and the same, and ``n`` samples of a prompt repeat it, so this
    halves the prompt forward of a guided batch (tokens, valid: the left-padded prompts (R, P))."""
    first_row: dict[tuple[int, ...], int] = {}  # each distinct prompt -> the first row that holds it
    for i, row in enumerate(rows):
        first_row.setdefault(tuple(row), i)
    firsts = torch.tensor(list(first_row.values()), device=tokens.device)  # (U,)
    cache = model.new_cache(len(firsts), max_len, dtype=dtype)
    logits = model(tokens[firsts], valid=valid[firsts], cache=cache, logits_to_keep=1)[:, -1]  # (U, V)
    if len(firsts) == len(rows):  # nothing repeats
        return logits, cache
    distinct = {prompt: u for u, prompt in enumerate(first_row)}
    index = torch.tensor([distinct[tuple(row)] for row in rows], device=tokens.device)  # (R,) row -> its prompt
    return logits[index], cache.take_rows(index)


def _select(
    logits: torch.Tensor,
    guidance: ClassifierFreeGuidance | None,
    process: ProcessorList,
    tokens: torch.Tensor,
    valid: torch.Tensor,
    step: int,
    pick: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """The next ids (B,) from the last position's logits (R, V): guidance, processors, then the sampler's pick.
    A plain function of its arguments, so that a compiled decode step can trace it into its graph."""
    next_logits = logits.float() if guidance is None else guidance(logits.float())  # (B, V)
    return pick(process(next_logits, DecodeState(tokens=tokens, valid=valid, step=step)), noise)


def _at_step(sample: Callable[[torch.Tensor, int], torch.Tensor], step: int) -> Callable[..., torch.Tensor]:
    """A plain sampler function as a ``pick(logits, noise)`` for this step (the noise is its own business)."""
    return lambda logits, noise: sample(logits, step)


def left_pad(
    rows: Sequence[Sequence[int]], extra: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned token buffer (R, P + extra) long (padding ids 0) and its valid mask (R, P + extra)."""
    width = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), width + extra, dtype=torch.long)
    valid = torch.zeros(len(rows), width + extra, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, width - len(row) : width] = torch.tensor(row, dtype=torch.long)
        valid[i, width - len(row) :] = True
    return tokens.to(device), valid.to(device)


def _cut_at_stop(row: list[int], stop_ids: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stop_ids:
            return row[: i + 1]
    return row


def _check_request(
    prompts: Sequence[Sequence[int]],
    uncond_prompts: Sequence[Sequence[int]] | None,
    cfg_scale: float,
    max_new_tokens: int,
) -> None:
    if not prompts:
        raise ValueError("generate needs at least one prompt, got none")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    groups = {"prompts": prompts, "uncond_prompts": uncond_prompts or ()}
    for name, group in groups.items():
        for i, row in enumerate(group):
            if len(row) == 0:
                raise ValueError(f"{name}[{i}] is empty; every prompt needs at least one token (e.g. <bos>)")
            if min(row) < 0:
                raise ValueError(f"{name}[{i}] holds a negative id {min(row)}")
    if uncond_prompts is None:
        if cfg_scale != 1.0:
            raise ValueError(f"cfg_scale={cfg_scale} needs uncond_prompts (one per prompt), got none")
    elif len(uncond_prompts) != len(prompts):
        raise ValueError(
            f"classifier-free guidance needs one unconditional prompt per prompt: "
            f"{len(prompts)} prompts, {len(uncond_prompts)} uncond_prompts"
        )
