"""Whole-model conversion: `convert` swaps dense layers for MK layers, `collapse` swaps them back."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from torch import nn

from . import _validation as check
from .layers import MK_LAYERS, _MKLayer

DEFAULT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _replace_modules(module: nn.Module, replace: Callable[[str, nn.Module], Optional[nn.Module]]) -> nn.Module:
    """Calls replace(qualified_name, m) on `module` (name "") and then on every descendant, top-down, and swaps in
    what it returns (None: keep m and look inside it); returns `module`, or its replacement. A module reachable
    under several names (a tied layer) is replaced once and the same replacement goes under every name, so ties
    survive."""
    root = replace("", module)
    if root is not None:
        return root
    replaced: dict[int, nn.Module] = {}
    visited: set[int] = set()

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in replaced:
                new = replace(f"{prefix}{name}", child)
                replaced[id(child)] = child if new is None else new
            new = replaced[id(child)]
            if new is not child:
                setattr(parent, name, new)
            elif id(child) not in visited:
                visited.add(id(child))
                visit(child, f"{prefix}{name}.")

    visit(module, "")
    return module


def convert(module: nn.Module, expansion: int = 4, *, init: str = "replicate",
            layer_types: Iterable[type[nn.Module]] = DEFAULT_LAYER_TYPES,
            filter: Optional[Callable[[str, nn.Module], bool]] = None) -> nn.Module:
    """Replace, in place, every layer of `module` whose type is exactly one of `layer_types` (and for which
    `filter(qualified_name, layer)` is true, if given) by its MK layer; returns `module` (or the MK layer if
    `module` itself matches). Subclasses of those types are left alone: their forward may not be the dense one
    (e.g. nn.MultiheadAttention's out_proj, whose weight the attention reads directly)."""
    expansion, init = check.check_expansion(expansion), check.check_init(init)
    layer_types = tuple(layer_types)
    unsupported = [t for t in layer_types if t not in MK_LAYERS]
    if unsupported:
        raise ValueError(f"convert cannot convert {[t.__name__ for t in unsupported]}: supported layer types are "
                         f"{[t.__name__ for t in MK_LAYERS]}")

    def replace(name: str, layer: nn.Module) -> Optional[nn.Module]:
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.cls_to_become in layer_types:
            raise ValueError(f"convert found the uninitialised lazy layer {name or type(layer).__name__!r}; run a "
                             "forward through the model first so that its shape is known")
        if type(layer) not in layer_types or (filter is not None and not filter(name, layer)):
            return None
        return MK_LAYERS[type(layer)].from_dense(layer, expansion, init)

    return _replace_modules(module, replace)


def collapse(module: nn.Module) -> nn.Module:
    """Replace, in place, every MK layer of `module` by its dense layer (the mean kernel); returns `module` (or
    the dense layer if `module` is itself an MK layer). The state_dict then has the unconverted model's keys and
    shapes. A module without MK layers is returned unchanged."""

    def replace(name: str, layer: nn.Module) -> Optional[nn.Module]:
        return layer.to_dense() if isinstance(layer, _MKLayer) else None

    return _replace_modules(module, replace)
