"""Whole-model conversion: `convert` expands the weights of a model, `collapse` turns it back into the dense model.

Which weights: every floating-point Parameter of two or more dimensions (weight matrices and kernels; biases and
norm scales stay dense), except embeddings unless asked. How, per weight:
  * the weight of an exact nn.Linear / nn.Conv1d / nn.Conv2d / nn.Conv3d (nn.Embedding when asked) becomes its
    fused MK layer;
  * any other weight is expanded in place (`expand`): its module keeps its type and forward, and sees a mixed
    weight for the duration of each forward. Weights read by the forward of an enclosing module rather than their
    own (nn.MultiheadAttention reads out_proj.weight, nn.TransformerEncoderLayer's fast path reads every weight
    below it) are bound at the outermost such module, fused types included, so its fast path sees dense-shaped
    weights too.
A Parameter shared by several modules (tied weights) is expanded once; every module that uses it mixes it on
each of its forwards (one P per use), and `collapse` gives them one dense Parameter again.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

from torch import nn

from . import _validation as check
from .expand import Slot, adopt_copies, bind, expanded_copies, holder_inits, mean_parameters, owner_record
from .layers import MK_LAYERS, _MKLayer

logger = logging.getLogger("majority_kernels")

# Modules whose forward reads the weights of their submodules directly (not through the submodules' forward).
READER_TYPES: tuple[type[nn.Module], ...] = (nn.TransformerEncoderLayer, nn.MultiheadAttention)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
# Parameter names that mark embeddings held by other modules: positional embeddings, class / mask tokens.
_EMBEDDING_NAME = re.compile(r"embed|(^|_)token(s)?$")


@dataclass(frozen=True)
class WeightRecord:
    """One weight of a converted model: its qualified name(s), dense element count, and what convert did."""

    names: tuple[str, ...]  # every qualified name of the Parameter (several for tied weights)
    numel: int
    embedding: bool
    how: str  # "fused", "expanded" or "dense"
    detail: str  # the MK layer / the owner module (fused, expanded), or why it stayed dense

    @property
    def converted(self) -> bool:
        return self.how != "dense"


@dataclass
class ConversionSummary:
    """What `convert` left expanded and dense: `weights` holds every weight (>= 2-D floating Parameter) once."""

    expansion: int
    weights: list[WeightRecord] = field(default_factory=list)

    def share(self, embeddings: bool = False) -> float:
        """The share of weight elements expanded, among the non-embedding weights (or all, with embeddings)."""
        chosen = [w for w in self.weights if embeddings or not w.embedding]
        total = sum(w.numel for w in chosen)
        return sum(w.numel for w in chosen if w.converted) / total if total else 0.0

    @property
    def converted(self) -> list[WeightRecord]:
        return [w for w in self.weights if w.converted]

    @property
    def dense(self) -> list[WeightRecord]:
        return [w for w in self.weights if not w.converted]

    def line(self) -> str:
        fused = sum(w.how == "fused" for w in self.weights)
        expanded = sum(w.how == "expanded" for w in self.weights)
        reasons = sorted({w.detail for w in self.dense})
        text = (
            f"convert (expansion {self.expansion}): {fused} weights in fused MK layers, {expanded} expanded in "
            f"place, {len(self.dense)} left dense; {100 * self.share():.1f}% of non-embedding weight elements "
            f"expanded"
        )
        return text + (f" (dense: {'; '.join(reasons)})" if reasons else "")

    def __str__(self) -> str:
        rows = [self.line()]
        for w in self.weights:
            rows.append(f"  {w.how:8} {', '.join(w.names)} [{w.numel}] {w.detail}")
        return "\n".join(rows)


def _replace_modules(module: nn.Module, replace: Callable[[str, nn.Module], Optional[nn.Module]]) -> nn.Module:
    """Calls replace(qualified_name, m) on `module` (name "") and then on every descendant, top-down, and swaps in
    what it returns (None: keep m and look inside it); returns `module`, or its replacement. A module reachable
    under several names (a shared layer) is replaced once and the same replacement goes under every name."""
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


@dataclass
class _Use:
    """One place a Parameter is held: module `holder` (qualified name `module_name`) under `name`."""

    module_name: str
    holder: nn.Module
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module_name}.{self.name}" if self.module_name else self.name


def _uses_of_weights(module: nn.Module) -> dict[int, tuple[nn.Parameter, list[_Use]]]:
    """Every >= 2-D floating Parameter of `module` (by id) with every place that holds it, in module order."""
    weights: dict[int, tuple[nn.Parameter, list[_Use]]] = {}
    for module_name, holder in module.named_modules(remove_duplicate=False):
        for name, param in holder._parameters.items():
            if param is None or not param.is_floating_point():
                continue
            if param.dim() >= 2 or _existing_expansion(holder, name) is not None:
                uses = weights.setdefault(id(param), (param, []))[1]
                if not any(use.holder is holder and use.name == name for use in uses):
                    uses.append(_Use(module_name, holder, name))
    return weights


def _existing_expansion(holder: nn.Module, name: str) -> Optional[int]:
    if isinstance(holder, _MKLayer):
        return holder.expansion if name == "weight" else None
    return holder._parameters[name].shape[0] if name in holder_inits(holder) else None


def _outermost_reader(module: nn.Module, module_name: str) -> Optional[tuple[str, nn.Module]]:
    """The outermost module on the path to `module_name` (itself included) whose forward reads its submodules'
    weights."""
    path = module_name.split(".") if module_name else []
    current = module
    for depth in range(len(path) + 1):
        if isinstance(current, READER_TYPES):
            return ".".join(path[:depth]), current
        if depth < len(path):
            current = current._modules[path[depth]]
    return None


def _matches(exclusions: tuple, use: _Use) -> bool:
    for item in exclusions:
        if isinstance(item, type):
            if isinstance(use.holder, item):
                return True
        elif use.qualified == item or use.module_name == item or use.module_name.startswith(item + "."):
            return True
    return False


def convert(
    module: nn.Module,
    expansion: int = 4,
    *,
    init: str = "replicate",
    layer_types: Optional[Union[type[nn.Module], Iterable[type[nn.Module]]]] = None,
    filter: Optional[Callable[[str, nn.Module], bool]] = None,
    exclude: Iterable[Union[str, type[nn.Module]]] = (),
    embeddings: bool = False,
    return_summary: bool = False,
) -> Union[nn.Module, tuple[nn.Module, ConversionSummary]]:
    """Expand, in place, every weight of `module` into `expansion` copies mixed afresh on every training forward
    (the mean in eval mode); returns `module` (or the MK layer that replaces it), and with return_summary=True
    also a ConversionSummary of what was expanded and what stayed dense, and why (the same line is logged on the
    "majority_kernels" logger; converting nothing warns).

    A weight is a floating-point Parameter of >= 2 dimensions. Embeddings (the tables of nn.Embedding /
    nn.EmbeddingBag, weights tied to them, and parameters named like positional embeddings or tokens, e.g.
    `pos_embed`, `cls_token`) stay dense unless `embeddings=True`. `layer_types` (a class or classes) keeps only
    the weights of modules that are instances of them (subclasses included); `filter(module_name, module)` and
    `exclude` (qualified parameter or module names, or module classes) leave weights dense. A tied weight is
    expanded only if every module holding it is chosen.

    `init`: "replicate" puts the weight in every copy (the converted model in eval mode computes exactly what the
    model did); "independent" draws each copy afresh with its module's initialisation, scaled by sqrt((e + 1) / 2).
    Weights already expanded stay as they are; if they were expanded with another expansion, a ValueError is
    raised (collapse first). Every check runs before anything changes, so a failed convert leaves `module` as it
    was."""
    module = check.check_module(module, "convert")
    expansion, init = check.check_expansion(expansion), check.check_init(init)
    chosen_types = None if layer_types is None else check.check_layer_types(layer_types)
    exclusions = check.check_exclude(exclude)
    embeddings = embeddings or (chosen_types is not None and any(issubclass(t, EMBEDDING_TYPES) for t in chosen_types))

    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
            raise ValueError(
                f"convert found the uninitialised lazy layer {name or type(layer).__name__!r}; run a "
                "forward through the model first so that its shape is known"
            )

    summary = ConversionSummary(expansion)
    fused: dict[int, nn.Module] = {}  # id(dense layer) -> the layer, to become its MK layer
    in_place: list[tuple[nn.Parameter, list[tuple[_Use, tuple[str, nn.Module]]]]] = []
    for param, uses in _uses_of_weights(module).values():
        names = tuple(use.qualified for use in uses)
        is_embedding = any(isinstance(use.holder, EMBEDDING_TYPES) or _EMBEDDING_NAME.search(use.name) for use in uses)
        existing = {_existing_expansion(use.holder, use.name) for use in uses} - {None}
        if existing:
            if existing != {expansion}:
                raise ValueError(
                    f"convert: {names[0]!r} is already expanded with expansion "
                    f"{sorted(existing)[0]}, not {expansion}; collapse the model first to convert it "
                    f"with another expansion"
                )
            summary.weights.append(
                WeightRecord(
                    names,
                    param[0].numel(),
                    is_embedding,
                    "fused" if isinstance(uses[0].holder, _MKLayer) else "expanded",
                    "expanded before",
                )
            )
            continue
        reason = None
        if is_embedding and not embeddings:
            reason = "embedding (convert(..., embeddings=True) expands it)"
        elif chosen_types is not None and not all(isinstance(use.holder, chosen_types) for use in uses):
            reason = "module type not in layer_types"
        elif filter is not None and not all(filter(use.module_name, use.holder) for use in uses):
            reason = "filter"
        elif any(_matches(exclusions, use) for use in uses):
            reason = "excluded"
        if reason is not None:
            if len(uses) > 1:
                reason += " (tied: all of its modules must be chosen)"
            summary.weights.append(WeightRecord(names, param.numel(), is_embedding, "dense", reason))
            continue
        placements = []
        for use in uses:
            reader = _outermost_reader(module, use.module_name)
            if reader is None and type(use.holder) in MK_LAYERS and use.name == "weight":
                fused[id(use.holder)] = use.holder
                placements.append((use, None))
            else:
                placements.append((use, reader or (use.module_name, use.holder)))
        in_place.append((param, placements))
        how = "fused" if all(owner is None for _, owner in placements) else "expanded"
        details = sorted(
            {
                f"MK layer of {type(use.holder).__name__}"
                if owner is None
                else f"at {owner[0] or 'the root'} ({type(owner[1]).__name__})"
                for use, owner in placements
            }
        )
        summary.weights.append(WeightRecord(names, param.numel(), is_embedding, how, "; ".join(details)))

    # Everything that can fail (MK layers refusing options, independent init without reset_parameters) first.
    replacements = {key: MK_LAYERS[type(layer)].from_dense(layer, expansion, init) for key, layer in fused.items()}
    copies_by_weight: dict[int, nn.Parameter] = {}  # id(dense weight) -> its copies, shared by every use
    for param, placements in in_place:
        for use, owner in placements:
            if owner is None and id(param) not in copies_by_weight:
                copies_by_weight[id(param)] = replacements[id(use.holder)].weight
        if id(param) not in copies_by_weight:
            use = placements[0][0]
            copies_by_weight[id(param)] = expanded_copies(use.holder, use.name, expansion, init)

    slots_by_owner: dict[int, tuple[nn.Module, list[Slot]]] = {}
    for param, placements in in_place:
        copies = copies_by_weight[id(param)]
        for use, owner in placements:
            if owner is None:
                replacements[id(use.holder)].weight = copies
                continue
            owner_name, owner_module = owner
            adopt_copies(use.holder, use.name, copies, init)
            path = use.qualified[len(owner_name) + 1 :] if owner_name else use.qualified
            slots_by_owner.setdefault(id(owner_module), (owner_module, []))[1].append(Slot(use.holder, use.name, path))
    for owner_module, slots in slots_by_owner.values():
        bind(owner_module, slots, expansion)
    result = _replace_modules(module, lambda name, layer: replacements.get(id(layer)))

    logger.info(summary.line())
    if not summary.converted:
        warnings.warn(f"convert expanded no weight of {type(module).__name__}: {summary.line()}", stacklevel=2)
    return (result, summary) if return_summary else result


def collapse(module: nn.Module) -> nn.Module:
    """Replace, in place, every MK layer of `module` by its dense layer and every expanded weight by the mean of
    its copies (the mean kernel, what eval mode computes); returns `module` (or the dense layer if `module` is
    itself an MK layer). The state_dict then has the unconverted model's keys and shapes, and tied weights are one
    Parameter again. A module without expanded weights is returned unchanged."""
    module = check.check_module(module, "collapse")
    dense_weight = mean_parameters()
    for owner in list(module.modules()):
        record = owner_record(owner)
        if record is not None:
            record.collapse(owner, dense_weight)

    def replace(name: str, layer: nn.Module) -> Optional[nn.Module]:
        if not isinstance(layer, _MKLayer):
            return None
        return layer.dense_with(dense_weight(layer.weight))

    return _replace_modules(module, replace)
