"""Argument checks shared by the functional API and the layers: each raises with a message naming the argument."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

SEED_LIMIT = 2**63
OFFSET_LIMIT = 2**64
# Sizes and element counts are int64 in torch and in the kernels.
SIZE_LIMIT = 2**63
FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_FLOAT_NAMES = "float32, float64, bfloat16 or float16"


def check_expansion(expansion: object) -> int:
    if isinstance(expansion, bool) or not isinstance(expansion, numbers.Integral):
        raise TypeError(f"expansion must be an int >= 1, got {type(expansion).__name__} {expansion!r}")
    if expansion < 1:
        raise ValueError(f"expansion must be >= 1, got {expansion}")
    if expansion >= SIZE_LIMIT:
        raise ValueError(f"expansion must be < 2^63 (a tensor size), got {expansion}")
    return int(expansion)


def check_shape(shape: object, expansion: int) -> tuple[int, ...]:
    """A shape (an int or a sequence of ints >= 0) whose [expansion, *shape] tensor has < 2^63 elements."""
    dims = (shape,) if isinstance(shape, numbers.Integral) and not isinstance(shape, bool) else shape
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
        raise TypeError(f"shape must be an int or a sequence of ints, got {type(shape).__name__} {shape!r}")
    dims = tuple(dims)
    if any(isinstance(d, bool) or not isinstance(d, numbers.Integral) for d in dims):
        raise TypeError(f"shape must hold ints, got {shape!r}")
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must hold sizes >= 0, got {shape!r}")
    check_numel(expansion, math.prod(dims), f"shape {shape!r}")
    return tuple(int(d) for d in dims)


def check_numel(expansion: int, numel: int, what: str) -> None:
    """The [expansion, *what] tensor must have < 2^63 elements (int64, as torch counts them)."""
    if expansion * numel >= SIZE_LIMIT:
        raise ValueError(
            f"expansion {expansion} times numel {numel} of {what} is {expansion * numel} elements, "
            f"past int64 (must be < 2^63)"
        )


def check_float_dtype(dtype: object, name: str) -> torch.dtype:
    """A torch.dtype the kernels compute in (float8 and other floats have no kernels)."""
    if not isinstance(dtype, torch.dtype) or dtype not in FLOATS:
        raise TypeError(f"{name} must be a torch.dtype out of {_FLOAT_NAMES}, got {type(dtype).__name__} {dtype!r}")
    return dtype


def check_module(module: object, function: str) -> torch.nn.Module:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{function}: module must be a torch.nn.Module, got {type(module).__name__}")
    return module


def check_layer_types(layer_types: object) -> tuple[type, ...]:
    """convert's layer_types as a tuple of torch.nn.Module subclasses: one class alone, or an iterable of them."""
    types = (layer_types,) if isinstance(layer_types, type) else layer_types
    if isinstance(types, (str, bytes)) or not hasattr(types, "__iter__"):
        raise TypeError(
            f"layer_types must be a module class or an iterable of them, got "
            f"{type(layer_types).__name__} {layer_types!r}"
        )
    types = tuple(types)
    not_modules = [t for t in types if not (isinstance(t, type) and issubclass(t, torch.nn.Module))]
    if not_modules or not types:
        raise TypeError(
            f"layer_types must hold torch.nn.Module classes (e.g. torch.nn.Linear), got {not_modules or 'nothing'!r}"
        )
    return types


def check_exclude(exclude: object) -> tuple:
    """convert's exclude as a tuple of qualified names (str) and torch.nn.Module subclasses."""
    items = (exclude,) if isinstance(exclude, (str, type)) else exclude
    if not hasattr(items, "__iter__"):
        raise TypeError(f"exclude must be names or module classes, got {type(exclude).__name__} {exclude!r}")
    items = tuple(items)
    wrong = [
        item
        for item in items
        if not (isinstance(item, str) or isinstance(item, type) and issubclass(item, torch.nn.Module))
    ]
    if wrong:
        raise TypeError(
            f"exclude must hold qualified parameter or module names (str) or torch.nn.Module classes, got {wrong!r}"
        )
    return items


def check_init(init: object) -> str:
    if init not in ("replicate", "independent"):
        raise ValueError(f"init must be 'replicate' or 'independent', got {init!r}")
    return init


def _check_seed_range(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must lie in [0, 2^63), got {seed}")


def seed_tensor(seed: object, device: torch.device) -> Tensor:
    """The seed as a one-element int64 tensor on `device` (where the kernels read it). A seed tensor must already be
    there: moving it would be a hidden copy (and a host sync for a GPU seed read on the CPU)."""
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(
                f"seed tensor must hold one int64 value, got dtype {seed.dtype} and shape {tuple(seed.shape)}"
            )
        if seed.device != device:
            raise ValueError(f"seed tensor must be on the weight's device {device}, got {seed.device}")
        # Eager CPU values are checked here; others where the kernel reads them (no device sync here).
        if seed.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_seed_range(int(seed))
        return seed.reshape(())
    if isinstance(seed, float) and not math.isfinite(seed):
        raise ValueError(f"seed must be a finite integer in [0, 2^63), got {seed}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2^63) or an int64 tensor, got {type(seed).__name__} {seed!r}")
    _check_seed_range(seed)
    return torch.tensor(int(seed), dtype=torch.int64, device=device)


def signed_offset(offset: object) -> int:
    """The counter offset, given in [0, 2^64), as the signed 64-bit int the ops take (same bits)."""
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be an int in [0, 2^64), got {type(offset).__name__} {offset!r}")
    if not 0 <= offset < OFFSET_LIMIT:
        raise ValueError(f"offset must lie in [0, 2^64), got {offset}")
    return int(offset) - OFFSET_LIMIT if offset >= SEED_LIMIT else int(offset)


def check_floating(tensor: object, name: str) -> Tensor:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor ({_FLOAT_NAMES}), got {tensor.dtype}")
    return tensor


def check_accumulate_into(target: object, grad: Tensor, expansion: int) -> Tensor:
    """The tensor scatter adds into in place: [expansion, *grad.shape], contiguous, on grad's device, sharing no
    memory with grad (it would be read while written) and not a leaf that requires grad (autograd would not see
    the change)."""
    target = check_floating(target, "accumulate_into")
    if tuple(target.shape) != (expansion, *grad.shape):
        raise ValueError(f"accumulate_into must have shape {(expansion, *grad.shape)}, got {tuple(target.shape)}")
    if target.device != grad.device:
        raise ValueError(f"accumulate_into must be on grad's device {grad.device}, got {target.device}")
    if not target.is_contiguous():
        raise ValueError("accumulate_into must be contiguous (it is updated in place)")
    if target.is_leaf and target.requires_grad:
        raise ValueError(
            "accumulate_into must not be a leaf tensor that requires grad: it is updated in place, "
            "outside autograd (pass a tensor that does not require grad, such as a parameter's .grad)"
        )
    if _overlap(target, grad):
        raise ValueError("accumulate_into must not share memory with grad (it is written while grad is read)")
    return target


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether the memory spans of a and b (first to last element; torch strides are >= 0) intersect."""
    if a.device.type == "meta" or a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a_start, a_end), (b_start, b_end) = span(a), span(b)
    return a_start < b_end and b_start < a_end


def check_expanded_weight(weight: object, dense_dims: int, layout: str) -> Tensor:
    """weight must be [expansion, *dense weight shape] with dense_dims dense dimensions."""
    weight = check_floating(weight, "weight")
    if weight.dim() != dense_dims + 1:
        hint = (
            " (a dense weight without the expansion dimension? use weight.unsqueeze(0) for expansion 1)"
            if weight.dim() == dense_dims
            else ""
        )
        raise ValueError(
            f"weight must have shape {layout}, {dense_dims + 1}-D with the expansion dimension first; "
            f"got shape {tuple(weight.shape)}{hint}"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"weight's expansion dimension must be >= 1, got shape {tuple(weight.shape)}")
    return weight


def compute_dtype(input: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the dense op runs in: the autocast dtype when autocast is on, else weight's (input must match)."""
    device_type = input.device.type
    # Meta tensors have no autocast state to ask about. (A plain comparison: torch 2.4's compiler cannot trace
    # torch.amp.is_autocast_available.)
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if input.dtype != weight.dtype:
        raise TypeError(
            f"input and weight must have the same dtype, got input {input.dtype} and weight "
            f"{weight.dtype} (or run under torch.autocast)"
        )
    return weight.dtype


def check_same_device(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if input.device != weight.device:
        raise ValueError(
            f"input and weight must be on the same device, got input on {input.device} and weight on {weight.device}"
        )
    if bias is not None and bias.device != weight.device:
        raise ValueError(f"bias must be on weight's device {weight.device}, got {bias.device}")


def check_bias(bias: object, features: int) -> Tensor | None:
    if bias is None:
        return None
    bias = check_floating(bias, "bias")
    if tuple(bias.shape) != (features,):
        raise ValueError(f"bias must have shape ({features},), got {tuple(bias.shape)}")
    return bias


def check_indices(indices: object, num_embeddings: int, weight: Tensor) -> Tensor:
    """Embedding indices: an int64 or int32 tensor on weight's device with values in [0, num_embeddings)."""
    if not isinstance(indices, Tensor):
        raise TypeError(f"input must be a torch.Tensor of int64 or int32 indices, got {type(indices).__name__}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input must hold int64 or int32 indices, got {indices.dtype}")
    check_same_device(indices, weight, None)
    # The range is checked here only for eager CPU tensors, where it costs no device sync (the kernels check it
    # too); so also the reference backend, whose indexing would wrap negative indices, rejects them.
    if indices.device.type == "cpu" and indices.numel() > 0 and not torch.compiler.is_compiling():
        bad = (indices < 0) | (indices >= num_embeddings)
        if bool(bad.any()):
            raise IndexError(
                f"input holds index {int(indices[bad][0])}, out of range for an embedding table of "
                f"{num_embeddings} rows"
            )
    elif indices.device.type == "cuda" and indices.numel() > 0:
        # No host sync on a GPU: a device-side assert, the error nn.Embedding gives there too.
        torch._assert_async(
            ((indices >= 0) & (indices < num_embeddings)).all(),
            "majority_embedding: an index is out of range for the embedding table",
        )
    return indices


def check_padding_idx(padding_idx: object, num_embeddings: int) -> int | None:
    """padding_idx in [-num_embeddings, num_embeddings), as a row number (negative counts from the end)."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx must be an int or None, got {type(padding_idx).__name__} {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}) (num_embeddings = "
            f"{num_embeddings}), got {padding_idx}"
        )
    return int(padding_idx) % num_embeddings
