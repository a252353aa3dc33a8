"""The embedding gather (only the looked-up rows of the mixed table) and its in-place scatter-add as custom ops,
with their fakes and the gather's autograd (majority_kernels._mixing_autograd, shared with the C++ ops)."""

from typing import Optional

import torch
from torch import Tensor

from .. import _outputs as outputs
from .._mixing_autograd import embedding_autograd
from ..triton_kernels import embedding as embedding_kernels
from ._registry import check_target, custom_op

# The dtypes the scatter-add's atomics add into (bfloat16 and float16 atomics are not available everywhere).
_ATOMIC_DTYPES = (torch.float32, torch.float64)


@custom_op("embedding_combine")
def embedding_combine(
    weight: Tensor, indices: Tensor, seed: Tensor, offset: int, out_dtype: Optional[torch.dtype]
) -> Tensor:
    out = outputs.embedding_combine(weight, indices, out_dtype)
    embedding_kernels.gather(weight.contiguous(), indices.contiguous().view(-1), seed, offset, out)
    return out


@embedding_combine.register_fake
def _(weight, indices, seed, offset, out_dtype):
    return outputs.embedding_combine(weight, indices, out_dtype)


@custom_op("embedding_scatter_add_", mutates_args=("grad_weight",))
def embedding_scatter_add_(grad_weight: Tensor, grad: Tensor, indices: Tensor, seed: Tensor, offset: int) -> None:
    """grad_weight[k, indices[t]] += P_k * grad[t] in place, for a float32 or float64 table."""
    check_target(grad_weight)
    embedding_kernels.scatter_add(
        grad.contiguous().view(-1, grad.shape[-1]), indices.contiguous().view(-1), seed, offset, grad_weight
    )


@embedding_scatter_add_.register_fake
def _(grad_weight, grad, indices, seed, offset):
    return None


def _accumulator_dtype(grad_dtype: torch.dtype, weight_dtype: torch.dtype) -> torch.dtype:
    """A fresh table gradient accumulates in float64 where either side is float64, else in float32."""
    return torch.float64 if torch.float64 in (grad_dtype, weight_dtype) else torch.float32


_backward, _setup = embedding_autograd(
    embedding_combine, embedding_scatter_add_, accumulator_dtype=_accumulator_dtype, in_place_dtypes=_ATOMIC_DTYPES
)
embedding_combine.register_autograd(_backward, setup_context=_setup)
