"""Functional API: the mixing weights, the fused combination, and the mixed linear, convolution and embedding
ops.

Every op takes `seed` (an int in [0, 2^63) or a one-element int64 tensor on the weight's device) and `offset` (an
int in [0, 2^64)) and follows docs/design.md section 4, whichever backend runs it. Forward = combine (P generated
inside the kernel) then the dense op; backward = the dense op's gradients with W_eff, then scatter with P
regenerated from the same seed. P is never stored: the tensors kept for the backward are the input and W_eff,
whatever the expansion.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validation as check
from .backends import backend_for

Seed = Union[int, Tensor]
IntOrTuple = Union[int, Sequence[int]]


def draw_seed(weight: Tensor, input: Optional[Tensor] = None) -> Tensor:
    """A fresh seed for mixing `weight` (applied to `input`), drawn from the torch generator of weight's device,
    as an int64 tensor there: the layers' per-step seed.

    Drawn like any other random op, so it follows torch.manual_seed, is restored by torch.utils.checkpoint's RNG
    preservation and by saving the RNG state, and is equal on data-parallel ranks seeded alike.
    """
    return torch.ops.majority_kernels.draw_seed(weight, input)


def mixing_weights(
    expansion: int,
    shape: Union[int, Sequence[int]],
    seed: Seed,
    offset: int = 0,
    *,
    device: Optional[torch.device | str] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """P of shape [expansion, *shape], materialised (for tests and inspection; the kernels never do this)."""
    expansion = check.check_expansion(expansion)
    shape = check.check_shape(shape, expansion)
    dtype = check.check_float_dtype(dtype, "dtype")
    device = (
        torch.device(device)
        if device is not None
        else (seed.device if isinstance(seed, Tensor) else torch.device("cpu"))
    )
    p = backend_for(device).mixing_weights(
        check.seed_tensor(seed, device), check.signed_offset(offset), expansion, math.prod(shape)
    )
    return p.to(dtype).view(expansion, *shape)


def combine(weight: Tensor, seed: Seed, offset: int = 0, *, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """W_eff = sum_k P_k * weight[k] for weight [expansion, ...], in out_dtype (default weight's dtype).

    Fused: P is generated inside the kernel and never materialised; differentiable (the backward scatters).
    """
    weight = check.check_floating(weight, "weight")
    if weight.dim() < 1 or weight.shape[0] < 1:
        raise ValueError(
            f"weight must have a leading expansion dimension of size >= 1, got shape {tuple(weight.shape)}"
        )
    if out_dtype is not None:
        check.check_float_dtype(out_dtype, "out_dtype")
    return backend_for(weight.device).combine(
        weight, check.seed_tensor(seed, weight.device), check.signed_offset(offset), out_dtype
    )


def scatter(
    grad: Tensor,
    seed: Seed,
    offset: int,
    expansion: int,
    *,
    accumulate_into: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Every copy's gradient P_k * grad, shape [expansion, *grad.shape].

    With `accumulate_into` (an existing [expansion, *grad.shape] gradient) it is added in place, with no temporary
    of that size, and returned.
    """
    grad = check.check_floating(grad, "grad")
    expansion = check.check_expansion(expansion)
    check.check_numel(expansion, grad.numel(), "grad")
    if out_dtype is not None:
        check.check_float_dtype(out_dtype, "out_dtype")
    seed_t, offset = check.seed_tensor(seed, grad.device), check.signed_offset(offset)
    backend = backend_for(grad.device)
    if accumulate_into is None:
        return backend.scatter(grad, seed_t, offset, expansion, out_dtype)
    target = check.check_accumulate_into(accumulate_into, grad, expansion)
    backend.scatter_add_(target, grad, seed_t, offset)
    return target


def _mixed_weight(input: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Seed, offset: int) -> Tensor:
    check.check_same_device(input, weight, bias)
    out_dtype = check.compute_dtype(input, weight)
    return combine(weight, seed, offset, out_dtype=out_dtype)


def majority_linear(
    input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, seed: Seed, offset: int = 0
) -> Tensor:
    """F.linear(input, combine(weight, seed, offset), bias) for weight [expansion, out_features, in_features]."""
    weight = check.check_expanded_weight(weight, 2, "[expansion, out_features, in_features]")
    bias = check.check_bias(bias, weight.shape[1])
    check.check_floating(input, "input")
    if input.dim() < 1 or input.shape[-1] != weight.shape[2]:
        raise ValueError(
            f"input's last dimension must equal in_features = {weight.shape[2]}, got input of shape "
            f"{tuple(input.shape)}"
        )
    check.check_same_device(input, weight, bias)
    backend = backend_for(weight.device)
    if backend.linear is not None:  # the backend's own paths (fused GEMMs), chosen by shape
        return backend.linear(
            input,
            weight,
            bias,
            check.seed_tensor(seed, weight.device),
            check.signed_offset(offset),
            check.compute_dtype(input, weight),
        )
    return F.linear(input, _mixed_weight(input, weight, bias, seed, offset), bias)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_function(dims: int, kernel: str) -> Callable[..., Tensor]:
    """majority_conv{dims}d, with F.conv{dims}d's arguments: one definition for the three."""

    def majority_conv(
        input: Tensor,
        weight: Tensor,
        bias: Optional[Tensor] = None,
        stride: IntOrTuple = 1,
        padding: Union[IntOrTuple, str] = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        *,
        seed: Seed,
        offset: int = 0,
    ) -> Tensor:
        weight = check.check_expanded_weight(
            weight, dims + 2, f"[expansion, out_channels, in_channels / groups, {kernel}]"
        )
        bias = check.check_bias(bias, weight.shape[1])
        check.check_floating(input, "input")
        if input.dim() not in (dims + 1, dims + 2):
            raise ValueError(
                f"conv{dims}d input must be {dims + 2}-D (batched) or {dims + 1}-D (unbatched), got shape "
                f"{tuple(input.shape)}"
            )
        channels = input.shape[-dims - 1]
        if channels != weight.shape[2] * groups:
            raise ValueError(
                f"input has {channels} channels but weight expects in_channels / groups * groups = "
                f"{weight.shape[2]} * {groups}; input shape {tuple(input.shape)}, weight shape "
                f"{tuple(weight.shape)}"
            )
        mixed = _mixed_weight(input, weight, bias, seed, offset)
        return _CONV[dims](input, mixed, bias, stride, padding, dilation, groups)

    majority_conv.__name__ = majority_conv.__qualname__ = f"majority_conv{dims}d"
    majority_conv.__doc__ = (
        f"F.conv{dims}d with the mixed kernel of weight [expansion, out_channels, in_channels / groups, {kernel}]."
    )
    return majority_conv


majority_conv1d = _conv_function(1, "k")
majority_conv2d = _conv_function(2, "kh, kw")
majority_conv3d = _conv_function(3, "kd, kh, kw")


def majority_embedding(
    input: Tensor, weight: Tensor, padding_idx: Optional[int] = None, *, seed: Seed, offset: int = 0
) -> Tensor:
    """F.embedding(input, combine(weight, seed, offset), padding_idx) for weight [expansion, num_embeddings,
    embedding_dim], mixing only the rows that `input` (int64 or int32 indices, any shape) looks up: each element
    gets the P of its flat index in the full table, so the rows equal those of the fully mixed table.

    The output has weight's dtype, also under autocast (as F.embedding). The backward adds P_k * grad to the
    looked-up rows of every copy; the padding_idx row gets no gradient. max_norm, scale_grad_by_freq and sparse
    gradients are not supported.
    """
    weight = check.check_expanded_weight(weight, 2, "[expansion, num_embeddings, embedding_dim]")
    input = check.check_indices(input, weight.shape[1], weight)
    padding_idx = check.check_padding_idx(padding_idx, weight.shape[1])
    out = backend_for(weight.device).embedding_combine(
        weight, input, check.seed_tensor(seed, weight.device), check.signed_offset(offset), None
    )
    if padding_idx is not None and out.requires_grad:
        # As F.embedding: the lookups of padding_idx pass no gradient back, so its row's gradient stays zero.
        out = torch.where((input == padding_idx).unsqueeze(-1), out.detach(), out)
    return out
