"""What every op of the `majority_kernels_triton` namespace is registered with (majority_kernels.experimental's
too)."""

from typing import Callable

import torch
from torch import Tensor

NAMESPACE = "majority_kernels_triton"


def custom_op(name: str, mutates_args: tuple[str, ...] = ()) -> Callable:
    """The decorator that makes a function the custom op `majority_kernels_triton::<name>`."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)


def check_target(grad_weight: Tensor) -> None:
    """The in-place ops' cheap assert: their kernels index the gradient they add into as contiguous."""
    if not grad_weight.is_contiguous():
        raise ValueError("grad_weight must be contiguous (it is updated in place)")
