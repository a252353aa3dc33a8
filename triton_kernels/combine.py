"""combine: W_eff = sum_k P_k * weight[k] in one pass over the copies, P drawn in registers (mixing.mix)."""

import torch
import triton
import triton.language as tl

from .mixing import cast_to, mix

# The elements per program (BLOCK) are the launcher's argument: the GPU's tuned value (majority_kernels.tuning),
# spread over 4 warps.
NUM_WARPS = 4


@triton.jit(do_not_specialize=["offset"])
def combine_kernel(weight_ptr, out_ptr, seed_ptr, offset, numel, EXPANSION: tl.constexpr, MATH64: tl.constexpr,
                   BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = index < numel
    mixed = mix(weight_ptr, tl.cast(numel, tl.int64), index, in_bounds, tl.load(seed_ptr), offset, index,
                EXPANSION, MATH64)
    tl.store(out_ptr + index, cast_to(mixed, out_ptr.dtype.element_ty), mask=in_bounds)


def combine(weight: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor, block: int) -> None:
    """out = sum_k P_k * weight[k] for a contiguous weight [e, *shape] and a contiguous out [*shape], `block`
    elements (a power of two) per program."""
    numel = out.numel()
    if numel == 0:
        return
    math64 = torch.float64 in (weight.dtype, out.dtype)
    combine_kernel[(triton.cdiv(numel, block),)](weight, out, seed, offset, numel, EXPANSION=weight.shape[0],
                                                 MATH64=math64, BLOCK=block, num_warps=NUM_WARPS)
