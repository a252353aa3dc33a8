"""combine, scatter, scatter_add_ and mixing_weights as custom ops, with their fakes and autograd: combine and
scatter are each other's adjoint, their formulas shared with the C++ ops (majority_kernels._mixing_autograd)."""

from typing import Optional

import torch
from torch import Tensor

from .. import _outputs as outputs
from .. import tuning
from .._mixing_autograd import mixing_autograd
from ..triton_kernels import combine as combine_kernels
from ..triton_kernels import scatter as scatter_kernels
from ._registry import check_target, custom_op


@custom_op("combine")
def combine(weight: Tensor, seed: Tensor, offset: int, out_dtype: Optional[torch.dtype]) -> Tensor:
    out = outputs.combine(weight, out_dtype)
    combine_kernels.combine(weight.contiguous(), seed, offset, out, tuning.for_device(out.device).combine_block)
    return out


@combine.register_fake
def _(weight, seed, offset, out_dtype):
    return outputs.combine(weight, out_dtype)


@custom_op("scatter")
def scatter(grad: Tensor, seed: Tensor, offset: int, expansion: int, out_dtype: Optional[torch.dtype]) -> Tensor:
    out = outputs.scatter(grad, expansion, out_dtype)
    scatter_kernels.scatter(grad.contiguous(), seed, offset, out, False, tuning.for_device(out.device).scatter_block)
    return out


@scatter.register_fake
def _(grad, seed, offset, expansion, out_dtype):
    return outputs.scatter(grad, expansion, out_dtype)


@custom_op("scatter_add_", mutates_args=("grad_weight",))
def scatter_add_(grad_weight: Tensor, grad: Tensor, seed: Tensor, offset: int) -> None:
    check_target(grad_weight)
    scatter_kernels.scatter(
        grad.contiguous(), seed, offset, grad_weight, True, tuning.for_device(grad_weight.device).scatter_block
    )


@scatter_add_.register_fake
def _(grad_weight, grad, seed, offset):
    return None


@custom_op("mixing_weights")
def mixing_weights(seed: Tensor, offset: int, expansion: int, numel: int) -> Tensor:
    out = outputs.mixing_weights(seed, expansion, numel)
    scatter_kernels.mixing_weights(seed, offset, out, tuning.for_device(out.device).scatter_block)
    return out


@mixing_weights.register_fake
def _(seed, offset, expansion, numel):
    return outputs.mixing_weights(seed, expansion, numel)


for _op, (_backward, _setup) in zip((combine, scatter), mixing_autograd(combine, scatter, scatter_add_)):
    _op.register_autograd(_backward, setup_context=_setup)
