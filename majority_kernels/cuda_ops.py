"""The `cuda` backend's linear layer: the choice between the fused small-M forward (the op
`majority_kernels::mixed_linear`: CUDA kernel in csrc/cuda, fake and autograd in majority_kernels.ops) and
combine + cuBLAS.

With few input rows, reading the e copies of W is the whole cost of the layer: `mixed_linear` reads them once,
mixes in registers and never writes W_eff. With many rows the GEMM dominates and the fused kernel would re-run the
RNG per tile of rows, so W_eff is combined once and handed to cuBLAS (F.linear). The backward is the same for both:
W_eff combined again from the same (seed, offset), dX = dY W_eff, dW_eff = dY^T X, then scattered to the copies.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import paths, tuning

_HALF_FLOATS = (torch.bfloat16, torch.float16)


def fused_supports(weight_dtype: torch.dtype, input_dtype: torch.dtype) -> bool:
    """Whether the fused kernel is built for these dtypes: equal, or float32 with bfloat16 / float16 either way."""
    return (
        weight_dtype == input_dtype
        or (weight_dtype == torch.float32 and input_dtype in _HALF_FLOATS)
        or (weight_dtype in _HALF_FLOATS and input_dtype == torch.float32)
    )


def linear_path(
    rows: int, weight_dtype: torch.dtype, input_dtype: torch.dtype, device: torch.device, expansion: int
) -> str:
    """ "fused" or "combine": the path for `rows` input rows on `device`, unless one is forced
    (majority_kernels.paths). The fused forward runs up to the GPU's tuning.Thresholds.cuda_fused_max_rows rows,
    and never unforced for one copy (nothing to mix: the dense layer's own GEMM, bit for bit). The weight
    gradient has one path here, scatter: forcing the fused one raises."""
    forced = paths.forced()
    if forced.wgrad == "fused":
        raise ValueError(
            f"dW path 'fused' ({paths.WGRAD_VARIABLE} or force_paths): backend 'cuda' has only "
            "'scatter' (torch's GEMM, then scatter); the fused dW GEMM is the triton backend's"
        )
    if forced.forward == "fused" and not fused_supports(weight_dtype, input_dtype):
        raise ValueError(
            f"forward path 'fused' ({paths.FORWARD_VARIABLE} or force_paths): the fused kernel has "
            f"no build for weight {weight_dtype} with input {input_dtype}"
        )
    if forced.forward is not None:
        return forced.forward
    fused = (
        expansion > 1
        and rows <= tuning.for_device(device).cuda_fused_max_rows
        and fused_supports(weight_dtype, input_dtype)
    )
    return "fused" if fused else "combine"


def linear(
    input: Tensor, weight: Tensor, bias: Optional[Tensor], seed: Tensor, offset: int, out_dtype: torch.dtype
) -> Tensor:
    """F.linear(input, combine(weight), bias) computed in out_dtype (the autocast dtype under autocast: custom ops
    are not autocast-aware, so input and bias are cast here)."""
    x = input.to(out_dtype)
    b = bias.to(out_dtype) if bias is not None else None
    out_features, in_features = weight.shape[1], weight.shape[2]
    rows = math.prod(x.shape[:-1])
    if linear_path(rows, weight.dtype, out_dtype, weight.device, weight.shape[0]) == "fused":
        y = torch.ops.majority_kernels.mixed_linear(x.reshape(rows, in_features), weight, b, seed, offset)
        return y.view(*x.shape[:-1], out_features)
    return F.linear(x, torch.ops.majority_kernels.combine(weight, seed, offset, out_dtype), b)
