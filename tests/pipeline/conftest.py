"""A tiny trained unified run (debug backbone, small untrained pixel VQ codec), shared by the pipeline tests."""

from __future__ import annotations

import pytest
import torch

from panglot.codecs.image_vq.model import PixelVQ, PixelVQConfig
from panglot.config import load_config
from recipes import train_unified


def debug_recipe(root, *overrides: str) -> train_unified.UnifiedRecipe:
    """The debug run's recipe (``root/run``) over a small untrained pixel VQ codec it saves in ``root/codec``."""
    torch.manual_seed(0)
    PixelVQ(PixelVQConfig(channels=[16, 32], latent_dim=16, codebook_size=64)).save(root / "codec")
    return load_config(
        train_unified.UnifiedRecipe,
        None,
        [
            f"out_dir={root / 'run'}",
            f"codec_dir={root / 'codec'}",
            "model.size=debug",
            "data.n_scenes=64",
            "tokenizer_scenes=200",
            "batch_size=8",
            "train.max_steps=30",
            "train.log_every=5",
            "train.ckpt_every=0",
            "train.optim.lr=3e-3",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("debug_run")
    run_on_one_thread(debug_recipe(root))
    return root / "run"


def run_on_one_thread(cfg: train_unified.UnifiedRecipe) -> None:
    """``train_unified.run(cfg)`` on one torch thread (debug sizes gain nothing from more), restoring the count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_unified.run(cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def run_unified():
    """``run_unified(cfg)``: a unified recipe trained on one torch thread."""
    return run_on_one_thread


@pytest.fixture
def debug_config():
    """``debug_config(root, *overrides)``: the debug run's recipe (`debug_recipe`)."""
    return debug_recipe
