"""The output tensor of each op, allocated in one place: by the Triton ops before their kernels run, and by the
fake kernels of every op (torch.compile, opcheck). The C++ ops allocate the same shapes and dtypes in C++."""

from typing import Optional

import torch
from torch import Tensor


def combine(weight: Tensor, out_dtype: Optional[torch.dtype]) -> Tensor:
    """W_eff: the dense shape, in out_dtype (default: the weight's)."""
    return weight.new_empty(weight.shape[1:], dtype=out_dtype or weight.dtype)


def scatter(grad: Tensor, expansion: int, out_dtype: Optional[torch.dtype]) -> Tensor:
    """Every copy's gradient: [expansion, *grad.shape], in out_dtype (default: grad's)."""
    return grad.new_empty((expansion, *grad.shape), dtype=out_dtype or grad.dtype)


def mixing_weights(seed: Tensor, expansion: int, numel: int) -> Tensor:
    """P, float32 [expansion, numel], on the seed's device."""
    return seed.new_empty((expansion, numel), dtype=torch.float32)


def embedding_combine(weight: Tensor, indices: Tensor, out_dtype: Optional[torch.dtype]) -> Tensor:
    """The looked-up rows of the mixed table [e, rows, dim]: [*indices.shape, dim]."""
    return weight.new_empty((*indices.shape, weight.shape[2]), dtype=out_dtype or weight.dtype)


def linear(input: Tensor, weight: Tensor, transposed: bool = False) -> Tensor:
    """input [M, K] @ W_eff^T -> [M, N] for weight [e, N, K]; transposed, input [M, N] @ W_eff -> [M, K]; in the
    input's dtype."""
    return input.new_empty((input.shape[0], weight.shape[1 + transposed]))


def weight_grad(grad_out: Tensor, input: Tensor, expansion: int, dtype: torch.dtype) -> Tensor:
    """Every copy's gradient of a linear layer: [expansion, N, K] for grad_out [M, N] and input [M, K]."""
    return input.new_empty((expansion, grad_out.shape[1], input.shape[1]), dtype=dtype)
