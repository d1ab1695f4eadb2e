"""The one place that decides device and dtype.

Everything else asks here instead of picking its own: `default_device()` for where tensors live,
`resolve_device(name)` to check a device a user named, `resolve_dtype(name)` to turn a config string into a
`torch.dtype`, and `autocast_context(device, dtype)` for mixed precision (bf16 autocast works on CPU as well as
CUDA). Nothing here changes global state.

``"auto"`` (the default of every recipe) is bf16 where the device multiplies bf16 natively and fp32 elsewhere
(`fast_bf16`): a CPU with AMX or AVX-512 BF16 runs bf16 matrix products ~4x faster than fp32, while one without
(AVX2-only x86, e.g. AMD Zen 2/3) emulates them, ~30x *slower* than fp32 (docs/benchmarks.md "bf16 without
native support").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import time

import torch

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


PRECISIONS = ("auto", *_DTYPES)  # what a config's ``precision`` / a ``dtype`` argument may name


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (so bf16 pays): CUDA when the GPU supports bf16; an
    x86 CPU when it has AMX tiles or AVX-512 BF16 (torch's own CPU feature checks); another CPU (ARM, say) when
    a small bf16 matrix product is timed faster than the fp32 one; never MPS. Decided once per device type."""
    return _fast_bf16(torch.device(device).type)


@functools.cache
def _fast_bf16(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and all(checks):
        return any(check() for check in checks)
    return _bf16_timed_faster()


def _bf16_timed_faster(size: int = 256, repeats: int = 8) -> bool:
    """The best of ``repeats`` bf16 products of two (size, size) matrices against the fp32 one (a few ms)."""
    a = torch.randn(size, size)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # first call: kernel selection
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            x @ x
            best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return times[torch.bfloat16] < times[torch.float32]


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


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """Map "auto" | "bf16" | "fp32" | "fp16" (or their long names, or a torch.dtype) to a floating torch.dtype;
    "auto" is bf16 where ``device`` runs it natively (`fast_bf16`), else fp32."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"expected a floating-point dtype, got {dtype}")
        return dtype
    if dtype.lower() == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(PRECISIONS)}") from None


def warn_if_slow_bf16(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> None:
    """Log a warning when bf16 was asked for by name on a device that emulates it (``"auto"`` never is)."""
    if resolve_dtype(dtype, device) == torch.bfloat16 and not fast_bf16(device):
        logger.warning(
            "bf16 on %s: this device has no native bf16 matrix products, so they run emulated (on an AVX2-only "
            "CPU ~30x slower than fp32); precision 'auto' picks fp32 here", torch.device(device).type,
        )  # fmt: skip


def autocast_context(
    device: str | torch.device, dtype: str | torch.dtype
) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for `device`: a no-op for fp32 (and for "auto" where bf16 does not pay),
    `torch.autocast` otherwise."""
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
