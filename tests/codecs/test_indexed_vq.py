"""IndexedCodebook: the library's codebook step by index gives what the library's one-hot step gives."""

import copy

import pytest
import torch
from vector_quantize_pytorch import VectorQuantize

from panglot.codecs.indexed_vq import IndexedCodebook, index_codebook_updates


def _pair(**kwargs) -> tuple[VectorQuantize, VectorQuantize]:
    """The library's quantizer and an indexed copy of it (same weights and buffers)."""
    torch.manual_seed(0)
    settings = dict(dim=24, codebook_size=64, codebook_dim=8, kmeans_init=True, decay=0.9,
                    threshold_ema_dead_code=1.0, commitment_weight=0.25)  # fmt: skip
    library = VectorQuantize(**{**settings, **kwargs})
    return library, index_codebook_updates(copy.deepcopy(library))


def _step(vq: VectorQuantize, z: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # k-means init and dead-code replacement draw random samples
    z = z.clone().requires_grad_(True)
    codes, ids, loss = vq(z)
    (codes.square().sum() + loss).backward()
    return codes.detach(), ids, loss.detach(), z.grad, vq.project_in.weight.grad.clone()


@pytest.mark.parametrize("cosine", [True, False])
def test_indexed_steps_equal_the_librarys(cosine):
    library, indexed = _pair(use_cosine_sim=cosine)
    assert type(indexed._codebook) is IndexedCodebook and type(library._codebook) is not IndexedCodebook
    for vq in (library, indexed):
        vq.train()
    assert indexed._codebook._indexed(None, None, None, False, None)  # this case takes the indexed path
    torch.manual_seed(1)
    batches = [torch.randn(4, 16, 24) * (1 + i) for i in range(4)]  # moving inputs: codes die and are replaced
    for step, z in enumerate(batches):
        ours, theirs = _step(indexed, z, step), _step(library, z, step)
        assert torch.equal(ours[1], theirs[1])  # the same codes chosen
        for a, b in zip(ours[:1] + ours[2:], theirs[:1] + theirs[2:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for name in ("embed", "embed_avg", "cluster_size", "initted"):
            torch.testing.assert_close(getattr(indexed._codebook, name), getattr(library._codebook, name),
                                       rtol=1e-5, atol=1e-6)  # fmt: skip
        library.zero_grad(), indexed.zero_grad()
    library.eval(), indexed.eval()
    z = torch.randn(2, 16, 24)
    assert torch.equal(indexed(z)[1], library(z)[1])  # eval: the library's own path


def test_cases_it_does_not_cover_go_to_the_librarys_code():
    library, indexed = _pair(use_cosine_sim=True, stochastic_sample_codes=True, sample_codebook_temp=0.5)
    indexed.train(), library.train()
    z = torch.randn(3, 16, 24)
    ours, theirs = _step(indexed, z, 0), _step(library, z, 0)
    assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[0], theirs[0])  # the same random draws
    assert not indexed._codebook._indexed(None, None, None, False, None)
    with pytest.raises(TypeError, match="expected the library's Codebook"):
        index_codebook_updates(indexed)
