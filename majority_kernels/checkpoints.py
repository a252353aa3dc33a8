"""State dicts of converted models: which entries hold expanded copies, loading a dense state_dict into a converted
model, and turning a converted model's state_dict into the dense model's (`dense_state_dict`).

A converted model's state_dict keeps the dense model's keys; an expanded weight's entry has the copies' shape
[expansion, *dense shape]. Each module holding expanded weights records them in the state_dict's metadata
(`state_dict._metadata[module prefix]`, which torch.save keeps, as it keeps the modules' versions), so the dense
state_dict can be made without building the model.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._copies import initial_copies
from ._mean import mean_of_copies

# The metadata entry of a module prefix: {parameter name: expansion} of its expanded weights.
METADATA_KEY = "majority_kernels.expanded"


def _record_expanded(names: tuple[str, ...], module: nn.Module, state_dict, prefix: str, local_metadata: dict):
    expanded = {name: module._parameters[name].shape[0] for name in names if module._parameters.get(name) is not None}
    if expanded:
        local_metadata[METADATA_KEY] = expanded


def _expand_dense_entries(names: tuple[str, ...], module: nn.Module, state_dict, prefix: str, *args) -> None:
    # A dense entry (the dense weight's shape) becomes `expansion` copies of it, as init="replicate" would make them.
    for name in names:
        copies, key = module._parameters.get(name), prefix + name
        if copies is not None and key in state_dict and tuple(state_dict[key].shape) == tuple(copies.shape[1:]):
            state_dict[key] = initial_copies(state_dict[key], copies.shape[0], "replicate")


def mark_expanded(module: nn.Module, names: Iterable[str]) -> list[RemovableHandle]:
    """Make `module`'s state_dict record its expanded parameters `names`, and its load_state_dict accept the dense
    weight for each of them; returns the hooks' handles."""
    names = tuple(names)
    return [
        module._register_state_dict_hook(functools.partial(_record_expanded, names)),
        module._register_load_state_dict_pre_hook(functools.partial(_expand_dense_entries, names), with_module=True),
    ]


def dense_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """The dense model's state_dict from a converted model's `state_dict` (as `model.state_dict()` or `torch.load`
    gives it): each expanded weight replaced by the mean of its copies (what `collapse` and eval mode use), every
    other entry as it is. It loads strictly into the unconverted model, and is what to give Hugging Face's
    `save_pretrained(..., state_dict=...)` to save a converted model in the dense format. Tied entries stay one
    tensor. A state_dict without metadata (a plain dict, or one read from safetensors) cannot tell copies from
    weights and raises a ValueError."""
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is None:
        raise ValueError(
            "dense_state_dict needs the state_dict's _metadata, which records the expanded weights: "
            "pass model.state_dict() (or what torch.load returns for it), not a copy into a plain dict "
            "or a safetensors file"
        )
    dense = OrderedDict(state_dict)
    dense._metadata = copy.deepcopy(metadata)
    means: dict[int, Tensor] = {}  # id(copies) -> their mean: tied entries share one tensor
    for prefix, local in metadata.items():
        for name, expansion in local.get(METADATA_KEY, {}).items():
            key = f"{prefix}.{name}" if prefix else name
            if key not in dense:
                continue
            copies = dense[key]
            if copies.dim() < 1 or copies.shape[0] != expansion:
                raise ValueError(
                    f"dense_state_dict: {key!r} is recorded with {expansion} copies but has shape {tuple(copies.shape)}"
                )
            if id(copies) not in means:
                with torch.no_grad():
                    means[id(copies)] = mean_of_copies(copies.detach())
            dense[key] = means[id(copies)]
        dense._metadata[prefix].pop(METADATA_KEY, None)
    return dense
