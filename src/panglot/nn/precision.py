"""The one place that decides device and dtype.

Everything else asks here instead of picking its own: `default_device()` for where tensors live,
`resolve_device(name)` to check a device a user named, `resolve_dtype(name)` to turn a config string into a
`torch.dtype`, and `autocast_context(device, dtype)` for mixed precision (bf16 autocast works on CPU as well as
CUDA). Nothing here changes global state.
"""

from __future__ import annotations

import contextlib

import torch

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(name: str | torch.device) -> torch.device:
    """A device a user named ("cpu", "cuda", "cuda:1", "mps"), checked here: one this machine lacks is a clear
    error now, not a failure deep inside the first forward."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; expected e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this machine has no CUDA device (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: this machine has no MPS device")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: panglot trains on 'cpu', 'cuda' or 'mps'")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map "bf16" | "fp32" | "fp16" (or their long names, or a torch.dtype) to a floating torch.dtype."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"expected a floating-point dtype, got {dtype}")
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


def autocast_context(
    device: str | torch.device, dtype: str | torch.dtype
) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for `device`: a no-op for fp32, `torch.autocast` otherwise."""
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
