"""Helpers for linear layers."""

from __future__ import annotations

import torch
from torch import nn


def stack_linears(*linears: nn.Linear) -> nn.Linear:
    """One Linear whose output is the outputs of `linears` (same input size) side by side.

    For inference copies: one matmul instead of several; the parameters are new tensors, without
    gradients.
    """
    weight = torch.cat([linear.weight for linear in linears]).detach()  # (sum of out, in)
    has_bias = linears[0].bias is not None
    stacked = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
    stacked.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        stacked.bias = nn.Parameter(
            torch.cat([linear.bias for linear in linears]).detach(), requires_grad=False
        )
    return stacked
