"""Shared fixtures: a small world tokenizer and a tiny (debug) dual encoder with fixed weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panglot.codecs.base import images_to_tensor
from panglot.codecs.text import train_world_tokenizer
from panglot.encoders import DualEncoder, DualEncoderConfig
from panglot.world import make_examples


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and spinning threads cost a lot on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def examples():
    return make_examples("train", 300, seed=0)


@pytest.fixture(scope="session")
def world_tokenizer(examples):
    return train_world_tokenizer([e.caption for e in examples] + [e.paraphrase for e in examples])


@pytest.fixture
def encoder(world_tokenizer):
    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig.debug(), world_tokenizer).eval()


@pytest.fixture(scope="session")
def images(examples):
    return images_to_tensor(np.stack([e.image for e in examples[:6]]))  # (6, 3, 64, 64)
