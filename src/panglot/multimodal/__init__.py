"""Unified vocabulary (codec ids <-> LM ids, boi/eoi spans) and the sequence layout of every task."""

from panglot.multimodal.layout import TASKS, SequenceLayout, TaskSequence
from panglot.multimodal.vocab import ModalitySlot, PlaceholderError, UnifiedVocab

__all__ = ["TASKS", "ModalitySlot", "PlaceholderError", "SequenceLayout", "TaskSequence", "UnifiedVocab"]
