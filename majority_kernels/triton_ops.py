"""The Triton backend: the launchers of majority_kernels.triton_kernels as custom ops, their autograd, and the
linear layer's path choice.

Every kernel launch is a `torch.library.custom_op` in the `majority_kernels_triton` namespace with a fake kernel
(torch.compile, opcheck) and, where it is differentiable, an autograd formula that regenerates P from the same
(seed, offset): combine and scatter are each other's adjoint, as are the embedding gather and its scatter-add.
The seed is an int64 tensor on the weight's device read inside the kernels, so a step can be captured in a CUDA
graph (after a first, autotuning, call outside the capture). Inputs that are not contiguous are copied to
contiguous ones (the GEMMs take any strides for their activations); weights of every shape are flattened.

Dtypes: float32, bfloat16, float16 and float64 in and out. P is drawn in float32 math, in float64 where a
kernel reads or writes float64. Arguments are checked once, at the public boundary (majority_kernels.functional
through _validation); the ops here assume them checked, as the C++ kernels do (which keep cheap asserts).

The mixed linear layer has two forward paths and two weight-gradient paths:
  forward "fused":   one Triton GEMM builds the W_eff tile from the copies in its weight-tile load (no W_eff in
                     memory; the RNG is redone per row tile, so it pays at small M); its input gradient is the same
                     kernel on the transposed weight.
  forward "combine": combine (W_eff in the compute dtype, kept for the backward), then torch's GEMM.
  dW "fused":        a Triton GEMM dY^T X whose epilogue writes the copies' gradients P_k * dW_eff.
  dW "scatter":      torch's GEMM for dW_eff, then scatter.
A path can be forced (majority_kernels.paths: MK_LINEAR_PATH, MK_WGRAD_PATH, force_paths); otherwise the batch
size M decides, against the GPU's thresholds (majority_kernels.tuning: its measured table, else the unmeasured
defaults).

Convolutions run combine, then cuDNN; majority_kernels.experimental.fused_conv holds the prototype of the
alternative.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from . import _outputs as outputs
from . import paths, tuning
from ._grad_accumulation import copies_gradient, remember_weight, remembered_weight
from ._mixing_autograd import mixing_autograd
from .triton_kernels import INTERPRETING, tiling
from .triton_kernels import combine as combine_kernels
from .triton_kernels import embedding as embedding_kernels
from .triton_kernels import linear as linear_kernels
from .triton_kernels import scatter as scatter_kernels
from .triton_kernels import weight_grad as weight_grad_kernels

NAMESPACE = "majority_kernels_triton"


def unavailable(device: torch.device) -> Optional[str]:
    """None if the Triton kernels can run on `device` here, else why not."""
    if device.type == "cpu":
        if INTERPRETING:
            return None
        return ("Triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing "
                "majority_kernels (for tests; it is slow)")
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "torch sees no CUDA device"
    return f"backend 'triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not on {device}"


def _check_target(grad_weight: Tensor) -> None:
    if not grad_weight.is_contiguous():
        raise ValueError("grad_weight must be contiguous (it is updated in place)")


# ---- custom ops ----------------------------------------------------------------------------------------------

def custom_op(name: str, mutates_args: tuple[str, ...] = ()):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)


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
    _check_target(grad_weight)
    scatter_kernels.scatter(grad.contiguous(), seed, offset, grad_weight, True,
                            tuning.for_device(grad_weight.device).scatter_block)


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


@custom_op("embedding_combine")
def embedding_combine(weight: Tensor, indices: Tensor, seed: Tensor, offset: int,
                       out_dtype: Optional[torch.dtype]) -> Tensor:
    out = outputs.embedding_combine(weight, indices, out_dtype)
    embedding_kernels.gather(weight.contiguous(), indices.contiguous().view(-1), seed, offset, out)
    return out


@embedding_combine.register_fake
def _(weight, indices, seed, offset, out_dtype):
    return outputs.embedding_combine(weight, indices, out_dtype)


@custom_op("embedding_scatter")
def _embedding_scatter(grad: Tensor, indices: Tensor, seed: Tensor, offset: int, expansion: int, rows: int,
                       out_dtype: torch.dtype) -> Tensor:
    """The table gradient [expansion, rows, dim]: P_k * grad added into the looked-up rows, in a float32 (float64)
    buffer (atomics; bfloat16 atomics are not available everywhere), then cast to out_dtype."""
    accumulator = torch.float64 if torch.float64 in (grad.dtype, out_dtype) else torch.float32
    table = outputs.embedding_table(grad, expansion, rows, accumulator).zero_()
    embedding_kernels.scatter_add(grad.contiguous().view(-1, grad.shape[-1]), indices.contiguous().view(-1), seed,
                                  offset, table)
    return table.to(out_dtype)


@_embedding_scatter.register_fake
def _(grad, indices, seed, offset, expansion, rows, out_dtype):
    return outputs.embedding_table(grad, expansion, rows, out_dtype)


@custom_op("embedding_scatter_add_", mutates_args=("grad_weight",))
def _embedding_scatter_add_(grad_weight: Tensor, grad: Tensor, indices: Tensor, seed: Tensor, offset: int) -> None:
    """grad_weight[k, indices[t]] += P_k * grad[t] in place, for a float32 or float64 table."""
    _check_target(grad_weight)
    embedding_kernels.scatter_add(grad.contiguous().view(-1, grad.shape[-1]), indices.contiguous().view(-1), seed,
                                  offset, grad_weight)


@_embedding_scatter_add_.register_fake
def _(grad_weight, grad, indices, seed, offset):
    return None


@custom_op("mixed_matmul")
def _mixed_matmul(a: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int,
                  transposed: bool) -> Tensor:
    """a @ W_eff^T + bias (a [M, K] -> [M, N]), or a @ W_eff (transposed; a [M, N] -> [M, K]), for weight
    [e, N, K], in a's dtype, W_eff built inside the GEMM."""
    out = outputs.linear(a, weight, transposed)
    linear_kernels.mixed_matmul(a, weight.contiguous(), bias.contiguous() if bias is not None else None, seed,
                                offset, transposed, out)
    return out


@_mixed_matmul.register_fake
def _(a, weight, bias, seed, offset, transposed):
    return outputs.linear(a, weight, transposed)


@custom_op("weight_grad")
def _weight_grad(grad_out: Tensor, input: Tensor, seed: Tensor, offset: int, expansion: int,
                 out_dtype: torch.dtype) -> Tensor:
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
    _check_target(grad_weight)
    weight_grad_kernels.weight_grad(grad_out, input, seed, offset, grad_weight, accumulate=True)


@_weight_grad_add_.register_fake
def _(grad_weight, grad_out, input, seed, offset):
    return None


# ---- autograd ------------------------------------------------------------------------------------------------

# combine's and scatter's formulas are shared with the C++ ops (majority_kernels._mixing_autograd). The other
# backwards that produce a weight's gradient remember the weight as they do (majority_kernels._grad_accumulation):
# modifying it in place before the backward raises autograd's usual error, and when a .backward() accumulates,
# they add into its .grad in place instead of returning an expansion-sized temporary.

def _embedding_combine_setup(ctx, inputs, output):
    weight, indices, seed, offset, _ = inputs
    ctx.save_for_backward(indices, seed)
    remember_weight(ctx, weight)
    ctx.offset, ctx.table_shape, ctx.weight_dtype = offset, weight.shape, weight.dtype


def _embedding_combine_backward(ctx, grad):
    indices, seed = ctx.saved_tensors
    expansion, rows, _ = ctx.table_shape
    table = copies_gradient(
        remembered_weight(ctx), lambda target: _embedding_scatter_add_(target, grad, indices, seed, ctx.offset),
        lambda: _embedding_scatter(grad, indices, seed, ctx.offset, expansion, rows, ctx.weight_dtype),
        dtypes=(torch.float32, torch.float64))  # the in-place scatter's atomics
    return table, None, None, None, None


def _embedding_scatter_setup(ctx, inputs, output):
    grad, indices, seed, offset, _, _, _ = inputs
    ctx.save_for_backward(indices, seed)
    ctx.offset, ctx.grad_dtype = offset, grad.dtype


def _embedding_scatter_backward(ctx, grad_table):
    indices, seed = ctx.saved_tensors
    return (embedding_combine(grad_table, indices, seed, ctx.offset, ctx.grad_dtype),
            None, None, None, None, None, None)


for _mixing_op, (_backward, _setup) in zip((combine, scatter), mixing_autograd(combine, scatter, scatter_add_)):
    _mixing_op.register_autograd(_backward, setup_context=_setup)
embedding_combine.register_autograd(_embedding_combine_backward, setup_context=_embedding_combine_setup)
_embedding_scatter.register_autograd(_embedding_scatter_backward, setup_context=_embedding_scatter_setup)


class _MixedLinear(torch.autograd.Function):
    """y = x @ W_eff^T + b on 2-D x, by the chosen paths (see the module docstring). Saved for the backward: x, the
    seed and, on the combine path, W_eff in the compute dtype. The fused path's input gradient reads the copies
    themselves: an eager leaf weight is remembered (no saved tensor, as the combine backward's), any other weight
    saved. Nothing is allocated for the backward but W_eff."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int,
                fused_forward: bool, fused_wgrad: bool) -> Tensor:
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
            grad_weight = _linear_weight_grad(ctx, grad_out, x, seed)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _linear_weight_grad(ctx, grad_out: Tensor, x: Tensor, seed: Tensor) -> Tensor:
    """Every copy's gradient P_k * (grad_out^T x), added into weight.grad in place when the backward accumulates."""
    if ctx.fused_wgrad:
        return copies_gradient(
            remembered_weight(ctx), lambda target: _weight_grad_add_(target, grad_out, x, seed, ctx.offset),
            lambda: _weight_grad(grad_out, x, seed, ctx.offset, ctx.expansion, ctx.weight_dtype))
    return copies_gradient(
        remembered_weight(ctx), lambda target: scatter_add_(target, torch.mm(grad_out.t(), x), seed, ctx.offset),
        lambda: scatter(torch.mm(grad_out.t(), x), seed, ctx.offset, ctx.expansion, ctx.weight_dtype))


# ---- path choice ---------------------------------------------------------------------------------------------

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


# ---- the Backend's functions: the ops above, and the linear layer ---------------------------------------

def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int,
           out_dtype: torch.dtype) -> Tensor:
    """The mixed linear layer y = input @ W_eff^T + bias in the compute dtype out_dtype (input and bias are cast
    to it, as autocast would), on the paths linear_paths chooses for the input's row count."""
    x = input.to(out_dtype).reshape(math.prod(input.shape[:-1]), input.shape[-1])
    forward, wgrad = linear_paths(x.shape[0], out_dtype, weight.device, weight.shape[0])
    out = _MixedLinear.apply(x, weight, None if bias is None else bias.to(out_dtype), seed, offset,
                             forward == "fused", wgrad == "fused")
    return out.view(*input.shape[:-1], weight.shape[1])
