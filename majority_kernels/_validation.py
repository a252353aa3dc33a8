"""Argument checks shared by the functional API and the layers: each raises with a message naming the argument."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

SEED_LIMIT = 2**63
OFFSET_LIMIT = 2**64


def check_expansion(expansion: object) -> int:
    if isinstance(expansion, bool) or not isinstance(expansion, numbers.Integral):
        raise TypeError(f"expansion must be an int >= 1, got {type(expansion).__name__} {expansion!r}")
    if expansion < 1:
        raise ValueError(f"expansion must be >= 1, got {expansion}")
    return int(expansion)


def check_init(init: object) -> str:
    if init not in ("replicate", "independent"):
        raise ValueError(f"init must be 'replicate' or 'independent', got {init!r}")
    return init


def _check_seed_range(seed: int) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must lie in [0, 2^63), got {seed}")


def seed_tensor(seed: object, device: torch.device) -> Tensor:
    """The seed as a one-element int64 tensor on `device` (where the kernels read it)."""
    if isinstance(seed, Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"seed tensor must hold one int64 value, got dtype {seed.dtype} and shape "
                            f"{tuple(seed.shape)}")
        # Eager CPU values are checked here; others where the kernel reads them (no device sync here).
        if seed.device.type == "cpu" and not torch.compiler.is_compiling():
            _check_seed_range(int(seed))
        return seed.reshape(()).to(device)
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
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, bfloat16, float16), "
                        f"got {tensor.dtype}")
    return tensor


def check_expanded_weight(weight: object, dense_dims: int, layout: str) -> Tensor:
    """weight must be [expansion, *dense weight shape] with dense_dims dense dimensions."""
    weight = check_floating(weight, "weight")
    if weight.dim() != dense_dims + 1:
        hint = (" (a dense weight without the expansion dimension? use weight.unsqueeze(0) for expansion 1)"
                if weight.dim() == dense_dims else "")
        raise ValueError(f"weight must have shape {layout}, {dense_dims + 1}-D with the expansion dimension first; "
                         f"got shape {tuple(weight.shape)}{hint}")
    if weight.shape[0] < 1:
        raise ValueError(f"weight's expansion dimension must be >= 1, got shape {tuple(weight.shape)}")
    return weight


def compute_dtype(input: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype the dense op runs in: the autocast dtype when autocast is on, else weight's (input must match)."""
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if input.dtype != weight.dtype:
        raise TypeError(f"input and weight must have the same dtype, got input {input.dtype} and weight "
                        f"{weight.dtype} (or run under torch.autocast)")
    return weight.dtype


def check_same_device(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if input.device != weight.device:
        raise ValueError(f"input and weight must be on the same device, got input on {input.device} and weight "
                         f"on {weight.device}")
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
            raise IndexError(f"input holds index {int(indices[bad][0])}, out of range for an embedding table of "
                             f"{num_embeddings} rows")
    elif indices.device.type == "cuda" and indices.numel() > 0:
        # No host sync on a GPU: a device-side assert, the error nn.Embedding gives there too.
        torch._assert_async(((indices >= 0) & (indices < num_embeddings)).all(),
                            "majority_embedding: an index is out of range for the embedding table")
    return indices


def check_padding_idx(padding_idx: object, num_embeddings: int) -> int | None:
    """padding_idx in [-num_embeddings, num_embeddings), as a row number (negative counts from the end)."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx must be an int or None, got {type(padding_idx).__name__} {padding_idx!r}")
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must lie in [-{num_embeddings}, {num_embeddings}) (num_embeddings = "
                         f"{num_embeddings}), got {padding_idx}")
    return int(padding_idx) % num_embeddings
