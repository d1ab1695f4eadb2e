"""panglot: unified autoregressive multimodal models over text, image, video and speech tokens.

``panglot.load(run_dir)`` returns the Python API (:class:`panglot.pipeline.Panglot`): ``draw``, ``caption``,
``ask`` and ``codec``. Heavy modules are imported on first use, so ``import panglot`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    if name == "load":
        from panglot.pipeline import load

        return load
    raise AttributeError(f"module 'panglot' has no attribute {name!r}")
