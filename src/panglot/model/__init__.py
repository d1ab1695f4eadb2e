"""UnifiedModel = backbone + codecs + heads, and its builders."""

from panglot.model.unified import UnifiedModel, UnifiedModelConfig, collate

__all__ = ["UnifiedModel", "UnifiedModelConfig", "collate"]
