"""UnifiedModel = decoder-only backbone + codecs + the unified vocabulary: one model that captions,
answers questions and draws (the CM3Leon / Chameleon core)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from panglot.multimodal import TASKS, SequenceLayout, TaskSequence, UnifiedVocab
from panglot.nn.factored_rows import factor_rows


@dataclass
class UnifiedModelConfig:
    """Backbone size by name plus overrides of its fields (``dim``, ``n_layers`` ...). Per-task loss weights
    are data (``MixtureConfig.loss_weights``): each document carries its weights."""

    size: str = "small"
    overrides: dict[str, int | float | bool] = field(default_factory=dict)
    # share embedding (and output) rows across codec ids by the codec's ``id_factors`` (the pixel VQ: the
    # token colour and each FSQ digit), training only: saved runs hold the computed rows (panglot.nn.factored_rows)
    code_factors: bool = False
    # also a learned linear map of what each image id looks like (``code_looks``: the mean foreground mask of
    # the patches its code covers in training images) in its embedding and output rows; training only
    code_features: bool = False
    # learned row and column embeddings for the image tokens by their place in the codec's token grid
    # (the backbone's span positions; TransformerConfig)
    span_positions: bool = False
    # where VQA documents and prompts put the question: image_first | question_first (SequenceLayout; run.json)
    vqa_order: str = "image_first"
    # VQA answers follow a caption the model writes first (SequenceLayout.vqa_describe; run.json)
    vqa_describe: bool = False


def span_positions(vocab: UnifiedVocab, codec: nn.Module, image_slot: str = "image") -> dict[str, int]:
    """The backbone config fields (``TransformerConfig`` span positions) that give the image slot's ids learned
    row and column embeddings on the codec's token grid (``codec.token_grid``)."""
    slot = vocab.slot(image_slot)
    if codec.is_continuous:
        raise ValueError(f"span positions need a discrete codec; {codec.kind} is continuous")
    rows, cols = codec.token_grid
    return {"span_start": slot.offset, "span_end": slot.offset + codec.vocab_size, "span_rows": rows, "span_cols": cols}


@torch.no_grad()
def code_looks(codec: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """What each id looks like: (vocab_size, cell * cell), the mean foreground (non-white) mask of the image
    patches its learned code covers in ``images`` (B, 3, S, S); ids that join one code with something fixed
    (the pixel VQ's colour split) share their code's look, so a colour-shape pair never seen still gets its
    shape's look; codes never seen look blank. Needs a codec whose tokens tile the image (``token_grid``)."""
    rows, cols = codec.token_grid
    size = images.shape[-1]
    if rows * cols != codec.tokens_per_item or size % rows or size % cols:
        raise ValueError(f"code_looks needs tokens that tile the image; {codec.kind} has a {rows} x {cols} grid")
    ch, cw = size // rows, size // cols
    sums = torch.zeros(codec.codebook_size, ch * cw)
    counts = torch.zeros(codec.codebook_size)
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(codec.device)
        codes = codec.codebook_ids(codec.encode_tensor(x)).flatten().cpu()  # (B * N,)
        fg = (x < 0.99).any(dim=1).float().cpu()  # (B, S, S)
        patches = fg.view(len(x), rows, ch, cols, cw).permute(0, 1, 3, 2, 4).reshape(-1, ch * cw)
        sums.index_add_(0, codes, patches)
        counts.index_add_(0, codes, torch.ones_like(codes, dtype=torch.float32))
    looks = sums / counts.clamp_min(1.0)[:, None]
    ids = torch.arange(codec.vocab_size)
    n = codec.tokens_per_item
    padded = torch.cat([ids, ids.new_zeros(-len(ids) % n)]).view(-1, n)  # codebook_ids takes (B, N) rows
    return looks[codec.codebook_ids(padded).flatten()[: len(ids)].cpu()]


class UnifiedModel(nn.Module):
    """Backbone over the unified vocabulary, with the codec that turns images into its tokens.

    The codec is held but not trained here (its weights are frozen and saved apart); the backbone is
    what the unified recipes train.
    """

    def __init__(
        self,
        backbone: nn.Module,
        vocab: UnifiedVocab,
        codec: nn.Module,
        image_slot: str = "image",
        **layout: str | bool,
    ):
        """``layout``: the ``SequenceLayout`` switches (``vqa_order``, ``vqa_describe``); its defaults otherwise."""
        super().__init__()
        self.backbone = backbone
        self.vocab = vocab
        self.layout = SequenceLayout(vocab, image_slot, **layout)
        self.image_slot = image_slot
        self.codec = codec
        self.codec.requires_grad_(False)
        self.codec.eval()

    def factor_code_rows(self, factors: bool = True, looks: torch.Tensor | None = None) -> int:
        """Let the image codec's ids share embedding rows (and output rows, when untied) through
        ``codec.id_factors()`` and, with ``looks`` (vocab_size, F) (``code_looks``), a learned linear map of
        each id's look; returns the number of factors, plus 1 for the looks (0: nothing changes)."""
        factors = self.codec.id_factors() if factors else []
        if not factors and looks is None:
            return 0
        start = self.vocab.slot(self.image_slot).offset
        looks = None if looks is None else looks.to(self.device)
        factor_rows(self.backbone.tok_embeddings, start, factors, features=looks)
        if self.backbone.output is not None:
            factor_rows(self.backbone.output, start, factors, features=looks)
        return len(factors) + (looks is not None)

    def train(self, mode: bool = True) -> UnifiedModel:
        super().train(mode)
        self.codec.eval()  # the codec stays in eval mode (no quantizer updates)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.backbone(tokens, **kwargs)

    def loss(
        self, batch: dict[str, torch.Tensor], task_shares: Mapping[str, float] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted next-token cross-entropy over a padded or a packed batch; metrics per task.

        Padded (``collate``): ``tokens``/``weights`` (B, T), ``task`` (B,). Packed
        (``panglot.data.packing.collate_packed``): ``tokens``/``weights``/``doc``/``task`` (B, T); attention
        and positions stay inside each document and no target crosses a boundary. Both give the same
        numbers for the same documents: the loss is ``sum(weight * nll) / sum(weight)`` over every target
        token, and ``loss_<task>`` is the mean over that task's documents of each document's mean nll
        over its weighted tokens.

        ``task_shares`` (task -> share): the loss is instead ``sum_t share_t * mean_t / sum_t share_t`` over the
        tasks in the batch, ``mean_t`` the weighted mean over task ``t``'s target tokens, so each task's share of
        the gradient is set, not its count of tokens (a drawing's 65 targets against an answer's 2: by token, VQA
        gets ~2 % of the quickstart's loss). Tasks it does not name count for nothing.
        """
        tokens, weights = batch["tokens"], batch["weights"]
        b, t = tokens.shape
        targets, w = tokens[:, 1:], weights[:, 1:].float()  # (B, T-1)
        if "doc" in batch:
            doc = batch["doc"]
            hidden = self.backbone.forward_hidden(tokens[:, :-1], document_ids=doc[:, :-1])  # (B, T-1, D)
            w = w * (doc[:, 1:] == doc[:, :-1])
            document = doc[:, 1:] + t * torch.arange(b, device=doc.device)[:, None]  # unique in the batch
            task = batch["task"][:, 1:]
        else:
            hidden = self.backbone.forward_hidden(tokens[:, :-1])
            document = torch.arange(b, device=tokens.device)[:, None].expand(b, t - 1)
            task = batch["task"][:, None].expand(b, t - 1)
        # Logits only where a target counts (about 45 % of a packed batch's positions: prompts, the images read
        # by captions and questions, row tails carry no loss): the output projection, the fp32 log-softmax
        # and their backward skip the rest (docs/benchmarks.md "Unified training step").
        counted = w > 0
        rows = counted_rows(counted)  # (N + padding,): the counted positions, then position 0 repeated
        n = int(counted.sum())
        logits = self.backbone.logits(hidden.flatten(0, 1)[rows])  # (N + padding, V)
        nll = F.cross_entropy(logits.float(), targets.flatten()[rows], reduction="none")[:n]  # (N,)
        if task_shares is None:
            loss = (nll * w[counted]).sum() / w.sum().clamp_min(1.0)
        else:
            loss = shared_loss(nll * w[counted], w[counted], task[counted], task_shares)
        with torch.no_grad():
            metrics = task_losses(nll, document[counted], task[counted], n_documents=b * t)
        return loss, metrics


    def caption_logprob(self, codes: torch.Tensor, captions: Sequence[Sequence[int]]) -> torch.Tensor:
        """``log p(caption, <eos> | <bos> <caption> image)`` per row, summed over the caption's tokens: how readily
        the model's own captioner reads each image (codec ids, (N, tokens per image)) as that caption (text ids).
        The self-assessment score that ``Panglot.draw`` ranks its candidates by. (N,) float32."""
        self._check_pairs(codes, captions, "caption_logprob")
        return self._target_logprob([self.layout.caption(row.tolist(), c) for row, c in zip(codes, captions)])

    def image_logprob(self, codes: torch.Tensor, captions: Sequence[Sequence[int]]) -> torch.Tensor:
        """``log p(image, <eoi>, <eos> | <bos> <t2i> caption <boi>)`` per row, summed over the image's tokens: how
        readily the model would draw each image (codec ids) from that caption (text ids), analysis by synthesis:
        the score ``Panglot.caption`` ranks its candidate captions by. (N,) float32."""
        self._check_pairs(codes, captions, "image_logprob")
        return self._target_logprob([self.layout.t2i(c, row.tolist()) for row, c in zip(codes, captions)])

    @staticmethod
    def _check_pairs(codes: torch.Tensor, captions: Sequence[Sequence[int]], what: str) -> None:
        if len(codes) != len(captions):
            raise ValueError(f"{what} needs one caption per image: {len(codes)} images, {len(captions)} captions")

    @torch.inference_mode()
    def _target_logprob(self, docs: list[TaskSequence]) -> torch.Tensor:
        """Each document's summed log-likelihood of its weighted (target) tokens, one teacher-forced forward."""
        if not docs:
            return torch.empty(0)
        batch = collate(docs, self.vocab.special("<pad>"))
        tokens, weights = batch["tokens"].to(self.device), batch["weights"][:, 1:].to(self.device)
        logits = self.backbone.logits(self.backbone.forward_hidden(tokens[:, :-1])).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        return (logp * weights).sum(dim=1).cpu()

# The counted positions' count changes from batch to batch, and the CPU's bf16 matrix products (oneDNN) build a
# kernel for every new shape they meet: ~15 ms for the output projection's backward alone, three such products
# per step, so that unpadded nearly every training step paid 30-45 ms for shapes it had not seen (docs/benchmarks.md
# "Unified training step"). Rounded up to a multiple of this, a run meets a few dozen shapes.
LOGIT_ROWS_MULTIPLE = 64


def counted_rows(counted: torch.Tensor, multiple: int = LOGIT_ROWS_MULTIPLE) -> torch.Tensor:
    """counted (B, T) bool -> flat indices (B*T) of its True positions in order, padded with index 0 up to a multiple
    of ``multiple``: the rows to project to logits, of which the first ``counted.sum()`` are the counted ones."""
    rows = counted.flatten().nonzero().squeeze(1)
    padding = -len(rows) % multiple
    return torch.cat([rows, rows.new_zeros(padding)]) if padding else rows


def shared_loss(
    weighted_nll: torch.Tensor, weights: torch.Tensor, task: torch.Tensor, shares: Mapping[str, float]
) -> torch.Tensor:
    """``sum_t share_t * mean_t / sum_t share_t`` over the tasks present, ``mean_t = sum(w * nll) / sum(w)`` over task
    ``t``'s target tokens (all (N,); ``task`` indexes ``TASKS``). The shares of tasks absent from the batch are
    left out, so the loss keeps its scale."""
    unknown = sorted(set(shares) - set(TASKS))
    if unknown:
        raise ValueError(f"task_shares names unknown tasks {unknown}; tasks are {list(TASKS)}")
    share = torch.tensor([float(shares.get(name, 0.0)) for name in TASKS], device=task.device)
    sums = weighted_nll.new_zeros(len(TASKS)).index_add_(0, task, weighted_nll)
    totals = weights.new_zeros(len(TASKS)).index_add_(0, task, weights)
    present = (totals > 0) & (share > 0)
    if not present.any():
        return weighted_nll.sum() * 0.0
    means = sums[present] / totals[present]
    return (share[present] * means).sum() / share[present].sum()


def task_losses(nll: torch.Tensor, document: torch.Tensor, task: torch.Tensor, n_documents: int) -> dict[str, float]:
    """``loss_<task>``: mean over the task's documents of the mean ``nll`` over each one's counted tokens.

    nll (N,) float, document (N,) long in [0, n_documents), task (N,) long (index in ``TASKS``): one entry per
    counted target token.
    """
    sums = nll.new_zeros(n_documents).index_add_(0, document, nll)
    counts = nll.new_zeros(n_documents).index_add_(0, document, torch.ones_like(nll))
    doc_task = torch.full((n_documents,), -1, dtype=torch.long, device=task.device).scatter_(
        0, document, task
    )
    per_document = sums / counts.clamp_min(1.0)
    return {
        f"loss_{name}": float(per_document[doc_task == i].mean())
        for i, name in enumerate(TASKS)
        if (doc_task == i).any()
    }


def collate(docs: list[TaskSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad documents into a batch: ``tokens`` (B, T) long, ``weights`` (B, T), ``task`` (B,).

    Right padding keeps the fast causal attention path; padded positions carry zero loss weight.
    """
    longest = max(len(d) for d in docs)
    tokens = torch.full((len(docs), longest), pad_id, dtype=torch.long)
    weights = torch.zeros((len(docs), longest), dtype=torch.float32)
    for row, doc in enumerate(docs):
        tokens[row, : len(doc)] = torch.tensor(doc.tokens)
        weights[row, : len(doc)] = torch.tensor(doc.weights)
    task = torch.tensor([TASKS.index(d.task) for d in docs], dtype=torch.long)
    return {"tokens": tokens, "weights": weights, "task": task}
