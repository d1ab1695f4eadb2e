"""UnifiedModel = decoder-only backbone + codecs + the unified vocabulary: one model that captions,
answers questions and draws (the CM3Leon / Chameleon core)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from panglot.multimodal import TASKS, SequenceLayout, TaskSequence, UnifiedVocab


@dataclass
class UnifiedModelConfig:
    """Backbone size by name plus overrides of its fields (``dim``, ``n_layers`` ...). Per-task loss weights
    are data (``MixtureConfig.loss_weights``): each document carries its weights."""

    size: str = "small"
    overrides: dict[str, int | float | bool] = field(default_factory=dict)


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
        """Weighted next-token cross-entropy over a padded batch; metrics per task."""
        tokens, weights, task = batch["tokens"], batch["weights"], batch["task"]  # (B, T), (B, T), (B,)
        logits = self.backbone(tokens[:, :-1])  # (B, T-1, V)
        targets, w = tokens[:, 1:], weights[:, 1:].float()
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
        loss = (nll * w).sum() / w.sum().clamp_min(1.0)
        metrics = {}
        with torch.no_grad():
            per_row = (nll * (w > 0)).sum(1) / (w > 0).sum(1).clamp_min(1)
            for i, name in enumerate(TASKS):
                rows = task == i
                if rows.any():
                    metrics[f"loss_{name}"] = float(per_row[rows].mean())
        return loss, metrics


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
