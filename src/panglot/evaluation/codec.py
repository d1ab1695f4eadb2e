"""What an image codec keeps: PSNR, codebook usage and the oracle-preserved rate (share of images whose
oracle-parsed scene survives encode -> decode), overall and by number of objects, and which attributes of the
objects it loses (the text-to-image attribute figures, read on the reconstructions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from panglot.codecs.base import ImageCodec, images_to_tensor, tensor_to_images
from panglot.evaluation.metrics import attribute_accuracy
from panglot.world.oracle import parse_images
from panglot.world.render import render_batch
from panglot.world.scene import Scene


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (B, H, W, 3); identical images count as 100 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


@torch.no_grad()
def evaluate_image_codec(
    codec: ImageCodec, scenes: Sequence[Scene], batch_size: int = 250
) -> dict[str, float | dict[str, float]]:
    """PSNR, usage (discrete codecs only: ``codebook_usage`` = share of the learned codebook's codes used on
    these images, ``id_usage`` = share of the vocabulary's ids; the same unless the codec's ids join a code
    with something fixed, as the pixel VQ's shape x colour split), oracle-preserved rate and the objects'
    ``attributes`` kept, of ``codec`` on the renders of ``scenes``."""
    codec.eval()
    used = torch.zeros(max(codec.vocab_size, 1), dtype=torch.bool)
    used_codes = torch.zeros(max(codec.codebook_size, 1), dtype=torch.bool)
    psnrs, kept, found, kept_by_n, attributes = [], [], [], {1: [], 2: [], 3: []}, []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        imgs = render_batch(chunk)
        ids = codec.encode_tensor(images_to_tensor(imgs).to(codec.device))
        if not codec.is_continuous:
            used[ids.flatten().cpu()] = True
            used_codes[codec.codebook_ids(ids).flatten().cpu()] = True
        recon = tensor_to_images(codec.decode_tensor(ids))
        psnrs.append(psnr(imgs, recon))
        for scene, parsed in zip(chunk, parse_images(recon)):
            kept.append(parsed == scene)
            found += [obj in parsed.objects for obj in scene.objects]
            kept_by_n[len(scene)].append(parsed == scene)
            attributes.append(attribute_accuracy(scene, parsed))
    out = {
        "n_images": len(scenes),
        "oracle_preserved": float(np.mean(kept)),
        "object_recall": float(np.mean(found)),  # share of objects the oracle still finds, every attribute
        "psnr_db": float(np.concatenate(psnrs).mean()),
        # per image, then averaged: share of objects whose matched reconstruction is right in each attribute,
        # ``object`` in all of them, ``count`` right number of objects (panglot.evaluation.metrics)
        "attributes": {k: float(np.mean([a[k] for a in attributes])) for k in attributes[0]},
    }
    if not codec.is_continuous:
        out["codebook_usage"] = float(used_codes.float().mean())
        out["id_usage"] = float(used.float().mean())
    out.update({f"oracle_preserved_{n}obj": float(np.mean(v)) for n, v in kept_by_n.items() if v})
    return out
