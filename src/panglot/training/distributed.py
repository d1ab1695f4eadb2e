"""Data parallelism over processes on one machine: torch.distributed's gloo backend, one CPU thread each.

Why processes and not threads: a CPU training step of panglot's small models spends much of its time in work one
thread does alone (Python, small kernels, the optimizer's loops), so a second intra-op thread buys little (the
unified step: 1.25x for 2 threads at 1.35x the CPU, docs/benchmarks.md). Two processes of one thread each, each
stepping over half the batch, and their gradients averaged, keep both cores busy for the whole step.

``launch(fn, processes, *args)`` runs ``fn(*args)`` in ``processes`` fresh processes (the spawn start method: a
forked child of a process that has run OpenMP can hang in its first parallel region) that form one process group
over loopback TCP. Inside, the helpers below read the group; outside one (``processes=1``, or any code run without
``launch``) they are the single-process identities, so the trainer and the recipes run the same code either way.

Why not ``DistributedDataParallel``: its gradient hooks are armed by the wrapped module's ``forward``, and panglot's
losses are model methods (``UnifiedModel.loss``) called by the recipe's loss function; the trainer instead averages
all gradients in one flat all-reduce after the backward pass (with one process per core there is no compute left
to overlap the communication with).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

logger = logging.getLogger(__name__)


def world_size() -> int:
    """Processes training together (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's place in the group (0 outside one); rank 0 writes checkpoints, logs and exports."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def average_gradients(params: Sequence[nn.Parameter], extra: Sequence[float] = ()) -> list[float]:
    """Average the gradients of ``params`` over the group in place, in one flat all-reduce, together with
    ``extra`` scalars (a step's loss, its token count); returns the group's means of ``extra``. A parameter
    without a gradient counts as zeros (on every process alike, so the group stays in step)."""
    world = world_size()
    if world == 1:
        return list(extra)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor(extra, dtype=torch.float32)])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(g.dtype)
        offset += n
    return flat[offset:].tolist()


def from_main(values: Sequence[int]) -> list[int]:
    """Rank 0's ``values`` (integers) on every process: the decisions one process makes for all (a re-fitted
    step count, a stop), so that no process runs a step the others do not."""
    if world_size() == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def slowest(seconds: float) -> float:
    """The largest of every process's ``seconds``: a step of the group takes as long as its slowest process."""
    if world_size() == 1:
        return seconds
    tensor = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (JSON-like data), in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` (each process the same shape), concatenated in rank order, on every process:
    a batch-wide term (an in-batch contrastive loss) sees the group's whole batch. This process's own rows keep
    their autograd graph; the others' are constants, so a loss over the result back-propagates into this process's
    rows only (`contrastive over the group` in the Q-Former codec's loss says how the gradient is scaled)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (as DDP does when it wraps a model)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def launch(
    fn: Callable[..., Any], processes: int, *args: Any, threads: int = 1, timeout_s: float = 1800.0
) -> None:  # fmt: skip
    """Run ``fn(*args)`` in ``processes`` new processes forming one gloo group over loopback, each with
    ``threads`` torch threads; returns when all have finished, and raises if any failed (the others are then
    stopped). ``fn`` and ``args`` must pickle (a module-level function; dataclass configs). A collective that
    waits ``timeout_s`` for a process raises instead of hanging. The children log as this process does (rank 0
    at its level, the others warnings only)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    root = logging.getLogger()
    fmt = next((h.formatter._fmt for h in root.handlers if h.formatter is not None), None)
    port = _free_port()
    args_ = (fn, args, processes, port, threads, timeout_s, root.level, fmt)
    mp.spawn(_entry, args=args_, nprocs=processes, join=True)


def _entry(
    rank_: int, fn: Callable[..., Any], args: Iterable[Any], world: int, port: int, threads: int, timeout_s: float,
    level: int, fmt: str | None,
) -> None:  # fmt: skip
    logging.basicConfig(level=level if rank_ == 0 else max(level, logging.WARNING), format=fmt)
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank_, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
