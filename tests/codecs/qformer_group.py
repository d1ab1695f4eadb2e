"""A process of a data-parallel group for the Q-Former codec's tests (module level: ``distributed.launch`` pickles
the function by name)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from panglot.codecs import load_codec
from panglot.codecs.base import images_to_tensor
from panglot.codecs.image_qformer import qformer_loss
from panglot.encoders import load_dual_encoder
from panglot.training import distributed
from panglot.world.dataset import split_scenes
from panglot.world.language import caption
from panglot.world.render import render_batch


def stage_one_step(codec_dir: Path, teacher_dir: Path, out_dir: Path, n: int) -> dict[str, torch.Tensor]:
    """One stage-1 loss and backward of ``codec_dir``'s codec on this process's share of ``n`` train scenes (all of
    them outside a group), the gradients averaged over the group; returns the gradients, the codebook's buffers
    after the step's EMA update and the loss, and (in a group) saves them to ``out_dir/rank{r}.safetensors``."""
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(0)  # rank 0 re-seeds dead codes from its RNG, as the one process does
    scenes = split_scenes("train", n, 0)[rank * n // world : (rank + 1) * n // world]
    codec = load_codec(codec_dir).train()
    teacher = load_dual_encoder(teacher_dir)
    captions = [caption(s) for s in scenes]
    with torch.no_grad():
        text = teacher.embed_texts(captions)
    loss, _ = qformer_loss(codec, images_to_tensor(render_batch(scenes)), text, captions, grid_weight=1.0, grid_loss="ce")
    loss.backward()
    params = [(name, p) for name, p in codec.named_parameters() if p.requires_grad]
    (mean_loss,) = distributed.average_gradients([p for _, p in params], [loss.item()])
    out = {f"grad.{name}": torch.zeros_like(p) if p.grad is None else p.grad for name, p in params}
    out |= {f"buffer.{name}": b.clone() for name, b in codec.codebook.named_buffers()}
    out["loss"] = torch.tensor(mean_loss)
    if world > 1:
        save_file({k: v.contiguous() for k, v in out.items()}, str(out_dir / f"rank{rank}.safetensors"))
    return out
