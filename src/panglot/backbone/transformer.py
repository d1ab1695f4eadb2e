"""Decoder-only transformer (Llama layout) over token ids or precomputed embeddings."""

from __future__ import annotations

import copy
import functools
import math
import types
from collections.abc import Callable

import torch
import torch._dynamo.config
import torch._inductor.config
import torch.nn.functional as F
from torch import nn

from panglot.backbone.config import TransformerConfig
from panglot.nn import Attention, KVCache, RMSNorm, RotaryEmbedding, SwiGLU, attention_mask
from panglot.nn.attention import DocumentBlocks, document_blocks


def frozen_decode_options(device: torch.device) -> dict[str, object]:
    """Inductor settings for compiled decode steps over frozen weights: ``freezing`` (weights become graph
    constants) and, on CPU, autotuned matrix products with the C++ GEMM template among the candidates."""
    options: dict[str, object] = {"freezing": True}
    if device.type == "cpu":
        options |= {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    return options


DECODE_RECOMPILE_LIMIT = 32  # graphs per compiled decoding copy's step (dynamo's default: 8)


def _under_decode_config(fn: Callable[..., torch.Tensor], options: dict[str, object]) -> Callable[..., torch.Tensor]:
    """``fn`` (a ``torch.compile``d callable) called with inductor's config patched by ``options`` and dynamo's
    recompile limit raised to ``DECODE_RECOMPILE_LIMIT``.

    ``torch.compile(options=...)`` is not enough for ``freezing``: dynamo reads that flag from the global
    config when it traces (to treat parameters as constants), before the per-compile options apply, so the
    weights stayed graph inputs and no product was packed. Patching around each call covers the first trace
    and every retrace (a new batch size, a dynamic-shape graph); the patch itself costs microseconds. The limit:
    an evaluation decodes with and without guidance, with two constraints, several batch sizes and guidance
    scales, each a graph of the fused step (`Transformer.decode_step`) until dynamo makes the changing sizes
    dynamic; past the default 8 dynamo would silently run the step eagerly."""

    @functools.wraps(fn)
    def call(*args: object, **kwargs: object) -> torch.Tensor:
        with torch._inductor.config.patch(options), torch._dynamo.config.patch(recompile_limit=DECODE_RECOMPILE_LIMIT):
            return fn(*args, **kwargs)

    return call


def _private_code(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``method`` bound to its object through a private copy of its code object.

    Dynamo keeps its compiled graphs per code object and stops compiling one after ``recompile_limit`` (8)
    graphs, falling back to eager. A frozen graph holds one model's weights, guarded by their identity, so
    without a private copy every compiled decoding copy in a process would share one ``_token_step``
    cache: the ninth (or the fifth, each retracing once for a new shape) would silently decode eagerly."""
    func = method.__func__
    private = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    return types.MethodType(functools.update_wrapper(private, func), method.__self__)


def _slots_dynamic(mask: torch.Tensor) -> torch.Tensor:
    """A decode step's mask (B, 1, 1, S), its slot count S marked dynamic: S grows by one at every step (attention
    reads only the written slots, `KVCache`), and without the mark dynamo would trace a graph for the first S and a
    second, dynamic one at the next step."""
    torch._dynamo.maybe_mark_dynamic(mask, 3)
    return mask


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.qkv_bias)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | DocumentBlocks | None,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, cache, layer)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Token embedding -> n_layers blocks -> RMSNorm -> vocabulary projection (optionally tied)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        if cfg.span_rows:  # where in its image each codec token lies (TransformerConfig's span positions)
            self.span_row_embeddings = nn.Embedding(cfg.span_rows, cfg.dim)
            self.span_col_embeddings = nn.Embedding(cfg.span_cols, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.reset_parameters()
        self._compiled_step = None  # set by compile_for_decoding
        self._compiled_select_step = None
        self.static_cache = False  # new_cache's default: True once compiled for decoding

    def compile_layers(self, **kwargs: object) -> None:
        """``torch.compile`` every block in place (``nn.Module.compile``: parameter names, state dicts and
        checkpoints are unchanged). Fuses the norms, RoPE, SwiGLU and residual adds around the matrix
        products: a `tiny` training step of 11 x 256 packed tokens went from 0.85 to 0.67 s CPU on this
        machine (docs/benchmarks.md); the first call pays the compilation (~14 s CPU). Needs a C++ compiler
        on CPU. ``kwargs`` go to ``torch.compile`` (e.g. ``dynamic=False`` when every batch has one shape)."""
        for layer in self.layers:
            layer.compile(**kwargs)

    def compile_for_decoding(self, freeze: bool | None = None, **kwargs: object) -> Transformer:
        """``torch.compile`` one-token decode steps of a decoding model (embeddings with span positions, RoPE,
        blocks, final norm and vocabulary head: `_token_step`), and make its KV caches static
        (``KVCache(static=True)``: the same tensor shapes at every step), so each decode step runs one compiled
        graph (the norms, RoPE, SwiGLU and residual adds fused around the matrix products) instead of ~40 small
        eager ops per layer; prompts (several tokens) and steps from embeddings run eagerly.

        ``freeze`` (default: when no parameter requires grad, as in the copies `for_decoding` makes) bakes the
        weights into the graph as constants (inductor ``freezing``) and, on CPU, lets inductor autotune each
        matrix product between ATen and its C++ GEMM template, whose AMX / AVX-512 micro-kernels run on
        weights packed once at compile time: the small-row products of a decode step are where the time goes
        (docs/benchmarks.md "Frozen weights"). A frozen graph does not see later changes to the weights, so
        never freeze a model that is still training. Tracing (with autotuning) costs ~15-20 s CPU for the
        first call and once more when the batch or cache length first changes (then one shape-generic graph
        serves all); worth it for evaluations and serving, not for a few images. Compiles in place:
        ``for_decoding(dtype, compile=True)`` gives a compiled copy instead, as ``panglot.load(..., compile=True)``
        uses; returns self. Needs a C++ compiler on CPU. ``kwargs`` go to ``torch.compile``."""
        if freeze is None:
            freeze = not any(p.requires_grad for p in self.parameters())
        options = frozen_decode_options(self.tok_embeddings.weight.device)

        def compiled(method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
            fn = torch.compile(_private_code(method) if freeze else method, **kwargs)
            return _under_decode_config(fn, options) if freeze else fn

        self._compiled_step = compiled(self._token_step)
        self._compiled_select_step = compiled(self._select_step)
        self.static_cache = True
        return self

    def reset_parameters(self) -> None:
        """Llama-style init: N(0, init_std) weights, zero biases, unit norms; residual writers scaled."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.cfg.span_rows:  # zero: turning span positions on starts from the same function
            nn.init.zeros_(self.span_row_embeddings.weight)
            nn.init.zeros_(self.span_col_embeddings.weight)
        if self.cfg.scaled_residual_init:
            residual_std = std / math.sqrt(2 * self.cfg.n_layers)
            for block in self.layers:
                nn.init.normal_(block.attention.wo.weight, mean=0.0, std=residual_std)
                nn.init.normal_(block.feed_forward.w2.weight, mean=0.0, std=residual_std)

    def embed(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (B, T) long -> embeddings (B, T, D), with span positions when the config has them (a
        cache carries each row's open span from call to call, and is updated)."""
        x = self.tok_embeddings(tokens)
        if not self.cfg.span_rows:
            return x
        index, in_span = self.span_index(tokens, cache)
        cfg = self.cfg
        index = index.clamp(min=0) % (cfg.span_rows * cfg.span_cols)
        where = self.span_row_embeddings(index // cfg.span_cols) + self.span_col_embeddings(index % cfg.span_cols)
        return x + where * in_span[..., None].to(x.dtype)

    def span_index(self, tokens: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> (index of each span token in its run (B, T) long, is a span token (B, T) bool).

        A run is a maximal sequence of consecutive span ids; with a cache it continues the run that ends the
        cached tokens (``cache.span_run``, updated here)."""
        in_span = (tokens >= self.cfg.span_start) & (tokens < self.cfg.span_end)
        t = tokens.shape[1]
        step = torch.arange(t, device=tokens.device)
        before = -1 if cache is None else -1 - cache.span_run[:, None]  # where the open run would have begun
        last_break = torch.where(in_span, before, step).cummax(dim=1).values  # (B, T) last non-span token
        if cache is not None:
            cache.span_run = t - 1 - last_break[:, -1]
        return step - last_break - 1, in_span

    def new_cache(
        self, batch: int, max_len: int, dtype: torch.dtype | None = None, static: bool | None = None
    ) -> KVCache:
        """Empty KV cache for `batch` rows of up to `max_len` slots (default dtype: the weights'; static by
        default once `compile_for_decoding` was called)."""
        if max_len > self.cfg.max_seq_len:
            raise ValueError(
                f"cache max_len {max_len} exceeds the model's max_seq_len {self.cfg.max_seq_len}"
            )
        weight = self.tok_embeddings.weight
        return KVCache(
            n_layers=self.cfg.n_layers,
            batch=batch,
            n_kv_heads=self.cfg.n_kv_heads,
            max_len=max_len,
            head_dim=self.cfg.head_dim,
            dtype=dtype or weight.dtype,
            device=weight.device,
            static=self.static_cache if static is None else static,
        )

    def for_decoding(self, dtype: torch.dtype | None = None, compile: bool = False) -> Transformer:
        """This model with its weights in `dtype`, for decoding: itself when they already are (or
        dtype is None) and `compile` is False, else an inference copy (weights cast once, autograd off);
        with `compile`, the copy is compiled for decoding (`compile_for_decoding`), never the model itself.

        Decoding on a bf16 copy instead of under autocast saves autocast's casts and dispatch on every
        op of every step. Norms still compute in fp32 and RoPE tables stay fp32. The copy costs one
        cast of the weights, far less than a decode, which reads all of them at every step; an uncast copy
        shares the weights' storage.
        """
        dtype = dtype or self.tok_embeddings.weight.dtype
        if dtype == self.tok_embeddings.weight.dtype and not compile:
            return self
        memo = {id(self._compiled_step): None, id(self._compiled_select_step): None}  # a compiled graph is not copied: the copy starts eager
        memo |= {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in self.parameters()}
        decoder = copy.deepcopy(self, memo=memo).eval()
        decoder.static_cache = False
        return decoder.compile_for_decoding() if compile else decoder

    def forward_hidden(
        self,
        tokens: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final normed hidden states (B, T, D).

        Give exactly one of tokens (B, T) or inputs_embeds (B, T, D). valid (B, T) bool marks real
        tokens (False = left padding); each row's RoPE positions count only its valid tokens.
        With a cache, the T new tokens are appended after everything already cached.
        document_ids (B, T) (packed training rows, no cache, no valid): each run of equal ids is one
        document; attention never leaves it and RoPE positions restart at 0 where it starts, so every
        token sees exactly what it would see with its document alone.
        """
        return self._layers_and_norm(*self._prepare(tokens, inputs_embeds, valid, cache, document_ids), cache)

    def _prepare(
        self,
        tokens: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        valid: torch.Tensor | None,
        cache: KVCache | None,
        document_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | DocumentBlocks | None]:
        """The blocks' inputs: embeddings (B, T, D), RoPE cos and sin, and the attention mask."""
        x = self._inputs(tokens, inputs_embeds, cache)  # (B, T, D)
        b, t, _ = x.shape
        for name, given in (("valid", valid), ("document_ids", document_ids)):
            if given is not None and given.shape != (b, t):
                raise ValueError(f"{name} must have shape {(b, t)} (batch, time), got {tuple(given.shape)}")
        if document_ids is not None and (cache is not None or valid is not None):
            raise ValueError("document_ids is for packed training rows: give it without cache and valid")
        if cache is not None:
            valid = torch.ones(b, t, dtype=torch.bool, device=x.device) if valid is None else valid
            positions, mask = cache.extend(valid)
        else:
            if t > self.cfg.max_seq_len:
                raise ValueError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
            if document_ids is not None:  # packed rows: causal attention within each document
                positions, mask = document_blocks(document_ids)
            elif valid is None:  # training route: plain causal, SDPA's is_causal fast path
                positions, mask = torch.arange(t, device=x.device)[None], None
            else:
                positions, mask = (valid.long().cumsum(1) - 1).clamp(min=0), attention_mask(valid)
        cos, sin = self.rope(positions)  # fp32 tables, cast once here rather than in every layer
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return x, cos, sin, mask

    def _layers_and_norm(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | DocumentBlocks | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, mask, cache, i)
        return self.norm(x)

    def forward(
        self,
        tokens: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        document_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, V); arguments as in `forward_hidden`. ``logits_to_keep`` > 0: only the last that many
        positions' logits (B, logits_to_keep, V), as transformers' argument of that name (a prompt's forward
        before decoding needs its last position only, and the vocabulary head over every prompt position would
        cost more than a block). A one-token step of token ids over a static cache runs the compiled step when
        `compile_for_decoding` made one."""
        if (
            self._compiled_step is not None
            and tokens is not None
            and tokens.ndim == 2
            and tokens.shape[1] == 1
            and cache is not None
            and cache.static
            and (valid is None or valid.shape == tokens.shape)
            and inputs_embeds is None
            and document_ids is None
        ):
            positions, mask = cache.extend(torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid)
            return self._compiled_step(tokens, positions, _slots_dynamic(mask), cache)
        if logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be >= 0 (0 keeps every position), got {logits_to_keep}")
        hidden = self._layers_and_norm(*self._prepare(tokens, inputs_embeds, valid, cache, document_ids), cache)
        # contiguous: a strided (B, k, D) slice sends F.linear down a batched-matmul path that copies the weight per row
        return self.logits(hidden[:, -logits_to_keep:].contiguous() if logits_to_keep else hidden)

    def decode_step(
        self, tokens: torch.Tensor, cache: KVCache, select: Callable[..., torch.Tensor], *select_args: object
    ) -> torch.Tensor:
        """One decode step that also picks the next ids: ``select(logits (B, V) of the last position,
        *select_args)`` (``generate`` passes guidance, processors and sampler). After `compile_for_decoding`, with
        a static cache, the forward and ``select`` run as one compiled graph (one call per token instead of a
        compiled forward plus ~25 small eager ops of guidance, constraint and sampler); otherwise as
        ``select(self(tokens, cache=cache)[:, -1], *select_args)``. tokens (B, 1)."""
        if self._compiled_select_step is None or not cache.static:
            return select(self(tokens, cache=cache)[:, -1], *select_args)
        positions, mask = cache.extend(torch.ones_like(tokens, dtype=torch.bool))
        return self._compiled_select_step(tokens, positions, _slots_dynamic(mask), cache, select, *select_args)

    def _select_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        select: Callable[..., torch.Tensor],
        *select_args: object,
    ) -> torch.Tensor:
        return select(self._token_step(tokens, positions, mask, cache)[:, -1], *select_args)

    def _token_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """One decode step from token ids (B, 1) and the cache's reserved slot: embeddings (with span
        positions), RoPE, blocks, final norm and vocabulary head -> logits (B, 1, V). What
        `compile_for_decoding` compiles, so that all of it runs as one graph."""
        x = self.embed(tokens, cache)
        cos, sin = self.rope(positions)
        return self.logits(self._layers_and_norm(x, cos.to(x.dtype), sin.to(x.dtype), mask, cache))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Project hidden states (B, T, D) to vocabulary logits (B, T, V)."""
        if self.output is None:
            return F.linear(hidden, self.tok_embeddings.weight)
        return self.output(hidden)

    def _inputs(
        self, tokens: torch.Tensor | None, inputs_embeds: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        if (tokens is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of tokens (B, T) or inputs_embeds (B, T, D)")
        if tokens is not None:
            if tokens.ndim != 2:
                raise ValueError(f"tokens must be (batch, time), got shape {tuple(tokens.shape)}")
            return self.embed(tokens, cache)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.cfg.dim:
            raise ValueError(
                f"inputs_embeds must be (batch, time, {self.cfg.dim}), got shape {tuple(inputs_embeds.shape)}"
            )
        return inputs_embeds
