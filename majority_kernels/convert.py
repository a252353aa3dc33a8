"""Whole-model conversion: `convert` swaps dense layers for MK layers, `collapse` swaps them back."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

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


def _refuse_tied_parameters(module: nn.Module, chosen: Iterable[tuple[str, nn.Module]]) -> None:
    """Raise if a layer chosen for conversion shares a Parameter with another module (tied weights, e.g. a language
    model's output projection sharing the input embedding's table). Its MK layer gets parameters of its own, so
    the tie would come apart silently; and the two layers would mix the one table with different P."""
    owners: dict[int, list[tuple[str, nn.Module]]] = {}  # id(parameter) -> (module name, module) holding it
    for name, owner in module.named_modules():
        for param in owner._parameters.values():
            if param is not None:
                owners.setdefault(id(param), []).append((name, owner))
    for name, layer in chosen:
        for param_name, param in layer._parameters.items():
            others = [] if param is None else [other for other, owner in owners[id(param)] if owner is not layer]
            if others:
                tied = ", ".join(repr(n) for n in sorted({name, *others}))
                raise ValueError(
                    f"convert: the Parameter {param_name!r} of layer {name!r} is shared with "
                    f"{', '.join(map(repr, others))} (tied weights). Its MK layer would get expanded copies of its "
                    f"own and untie them. Leave every layer of the tie out with filter=, e.g. filter=lambda name, "
                    f"layer: name not in {{{tied}}}, or untie the weights before converting (for Hugging Face "
                    f"models, tie_word_embeddings=False in the config) to convert the layers separately")


def convert(module: nn.Module, expansion: int = 4, *, init: str = "replicate",
            layer_types: Union[type[nn.Module], Iterable[type[nn.Module]]] = DEFAULT_LAYER_TYPES,
            filter: Optional[Callable[[str, nn.Module], bool]] = None) -> nn.Module:
    """Replace, in place, every layer of `module` whose type is exactly one of `layer_types` (one class, or an
    iterable of them; and for which `filter(qualified_name, layer)` is true, if given) by its MK layer; returns
    `module` (or the MK layer if `module` itself matches). Subclasses of those types are left alone: their forward may not be the dense one
    (e.g. nn.MultiheadAttention's out_proj, whose weight the attention reads directly). nn.Embedding is converted
    only when named in `layer_types`. A chosen layer whose Parameter another module shares (tied weights) raises a
    ValueError. Every check runs before anything is replaced, so a failed convert leaves `module` unchanged."""
    module = check.check_module(module, "convert")
    expansion, init = check.check_expansion(expansion), check.check_init(init)
    layer_types = check.check_layer_types(layer_types, tuple(MK_LAYERS))

    # The layers to convert, each under its first name (the name _replace_modules passes for it too).
    chosen: list[tuple[str, nn.Module]] = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.cls_to_become in layer_types:
            raise ValueError(f"convert found the uninitialised lazy layer {name or type(layer).__name__!r}; run a "
                             "forward through the model first so that its shape is known")
        if type(layer) in layer_types and (filter is None or filter(name, layer)):
            chosen.append((name, layer))
    _refuse_tied_parameters(module, chosen)
    replacements = {id(layer): MK_LAYERS[type(layer)].from_dense(layer, expansion, init) for _, layer in chosen}
    return _replace_modules(module, lambda name, layer: replacements.get(id(layer)))


def collapse(module: nn.Module) -> nn.Module:
    """Replace, in place, every MK layer of `module` by its dense layer (the mean kernel); returns `module` (or
    the dense layer if `module` is itself an MK layer). The state_dict then has the unconverted model's keys and
    shapes. A module without MK layers is returned unchanged."""

    module = check.check_module(module, "collapse")

    def replace(name: str, layer: nn.Module) -> Optional[nn.Module]:
        return layer.to_dense() if isinstance(layer, _MKLayer) else None

    return _replace_modules(module, replace)
