"""Training recipes: one flat, readable script per stage. The library never imports these."""
