"""The mixed linear layer: its fused GEMMs as custom ops, its autograd Function and the choice of its paths.

It has two forward paths and two weight-gradient paths:
  forward "fused":   one Triton GEMM builds the W_eff tile from the copies in its weight-tile load (no W_eff in
                     memory; the RNG is redone per row tile, so it pays at small M); its input gradient is the same
                     kernel on the transposed weight.
  forward "combine": combine (W_eff in the compute dtype, kept for the backward), then torch's GEMM.
  dW "fused":        a Triton GEMM dY^T X whose epilogue writes the copies' gradients P_k * dW_eff.
  dW "scatter":      torch's GEMM for dW_eff, then scatter (the formula the cuda backend's mixed_linear shares:
                     majority_kernels._mixing_autograd).
A path can be forced (majority_kernels.paths: MK_LINEAR_PATH, MK_WGRAD_PATH, force_paths); otherwise the batch
size M decides, against the GPU's thresholds (majority_kernels.tuning: its measured table, else the unmeasured
defaults).
"""

import math
from typing import Optional

import torch
from torch import Tensor

from .. import _outputs as outputs
from .. import paths, tuning
from .._grad_accumulation import copies_gradient, remember_weight, remembered_weight
from .._mixing_autograd import linear_weight_grad
from ..triton_kernels import linear as linear_kernels
from ..triton_kernels import tiling
from ..triton_kernels import weight_grad as weight_grad_kernels
from ._registry import check_target, custom_op
from .mixing import combine, scatter, scatter_add_


@custom_op("mixed_matmul")
def _mixed_matmul(
    a: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int, transposed: bool
) -> Tensor:
    """a @ W_eff^T + bias (a [M, K] -> [M, N]), or a @ W_eff (transposed; a [M, N] -> [M, K]), for weight
    [e, N, K], in a's dtype, W_eff built inside the GEMM."""
    out = outputs.linear(a, weight, transposed)
    linear_kernels.mixed_matmul(
        a, weight.contiguous(), bias.contiguous() if bias is not None else None, seed, offset, transposed, out
    )
    return out


@_mixed_matmul.register_fake
def _(a, weight, bias, seed, offset, transposed):
    return outputs.linear(a, weight, transposed)


@custom_op("weight_grad")
def _weight_grad(
    grad_out: Tensor, input: Tensor, seed: Tensor, offset: int, expansion: int, out_dtype: torch.dtype
) -> Tensor:
    """Every copy's gradient P_k * (grad_out^T @ input) [expansion, N, K] from one GEMM (dW_eff never stored)."""
    out = outputs.weight_grad(grad_out, input, expansion, out_dtype)
    weight_grad_kernels.weight_grad(grad_out, input, seed, offset, out, accumulate=False)
    return out


@_weight_grad.register_fake
def _(grad_out, input, seed, offset, expansion, out_dtype):
    return outputs.weight_grad(grad_out, input, expansion, out_dtype)


@custom_op("weight_grad_add_", mutates_args=("grad_weight",))
def _weight_grad_add_(grad_weight: Tensor, grad_out: Tensor, input: Tensor, seed: Tensor, offset: int) -> None:
    """grad_weight[k] += P_k * (grad_out^T @ input), in place (gradient accumulation without a temporary)."""
    check_target(grad_weight)
    weight_grad_kernels.weight_grad(grad_out, input, seed, offset, grad_weight, accumulate=True)


@_weight_grad_add_.register_fake
def _(grad_weight, grad_out, input, seed, offset):
    return None


class _MixedLinear(torch.autograd.Function):
    """y = x @ W_eff^T + b on 2-D x, by the chosen paths (see the module docstring). Saved for the backward: x, the
    seed and, on the combine path, W_eff in the compute dtype. The fused path's input gradient reads the copies
    themselves: an eager leaf weight is remembered (no saved tensor, as the combine backward's), any other weight
    saved. Nothing is allocated for the backward but W_eff. The weight gradient is added into weight.grad in place
    when the backward accumulates (majority_kernels._grad_accumulation)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        seed: Tensor,
        offset: int,
        fused_forward: bool,
        fused_wgrad: bool,
    ) -> Tensor:
        remember_weight(ctx, weight)
        if fused_forward:
            out = _mixed_matmul(x, weight, bias, seed, offset, False)
            ctx.save_for_backward(x, seed, weight if remembered_weight(ctx) is None else None)
        else:
            mixed = combine(weight, seed, offset, x.dtype)
            out = torch.mm(x, mixed.t()) if bias is None else torch.addmm(bias, x, mixed.t())
            ctx.save_for_backward(x, seed, mixed)
        ctx.offset, ctx.fused_forward, ctx.fused_wgrad = offset, fused_forward, fused_wgrad
        ctx.expansion, ctx.weight_dtype = weight.shape[0], weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, seed, weight_or_mixed = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if ctx.fused_forward:
                weight = weight_or_mixed if weight_or_mixed is not None else remembered_weight(ctx)
                grad_x = _mixed_matmul(grad_out, weight, None, seed, ctx.offset, True)
            else:
                grad_x = torch.mm(grad_out, weight_or_mixed)
        if ctx.needs_input_grad[1]:
            remembered = remembered_weight(ctx)
            if ctx.fused_wgrad:
                grad_weight = copies_gradient(
                    remembered,
                    lambda target: _weight_grad_add_(target, grad_out, x, seed, ctx.offset),
                    lambda: _weight_grad(grad_out, x, seed, ctx.offset, ctx.expansion, ctx.weight_dtype),
                )
            else:
                grad_weight = linear_weight_grad(
                    scatter, scatter_add_, remembered, grad_out, x, seed, ctx.offset, ctx.expansion, ctx.weight_dtype
                )
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def linear_paths(m: int, dtype: torch.dtype, device: torch.device, expansion: int) -> tuple[str, str]:
    """(forward path, dW path) for an input of m rows in the compute dtype on `device`: the forced paths
    (majority_kernels.paths), else the device's M thresholds (tuning.for_device); never a fused path that
    the installed Triton cannot build for dtype (forcing one raises). One copy has nothing to mix: unforced, it
    takes the dense layer's own GEMMs, so that it computes what the dense layer does bit for bit."""
    forward, wgrad = paths.forced()
    if "fused" in (forward, wgrad):
        tiling.check_dot_dtype(dtype)
    fusable = tiling.dot_supports(dtype) and expansion > 1
    thresholds = tuning.for_device(device)
    forward = forward or ("fused" if fusable and m <= thresholds.triton_fused_forward_max_m else "combine")
    wgrad = wgrad or ("fused" if fusable and m <= thresholds.triton_fused_wgrad_max_m else "scatter")
    return forward, wgrad


def linear(
    input: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int, out_dtype: torch.dtype
) -> Tensor:
    """The mixed linear layer y = input @ W_eff^T + bias in the compute dtype out_dtype (input and bias are cast
    to it, as autocast would), on the paths linear_paths chooses for the input's row count."""
    x = input.to(out_dtype).reshape(math.prod(input.shape[:-1]), input.shape[-1])
    forward, wgrad = linear_paths(x.shape[0], out_dtype, weight.device, weight.shape[0])
    out = _MixedLinear.apply(
        x, weight, None if bias is None else bias.to(out_dtype), seed, offset, forward == "fused", wgrad == "fused"
    )
    return out.view(*input.shape[:-1], weight.shape[1])
