"""UnifiedModel = decoder-only backbone + codecs + the unified vocabulary: one model that captions,
answers questions and draws (the CM3Leon / Chameleon core)."""

from __future__ import annotations

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
    # learned row and column embeddings for the image tokens by their place in the codec's token grid
    # (the backbone's span positions; TransformerConfig)
    span_positions: bool = False


def span_positions(vocab: UnifiedVocab, codec: nn.Module, image_slot: str = "image") -> dict[str, int]:
    """The backbone config fields (``TransformerConfig`` span positions) that give the image slot's ids learned
    row and column embeddings on the codec's token grid (``codec.token_grid``)."""
    slot = vocab.slot(image_slot)
    if codec.is_continuous:
        raise ValueError(f"span positions need a discrete codec; {codec.kind} is continuous")
    rows, cols = codec.token_grid
    return {"span_start": slot.offset, "span_end": slot.offset + codec.vocab_size, "span_rows": rows, "span_cols": cols}


class UnifiedModel(nn.Module):
    """Backbone over the unified vocabulary, with the codec that turns images into its tokens.

    The codec is held but not trained here (its weights are frozen and saved apart); the backbone is
    what the unified recipes train.
    """

    def __init__(self, backbone: nn.Module, vocab: UnifiedVocab, codec: nn.Module, image_slot: str = "image"):
        super().__init__()
        self.backbone = backbone
        self.vocab = vocab
        self.layout = SequenceLayout(vocab, image_slot)
        self.image_slot = image_slot
        self.codec = codec
        self.codec.requires_grad_(False)
        self.codec.eval()

    def factor_code_rows(self) -> int:
        """Let the image codec's ids share embedding rows (and output rows, when untied) through
        ``codec.id_factors()``; returns the number of factors (0: the codec has none, nothing changes)."""
        factors = self.codec.id_factors()
        if not factors:
            return 0
        start = self.vocab.slot(self.image_slot).offset
        factor_rows(self.backbone.tok_embeddings, start, factors)
        if self.backbone.output is not None:
            factor_rows(self.backbone.output, start, factors)
        return len(factors)

    def train(self, mode: bool = True) -> UnifiedModel:
        super().train(mode)
        self.codec.eval()  # the codec stays in eval mode (no quantizer updates)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def forward(self, tokens: torch.Tensor, **kwargs) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.backbone(tokens, **kwargs)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted next-token cross-entropy over a padded or a packed batch; metrics per task.

        Padded (``collate``): ``tokens``/``weights`` (B, T), ``task`` (B,). Packed
        (``panglot.data.packing.collate_packed``): ``tokens``/``weights``/``doc``/``task`` (B, T); attention
        and positions stay inside each document and no target crosses a boundary. Both give the same
        numbers for the same documents: the loss is ``sum(weight * nll) / sum(weight)`` over every target
        token, and ``loss_<task>`` is the mean over that task's documents of each document's mean nll
        over its weighted tokens.
        """
        tokens, weights = batch["tokens"], batch["weights"]
        b, t = tokens.shape
        targets, w = tokens[:, 1:], weights[:, 1:].float()  # (B, T-1)
        if "doc" in batch:
            doc = batch["doc"]
            logits = self.backbone(tokens[:, :-1], document_ids=doc[:, :-1])  # (B, T-1, V)
            w = w * (doc[:, 1:] == doc[:, :-1])
            document = doc[:, 1:] + t * torch.arange(b, device=doc.device)[:, None]  # unique in the batch
            task = batch["task"][:, 1:]
        else:
            logits = self.backbone(tokens[:, :-1])
            document = torch.arange(b, device=tokens.device)[:, None].expand(b, t - 1)
            task = batch["task"][:, None].expand(b, t - 1)
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
        loss = (nll * w).sum() / w.sum().clamp_min(1.0)
        with torch.no_grad():
            metrics = task_losses(nll, w > 0, document, task, n_documents=b * t)
        return loss, metrics


def task_losses(
    nll: torch.Tensor, counted: torch.Tensor, document: torch.Tensor, task: torch.Tensor, n_documents: int
) -> dict[str, float]:
    """``loss_<task>``: mean over the task's documents of the mean ``nll`` over each one's counted tokens.

    nll (B, T) float, counted (B, T) bool, document (B, T) long in [0, n_documents), task (B, T) long
    (index in ``TASKS``; -1 = no document, e.g. a packed row's tail).
    """
    document, task, counted = document.reshape(-1), task.reshape(-1), counted.reshape(-1).float()
    sums = nll.new_zeros(n_documents).index_add_(0, document, nll.reshape(-1) * counted)
    counts = nll.new_zeros(n_documents).index_add_(0, document, counted)
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
