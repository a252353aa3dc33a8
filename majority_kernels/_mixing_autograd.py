"""The autograd formulas that every backend's ops share: combine's and scatter's, embedding_combine's, and the
mixed linear layer's weight gradient, each written once and given the backend's ops.

combine and scatter are each other's adjoint (combine sums P_k * x_k over k, scatter spreads P_k * g to every k),
so each one's backward is the other with the same (seed, offset): P is regenerated, never stored, and double
backward works too. The embedding gather's adjoint is its scatter-add into the looked-up rows, whose adjoint is the
gather again. The backwards that produce an expanded weight's gradient remember the weight rather than saving it
(majority_kernels._grad_accumulation): modifying it in place before the backward raises autograd's usual error, and
when a .backward() accumulates, the copies' gradient is added into its .grad in place.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ._grad_accumulation import copies_gradient, remember_weight, remembered_weight

# (backward, setup_context) of one op, as torch.library's register_autograd takes them.
Formula = tuple[Callable, Callable]


def mixing_autograd(combine: Callable, scatter: Callable, scatter_add_: Callable) -> tuple[Formula, Formula]:
    """The formulas of combine and of scatter, for the backend whose ops are `combine(weight, seed, offset,
    out_dtype)`, `scatter(grad, seed, offset, expansion, out_dtype)` and `scatter_add_(grad_weight, grad, seed,
    offset)`."""

    def combine_setup(ctx, inputs, output):
        weight, seed, offset, _ = inputs
        ctx.save_for_backward(seed)  # all the backward needs to regenerate P
        remember_weight(ctx, weight)
        ctx.offset, ctx.expansion, ctx.weight_dtype = offset, weight.shape[0], weight.dtype

    def combine_backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        grad_weight = copies_gradient(
            remembered_weight(ctx),
            lambda target: scatter_add_(target, grad, seed, ctx.offset),
            lambda: scatter(grad, seed, ctx.offset, ctx.expansion, ctx.weight_dtype),
        )
        return grad_weight, None, None, None

    def scatter_setup(ctx, inputs, output):
        grad, seed, offset, _, _ = inputs
        ctx.save_for_backward(seed)
        ctx.offset, ctx.grad_dtype = offset, grad.dtype

    def scatter_backward(ctx, grad_copies):
        (seed,) = ctx.saved_tensors
        return combine(grad_copies, seed, ctx.offset, ctx.grad_dtype), None, None, None, None

    return (combine_backward, combine_setup), (scatter_backward, scatter_setup)


def embedding_autograd(
    embedding_combine: Callable,
    embedding_scatter_add_: Callable,
    *,
    accumulator_dtype: Optional[Callable[[torch.dtype, torch.dtype], torch.dtype]] = None,
    in_place_dtypes: Optional[tuple[torch.dtype, ...]] = None,
) -> Formula:
    """The formula of embedding_combine, for the backend whose ops are `embedding_combine(weight, indices, seed,
    offset, out_dtype)` and `embedding_scatter_add_(grad_weight, grad, indices, seed, offset)` (adds P_k * grad
    into the looked-up rows of a contiguous table, in place). A fresh table gradient is zeros in
    `accumulator_dtype(grad dtype, weight dtype)` (None: the weight's) with the scatter-add into it, cast to the
    weight's dtype; an existing .grad is added into in place where its dtype is one of `in_place_dtypes` (None:
    any). The indices get no gradient."""

    class EmbeddingScatter(torch.autograd.Function):
        """The fresh table gradient. A Function so that double backward is right: its adjoint is
        embedding_combine again (the in-place op alone would leave the result untracked under create_graph)."""

        @staticmethod
        def forward(grad, indices, seed, offset, weight_shape, weight_dtype):
            dtype = weight_dtype if accumulator_dtype is None else accumulator_dtype(grad.dtype, weight_dtype)
            table = grad.new_zeros(weight_shape, dtype=dtype)
            embedding_scatter_add_(table, grad, indices, seed, offset)  # touches the looked-up rows only
            return table.to(weight_dtype)

        @staticmethod
        def setup_context(ctx, inputs, output):
            grad, indices, seed, offset, _, _ = inputs
            ctx.save_for_backward(indices, seed)
            ctx.offset, ctx.grad_dtype = offset, grad.dtype

        @staticmethod
        def backward(ctx, grad_table):
            indices, seed = ctx.saved_tensors
            return (
                embedding_combine(grad_table, indices, seed, ctx.offset, ctx.grad_dtype),
                None,
                None,
                None,
                None,
                None,
            )

    def setup(ctx, inputs, output):
        weight, indices, seed, offset, _ = inputs
        ctx.save_for_backward(indices, seed)
        remember_weight(ctx, weight)
        ctx.offset, ctx.weight_shape, ctx.weight_dtype = offset, weight.shape, weight.dtype

    def backward(ctx, grad):
        indices, seed = ctx.saved_tensors
        grad_weight = copies_gradient(
            remembered_weight(ctx),
            lambda target: embedding_scatter_add_(target, grad, indices, seed, ctx.offset),
            lambda: EmbeddingScatter.apply(grad, indices, seed, ctx.offset, ctx.weight_shape, ctx.weight_dtype),
            dtypes=in_place_dtypes,
        )
        return grad_weight, None, None, None, None

    return backward, setup


def linear_weight_grad(
    scatter: Callable,
    scatter_add_: Callable,
    weight: Optional[Tensor],
    grad_out: Tensor,
    input: Tensor,
    seed: Tensor,
    offset: int,
    expansion: int,
    dtype: torch.dtype,
) -> Tensor:
    """Every copy's gradient P_k * dW_eff of a mixed linear layer (grad_out [M, N], input [M, K]), by torch's GEMM
    dW_eff = grad_out^T @ input and the backend's scatter (ops as in mixing_autograd), in `dtype`; added into the
    .grad of `weight` (the remembered expanded weight, or None) in place when the backward accumulates."""
    dense_grad = grad_out.t() @ input
    return copies_gradient(
        weight,
        lambda target: scatter_add_(target, dense_grad, seed, offset),
        lambda: scatter(dense_grad, seed, offset, expansion, dtype),
    )
