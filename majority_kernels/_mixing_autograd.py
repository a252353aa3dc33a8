"""The autograd formulas of combine and scatter, once for every backend that provides the pair of ops.

combine and scatter are each other's adjoint (combine sums P_k * x_k over k, scatter spreads P_k * g to every k),
so each one's backward is the other with the same (seed, offset): P is regenerated, never stored, and double
backward works too. combine's backward remembers the expanded weight rather than saving it
(majority_kernels._grad_accumulation): modifying it in place before the backward raises autograd's usual error, and
when a .backward() accumulates, the copies' gradient is added into its .grad in place.
"""

from __future__ import annotations

from typing import Callable

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
        grad_weight = copies_gradient(remembered_weight(ctx),
                                      lambda target: scatter_add_(target, grad, seed, ctx.offset),
                                      lambda: scatter(grad, seed, ctx.offset, ctx.expansion, ctx.weight_dtype))
        return grad_weight, None, None, None

    def scatter_setup(ctx, inputs, output):
        grad, seed, offset, _, _ = inputs
        ctx.save_for_backward(seed)
        ctx.offset, ctx.grad_dtype = offset, grad.dtype

    def scatter_backward(ctx, grad_copies):
        (seed,) = ctx.saved_tensors
        return combine(grad_copies, seed, ctx.offset, ctx.grad_dtype), None, None, None, None

    return (combine_backward, combine_setup), (scatter_backward, scatter_setup)
