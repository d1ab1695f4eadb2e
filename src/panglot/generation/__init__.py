"""Decoding from small parts: a loop, logits processors, classifier-free guidance and samplers."""

from panglot.generation.decode import CausalLM, generate, left_pad
from panglot.generation.guidance import ClassifierFreeGuidance
from panglot.generation.processors import (
    AllowOnly,
    DecodeState,
    FollowText,
    Forbid,
    LogitsProcessor,
    ModalityConstraint,
    ProcessorList,
    Temperature,
    TopK,
    TopP,
    modality_constraints,
)
from panglot.generation.sampling import Greedy, Multinomial, Sampler, sample_inverse_cdf

__all__ = [
    "AllowOnly",
    "CausalLM",
    "ClassifierFreeGuidance",
    "DecodeState",
    "FollowText",
    "Forbid",
    "Greedy",
    "LogitsProcessor",
    "ModalityConstraint",
    "Multinomial",
    "ProcessorList",
    "Sampler",
    "Temperature",
    "TopK",
    "TopP",
    "generate",
    "left_pad",
    "modality_constraints",
    "sample_inverse_cdf",
]
