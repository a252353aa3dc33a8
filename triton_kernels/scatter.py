"""scatter: every copy's gradient P_k * grad (written, or added in place), and P itself (mixing_weights)."""

from typing import Optional

import torch
import triton
import triton.language as tl

from .mixing import ADD, STORE, spread

# As combine's, the block is the launchers' argument; here each thread holds the sorted draws of its elements.
NUM_WARPS = 4


@triton.jit(do_not_specialize=["offset"])
def scatter_kernel(grad_ptr, out_ptr, seed_ptr, offset, numel, EXPANSION: tl.constexpr, MATH64: tl.constexpr,
                   MODE: tl.constexpr, HAS_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = index < numel
    if HAS_GRAD:
        value = tl.load(grad_ptr + index, mask=in_bounds, other=0.0)
    else:  # P itself
        value = tl.full(index.shape, 1.0, tl.float32)
    spread(out_ptr, tl.cast(numel, tl.int64), index, in_bounds, value, tl.load(seed_ptr), offset, index,
           EXPANSION, MATH64, MODE)


def _launch(grad: Optional[torch.Tensor], out: torch.Tensor, seed: torch.Tensor, offset: int, mode: int,
            block: int) -> None:
    numel = out[0].numel()
    if numel == 0:
        return
    math64 = torch.float64 in (out.dtype, grad.dtype if grad is not None else out.dtype)
    scatter_kernel[(triton.cdiv(numel, block),)](grad if grad is not None else out, out, seed, offset, numel,
                                                 EXPANSION=out.shape[0], MATH64=math64, MODE=mode,
                                                 HAS_GRAD=grad is not None, BLOCK=block, num_warps=NUM_WARPS)


def scatter(grad: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor, accumulate: bool,
            block: int) -> None:
    """out[k] = P_k * grad (or out[k] += P_k * grad) for a contiguous grad [*shape] and out [e, *shape], `block`
    elements (a power of two) per program."""
    _launch(grad, out, seed, offset, ADD if accumulate else STORE, block)


def mixing_weights(seed: torch.Tensor, offset: int, out: torch.Tensor, block: int) -> None:
    """out[k, i] = P[k, i] for a contiguous out [e, numel] (float32, or float64 computed in float64)."""
    _launch(None, out, seed, offset, STORE, block)
