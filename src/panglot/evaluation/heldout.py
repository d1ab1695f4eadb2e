"""Held-out loss: a unified model's next-token loss per task on documents of scenes it never trained on.

The suite's figures count oracle-judged samples, 50 per cell, and move by 10-25 points from seed to seed at the
quickstart's length; the mean loss over a few hundred held-out documents moves by about 1 % (three 1533-step
runs on one codec, two with other switches: t2i 0.804 / 0.811 / 0.812), so it separates recipes that the suite's
cells cannot. The documents are the training mixture's (``WorldMixture``, hence the same layout as training),
one per scene and task, canonical captions, no condition dropout, one question per VQA document; computed in
fp32, so the figure is the same on every run of the same weights.
"""

from __future__ import annotations

import torch

from panglot.data.mixture import MixtureConfig, WorldMixture, encode_scenes
from panglot.model.unified import UnifiedModel, collate
from panglot.multimodal import IMAGE_TASKS, TASKS
from panglot.world.dataset import split_scenes

HELDOUT_SCENES = 600  # ~50 k t2i tokens, ~10 s on 2 CPU threads for the quickstart's model


@torch.no_grad()
def heldout_loss(
    model: UnifiedModel,
    split: str = "val",
    n_scenes: int = HELDOUT_SCENES,
    seed: int = 0,
    tasks: tuple[str, ...] = IMAGE_TASKS,
    batch_size: int = 50,
    vqa_description: str = "caption",
) -> dict[str, float]:
    """``{task: mean next-token loss over the task's target tokens}`` on one document per scene of ``split``'s
    first ``n_scenes`` scenes (``split_scenes(split, n_scenes, seed)``), per task in ``tasks``; a describing model's
    VQA documents (``vqa``, ``vqa_text``) carry the description its run was trained on (``data.vqa_description``),
    their marks weighing as words."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    was_training = model.training
    model.eval()
    scenes = split_scenes(split, n_scenes, seed)
    codes = encode_scenes(model.codec, scenes)
    pad_id = model.vocab.special("<pad>")
    out = {}
    try:
        for task in tasks:
            mixture_cfg = MixtureConfig(
                n_scenes=n_scenes, task_probs={task: 1.0}, paraphrase_prob=0.0, cond_dropout=0.0, seed=seed,
                vqa_description=vqa_description,
            )
            docs = WorldMixture(mixture_cfg, model.layout, model.vocab.text, scenes, codes, docs_per_scene=1)
            total = weight = 0.0
            for start in range(0, len(docs), batch_size):
                batch = collate([docs[i] for i in range(start, min(start + batch_size, len(docs)))], pad_id)
                batch = {k: v.to(model.device) for k, v in batch.items()}
                loss, _ = model.loss(batch)  # sum(weight * nll) / sum(weight) over the batch's targets
                w = float(batch["weights"][:, 1:].sum())
                total += float(loss) * w
                weight += w
            out[task] = total / weight
    finally:
        model.train(was_training)
    return out
