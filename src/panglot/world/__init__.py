"""ShapesWorld: scenes, language, renderer, oracle (see shared/specs/shapesworld.md)."""
