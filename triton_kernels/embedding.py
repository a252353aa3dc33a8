"""Embedding lookups of the mixed table: only the looked-up rows are mixed (mixing.mix), and the gradient adds
P_k * grad into those rows of every copy (mixing.spread with atomics: repeated indices hit the same rows).

Each element draws its P from its flat index row * dim + column in the full [rows, dim] table, as in the
reference. Indices outside [0, rows) fail a device assert under TRITON_DEBUG=1 and are masked otherwise (no
access, zero output, no gradient): callers reject them beforehand where that needs no device sync.
"""

import torch
import triton
import triton.language as tl

from .mixing import ATOMIC_ADD, cast_to, mix, spread

# Lookups x columns per program: about 1024 elements, columns in tiles of up to 128.
ELEMENTS = 1024
MAX_BLOCK_COLUMNS = 128
NUM_WARPS = 4


@triton.jit
def _lookup_tile(indices_ptr, lookups, rows, dim, BLOCK_LOOKUPS: tl.constexpr, BLOCK_COLUMNS: tl.constexpr):
    """This program's lookups x columns tile: the flat table indices, the flat positions in [lookups, dim], which
    positions exist, and which of those look up a row of the table."""
    lookup = tl.program_id(0).to(tl.int64) * BLOCK_LOOKUPS + tl.arange(0, BLOCK_LOOKUPS)
    column = tl.program_id(1).to(tl.int64) * BLOCK_COLUMNS + tl.arange(0, BLOCK_COLUMNS)
    in_tile = (lookup < lookups)[:, None] & (column < dim)[None, :]
    row = tl.load(indices_ptr + lookup, mask=lookup < lookups, other=0).to(tl.int64)
    tl.device_assert((row >= 0) & (row < rows), "embedding index out of range")  # with TRITON_DEBUG=1 only
    in_table = in_tile & ((row >= 0) & (row < rows))[:, None]
    return row[:, None] * dim + column[None, :], lookup[:, None] * dim + column[None, :], in_tile, in_table


@triton.jit(do_not_specialize=["offset"])
def gather_kernel(weight_ptr, indices_ptr, out_ptr, seed_ptr, offset, lookups, rows, dim,
                  EXPANSION: tl.constexpr, MATH64: tl.constexpr, BLOCK_LOOKUPS: tl.constexpr,
                  BLOCK_COLUMNS: tl.constexpr):
    index, position, in_tile, in_table = _lookup_tile(indices_ptr, lookups, rows, dim, BLOCK_LOOKUPS,
                                                      BLOCK_COLUMNS)
    mixed = mix(weight_ptr, tl.cast(rows, tl.int64) * dim, index, in_table, tl.load(seed_ptr), offset, index,
                EXPANSION, MATH64)
    tl.store(out_ptr + position, cast_to(mixed, out_ptr.dtype.element_ty), mask=in_tile)  # 0 outside the table


@triton.jit(do_not_specialize=["offset"])
def scatter_add_kernel(grad_ptr, indices_ptr, out_ptr, seed_ptr, offset, lookups, rows, dim,
                       EXPANSION: tl.constexpr, MATH64: tl.constexpr, BLOCK_LOOKUPS: tl.constexpr,
                       BLOCK_COLUMNS: tl.constexpr):
    index, position, _, in_table = _lookup_tile(indices_ptr, lookups, rows, dim, BLOCK_LOOKUPS, BLOCK_COLUMNS)
    grad = tl.load(grad_ptr + position, mask=in_table, other=0.0)
    spread(out_ptr, tl.cast(rows, tl.int64) * dim, index, in_table, grad, tl.load(seed_ptr), offset, index,
           EXPANSION, MATH64, ATOMIC_ADD)


def _grid_and_blocks(lookups: int, dim: int) -> tuple[tuple[int, int], dict]:
    columns = min(triton.next_power_of_2(dim), MAX_BLOCK_COLUMNS)
    block_lookups = max(1, ELEMENTS // columns)
    grid = (triton.cdiv(lookups, block_lookups), triton.cdiv(dim, columns))
    return grid, {"BLOCK_LOOKUPS": block_lookups, "BLOCK_COLUMNS": columns, "num_warps": NUM_WARPS}


def _launch(kernel, source: torch.Tensor, indices: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor,
            table_shape: torch.Size, math64: bool) -> None:
    """One program per block of lookups and of columns; nothing to do without lookups or columns."""
    expansion, rows, dim = table_shape
    lookups = indices.numel()
    if lookups == 0 or dim == 0:
        return
    grid, blocks = _grid_and_blocks(lookups, dim)
    kernel[grid](source, indices, out, seed, offset, lookups, rows, dim, EXPANSION=expansion, MATH64=math64, **blocks)


def gather(weight: torch.Tensor, indices: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor) -> None:
    """out[t] = sum_k P_k * weight[k, indices[t]] for a contiguous table [e, rows, dim], flat indices [T] and
    out [T, dim]."""
    _launch(gather_kernel, weight, indices, seed, offset, out, weight.shape, torch.float64 in (weight.dtype, out.dtype))


def scatter_add(grad: torch.Tensor, indices: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor) -> None:
    """out[k, indices[t]] += P_k * grad[t] (atomically) for contiguous grad [T, dim], flat indices [T] and a
    float32 / float64 out [e, rows, dim]."""
    _launch(scatter_add_kernel, grad, indices, seed, offset, out, out.shape, out.dtype == torch.float64)
