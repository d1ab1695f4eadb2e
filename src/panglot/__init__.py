"""panglot: unified autoregressive multimodal models over text, image, video and speech tokens."""

__version__ = "0.1.0"
