"""The copies of an expanded weight: how they start (`init=`), how a module re-initialises them, and how `Module.to`
and friends treat them. Shared by the MK layers and by the expanded parameters of any other module."""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn


def initial_copies(weight: Tensor, expansion: int, init: str, redraw: Optional[Callable[[], Tensor]] = None) -> Tensor:
    """[expansion, *weight.shape]: "replicate" repeats `weight` (so the mean is weight, bit for bit); "independent"
    takes `expansion` fresh draws of `redraw()` scaled by sqrt((e + 1) / 2), so the mixed weight keeps the
    variance of one draw (a mixture of e independent draws has variance 2 / (e + 1) of one)."""
    if init == "replicate":
        return weight.detach().unsqueeze(0).repeat(expansion, *([1] * weight.dim()))
    draws = [redraw().detach().clone() for _ in range(expansion)]
    return torch.stack(draws) * math.sqrt((expansion + 1) / 2)


def reinitialiser(module: nn.Module, name: str) -> Callable[[], Tensor]:
    """A function returning a fresh draw of `module`'s parameter `name` from the module's own initialisation
    (its reset_parameters, or nn.MultiheadAttention's _reset_parameters), on a private copy of the module."""
    reset = "reset_parameters" if hasattr(module, "reset_parameters") else "_reset_parameters"
    if not hasattr(module, reset):
        raise ValueError(
            f"init='independent' needs the module holding {name!r} ({type(module).__name__}) to have "
            f"reset_parameters(); use init='replicate' for it"
        )
    template = copy.deepcopy(module)

    def redraw() -> Tensor:
        getattr(template, reset)()
        return template._parameters[name]

    return redraw


def copies_of(module: nn.Module, name: str, expansion: int, init: str) -> Tensor:
    """initial_copies of `module`'s parameter `name`, redrawn with the module's own initialisation for
    "independent"."""
    redraw = reinitialiser(module, name) if init == "independent" else None
    return initial_copies(module._parameters[name], expansion, init, redraw)


def apply_to_copies(
    module: nn.Module,
    names: Iterable[str],
    fn: Callable[[Tensor], Tensor],
    apply: Callable[[Callable[[Tensor], Tensor]], nn.Module],
) -> nn.Module:
    """`apply(fn')`, Module._apply with `fn` changed for the copies of the expanded parameters `names` (and their
    gradients): fn sees them one copy after another, as the dense weight, so a memory format for 4-D or 5-D tensors
    (`.to(memory_format=torch.channels_last)`) neither fails on the extra dimension nor reads it as a channel. The
    copies stay in the standard layout: the mixing weights are defined on the dense weight's logical element order,
    and the kernels read the copies contiguously."""
    expanded = set()
    for name in names:
        copies = module._parameters.get(name)
        if copies is not None:
            expanded.add(id(copies))
            if copies.grad is not None:
                expanded.add(id(copies.grad))

    def per_copy(tensor: Tensor) -> Tensor:
        if id(tensor) not in expanded or tensor.dim() < 2:
            return fn(tensor)
        return fn(tensor.flatten(0, 1)).unflatten(0, tensor.shape[:2]).contiguous()

    return apply(per_copy)
