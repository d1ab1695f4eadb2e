"""Unified vocabulary (codec ids <-> LM ids, boi/eoi spans) and the sequence layout of every task."""

from panglot.multimodal.layout import IMAGE_TASKS, TASKS, SequenceLayout, TaskSequence
from panglot.multimodal.vocab import ModalitySlot, PlaceholderError, UnifiedVocab

__all__ = ["IMAGE_TASKS", "TASKS", "ModalitySlot", "PlaceholderError", "SequenceLayout", "TaskSequence", "UnifiedVocab"]
