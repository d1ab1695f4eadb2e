"""``vector-quantize-pytorch``'s codebook, with its training step done by index instead of by dense one-hots.

In training mode the library's ``Codebook.forward`` builds an (N, K) one-hot of the chosen codes (an int64
``F.one_hot``, then a float copy), takes the quantized vectors as a product of that one-hot with the codebook, and
sums the EMA statistics as another product with it. For K = 8192 codes and N = 512 vectors (the layout Q-Former's
batch of 16 x 32 queries) that is two 16-33 MB tensors filled and two 134-MFLOP products per step: on a 2-core
CPU 56 ms forward + backward, against 25 ms for :class:`IndexedCodebook` (``benchmarks/codebook.py``), which
does the same step with an argmax, a gather, a ``bincount`` and an ``index_add_``, and keeps everything else of the
library (k-means init, the EMA rule, dead-code expiry, the outer ``VectorQuantize``'s projections, rotation trick
and commitment loss). Its results equal the library's (tested: the same ids and quantized vectors, the same
buffers after the update up to float summation order); a case it does not cover (masks, top-k, stochastic or
straight-through sampling, learnable or affine codebooks, a codebook transform) goes to the library's own code.

In a data-parallel group the library sums the EMA statistics over the processes (``sync_codebook``, on when the
codebook is built inside a group), but its dead-code replacement there re-seeds *every* dead code at each step from
samples drawn with replacement, where one process re-seeds at most as many as the batch has vectors, each from a
distinct one: with 8192 codes and 512 vectors a step, the group's codebook collapsed to ~10 % usage (one process:
80 %). :meth:`IndexedCodebook.replace` keeps one process's rule in a group: rank 0 replaces from every process's
samples (gathered) and the others take its result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import pack, rearrange, unpack
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import (
    Codebook,
    batched_sample_vectors,
    ema_inplace,
    sample_vectors_distributed,
)


class IndexedCodebook(Codebook):
    """The library's ``Codebook`` whose training-mode forward indexes instead of multiplying one-hots."""

    def _indexed(self, mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk) -> bool:
        sampling = getattr(self.gumbel_sample, "keywords", {})
        return (
            self.training
            and mask is None
            and codebook_transform_fn is None
            and ema_update_weight is None
            and not accum_ema_update
            and topk is None
            and not self.learnable_codebook
            and not self.affine_param
            and self.vq_bridge is None
            and not sampling.get("stochastic", False)
            and not sampling.get("straight_through", False)
        )

    def forward(
        self,
        x,
        sample_codebook_temp=None,
        mask=None,
        freeze_codebook=False,
        codebook_transform_fn=None,
        ema_update_weight=None,
        accum_ema_update=False,
        ema_update=None,
        topk=None,
        update_usage=True,
    ):
        if not self._indexed(mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk):
            return super().forward(
                x, sample_codebook_temp, mask, freeze_codebook, codebook_transform_fn, ema_update_weight,
                accum_ema_update, ema_update, topk, update_usage,
            )  # fmt: skip
        ema_update = self.ema_update if ema_update is None else ema_update
        needs_codebook_dim = x.ndim < 4
        x = x.float()
        if needs_codebook_dim:
            x = rearrange(x, "... -> 1 ...")
        flatten, shape = pack([x], "h * d")  # (H, N, d)
        self.init_embed_(flatten)
        embed = self.embed.detach().to(flatten.dtype)  # (H, K, d)
        if self.use_cosine_sim:
            dist = torch.einsum("h n d, h c d -> h n c", flatten, embed)
        else:
            dist = -torch.cdist(flatten, embed)
        ids = dist.argmax(dim=-1)  # (H, N)
        quantize = embed.gather(1, ids[..., None].expand(-1, -1, embed.shape[-1]))  # (H, N, d)
        if update_usage and not freeze_codebook and (ema_update or self.has_dead_code_replacement):
            self._update_by_index(flatten, ids, ema_update)
        (quantize,) = unpack(quantize, shape, "h * d")
        (ids,) = unpack(ids, shape, "h *")
        (dist,) = unpack(dist, shape, "h * c")
        if needs_codebook_dim:
            quantize, ids = quantize[0], ids[0]
        return quantize, ids, dist

    @torch.no_grad()
    def _update_by_index(self, flatten: torch.Tensor, ids: torch.Tensor, ema_update: bool) -> None:
        """``update_codebook`` with the one-hot's column sums as a ``bincount`` and its product with the inputs
        as an ``index_add_``."""
        heads, _, dim = flatten.shape
        cluster_size = torch.stack([torch.bincount(i, minlength=self.codebook_size) for i in ids]).to(flatten.dtype)
        self.all_reduce_fn(cluster_size)
        embed_sum = flatten.new_zeros(heads, self.codebook_size, dim)
        for h in range(heads):
            embed_sum[h].index_add_(0, ids[h], flatten[h])
        self.all_reduce_fn(embed_sum)
        ema_inplace(self.cluster_size, cluster_size, self.decay)
        ema_inplace(self.embed_avg, embed_sum, self.decay)
        if ema_update and not self.manual_ema_update:
            self.update_ema()
        self.expire_codes_(flatten)

    @torch.no_grad()
    def replace(self, batch_samples, batch_mask, seq_mask=None):
        """The library's dead-code replacement; in a group (``replace_sample_fn`` the library's distributed
        sampler) one process's rule over the group's samples: rank 0 replaces, every process takes its buffers."""
        if self.replace_sample_fn is not sample_vectors_distributed:
            return super().replace(batch_samples, batch_mask, seq_mask)
        if seq_mask is not None:
            raise NotImplementedError("dead-code replacement with a sequence mask in a process group")
        parts = [torch.empty_like(batch_samples) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, batch_samples.contiguous())
        if dist.get_rank() == 0:
            self.replace_sample_fn = batched_sample_vectors
            try:
                super().replace(torch.cat(parts, dim=1), batch_mask)
            finally:
                self.replace_sample_fn = sample_vectors_distributed
        for buffer in (self.embed, self.embed_avg, self.cluster_size):
            dist.broadcast(buffer.data, src=0)


def index_codebook_updates(vq: VectorQuantize) -> VectorQuantize:
    """``vq`` with its codebook's training step done by index (:class:`IndexedCodebook`); the same module,
    parameters and buffers (only the codebook's class changes, which adds no state)."""
    if type(vq._codebook) is not Codebook:
        raise TypeError(f"expected the library's Codebook, got {type(vq._codebook).__name__}")
    vq._codebook.__class__ = IndexedCodebook
    return vq


def cosine_ema_vq(
    dim: int, codebook_size: int, codebook_dim: int, decay: float, dead_code_threshold: float, commitment_weight: float
) -> VectorQuantize:
    """The codecs' learned codebook: cosine similarity in ``codebook_dim`` dimensions, k-means init, EMA updates,
    dead-code expiry, commitment loss (the library's), its training step by index."""
    return index_codebook_updates(
        VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            use_cosine_sim=True,
            kmeans_init=True,
            decay=decay,
            threshold_ema_dead_code=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
    )
