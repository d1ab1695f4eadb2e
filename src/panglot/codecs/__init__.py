"""Codecs: one protocol (:mod:`panglot.codecs.base`) for every modality tokenizer."""

from panglot.codecs.base import (
    Codec,
    CodecLoadError,
    ImageCodec,
    codec_class,
    codec_kinds,
    images_to_tensor,
    load_codec,
    read_codec_meta,
    register_codec,
    tensor_to_images,
)

__all__ = [
    "Codec",
    "CodecLoadError",
    "ImageCodec",
    "codec_class",
    "codec_kinds",
    "images_to_tensor",
    "load_codec",
    "read_codec_meta",
    "register_codec",
    "tensor_to_images",
]
