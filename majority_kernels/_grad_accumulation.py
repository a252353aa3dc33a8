"""Gradient accumulation into the expanded weights' `.grad` in place, without an e x |W| temporary.

Autograd would have the backward return every copy's gradient as a new [e, ...] tensor and then add it to an
existing `.grad`: one temporary the size of the parameter per backward. When a `.backward()` call is about to add
into the expanded weight's existing `.grad`, the backward instead scatters into `.grad` directly and returns a
zero gradient that is a broadcast view of one scalar (no memory). Autograd's accumulation then adds that zero, so
everything hooked to the accumulation (DDP's all-reduce hooks, post-accumulate-grad hooks) still runs and sees the
accumulated `.grad`. The one visible difference: a hook registered with `weight.register_hook` sees that zero, not
this backward's gradient.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def remember_weight(ctx, weight: Tensor) -> None:
    """Keeps on ctx what the backward needs of the expanded weight: the leaf (to find its .grad) and its version
    (to check it was not modified in place since the forward). Not through ctx.save_for_backward: the backward
    never reads the weight's values, and a saved tensor would count as kept for the backward (saved-tensor hooks,
    the benchmark's "saved" column) although no memory is kept. Eager leaves only; under torch.compile autograd
    sees only W_eff."""
    keep = weight.is_leaf and weight.requires_grad and not torch.compiler.is_compiling()
    ctx.expanded_weight = weight if keep else None
    ctx.expanded_weight_version = weight._version if keep else None


def remembered_weight(ctx) -> Optional[Tensor]:
    """The weight kept by remember_weight, after checking it is unchanged: modifying it in place between forward
    and backward raises autograd's usual error, as it does for a dense layer (whose backward reads the weight)."""
    weight = ctx.expanded_weight
    if weight is not None and weight._version != ctx.expanded_weight_version:
        raise RuntimeError(
            f"one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{weight.type()} {list(weight.shape)}] (an expanded majority-kernels weight) is at version "
            f"{weight._version}; expected version {ctx.expanded_weight_version} instead. Modify the weights only "
            f"after the backward (e.g. in optimizer.step()).")
    return weight


def _will_accumulate(leaf: Tensor) -> bool:
    """Whether the running backward adds into leaf.grad: a `.backward()` that reaches the leaf (torch.autograd.grad
    returns gradients instead, and the engine refuses the question for it)."""
    with torch.enable_grad():
        accumulator = leaf.view_as(leaf).grad_fn.next_functions[0][0]
    try:
        return bool(torch._C._will_engine_execute_node(accumulator))
    except RuntimeError:  # inside torch.autograd.grad
        return False


def accumulation_target(weight: Optional[Tensor]) -> Optional[Tensor]:
    """weight.grad when this backward may add its gradient into it in place, else None (then return the gradient
    as usual). Only for an eager leaf that already has a plain contiguous .grad of its own shape and dtype, outside
    create_graph (a differentiable .grad must not be mutated) and outside torch.compile's tracing."""
    if weight is None or torch.compiler.is_compiling() or torch.is_grad_enabled() or not weight.is_leaf:
        return None
    grad = weight.grad
    if (grad is None or grad.layout != torch.strided or not grad.is_contiguous() or grad.shape != weight.shape
            or grad.dtype != weight.dtype or grad.device != weight.device or grad.requires_grad):
        return None
    return grad if _will_accumulate(weight) else None


def accumulated(weight: Tensor) -> Tensor:
    """What the backward returns once it has added into weight.grad: zeros of weight's shape, without memory."""
    return torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)


def copies_gradient(weight: Optional[Tensor], add_into: Callable[[Tensor], object],
                    compute: Callable[[], Tensor]) -> Tensor:
    """The expanded weight's gradient for a backward to return: when the backward adds into weight.grad
    (accumulation_target), add_into(weight.grad) adds it in place and the memoryless zero is returned; otherwise
    compute() makes it."""
    target = accumulation_target(weight)
    if target is None:
        return compute()
    add_into(target)
    return accumulated(weight)
