"""The fused linear forward: C = A @ W_eff^T (or A @ W_eff) where the weight-tile load builds the W_eff tile from
the e copies and the in-register RNG (mixing.mix): W_eff is never written.

The mixed weight is addressed through strides: its element at (reduction row q, output column p) has the flat
index q * stride_wq + p * stride_wp in the dense [N, K] weight (and the same index draws its P). Forward
x @ W_eff^T: q runs over K, p over N (strides 1, K). Input gradient dY @ W_eff: q over N, p over K (strides K, 1).
The draws and the e-fold loads are redone for every row tile of A, so this pays at small M only.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from .mixing import cast_to, mix
from .tiling import check_dot_dtype, configs, deepest_fitting, dot, dot_options, grouped_tile, size_bucket

# (BLOCK_M, BLOCK_P, BLOCK_Q, GROUP_M, num_warps, num_stages). The mixed weight tile is built in registers: at
# more than 16 of its elements per thread the draws spill (checked with sm_90 builds), hence the (BLOCK_P, BLOCK_Q,
# num_warps) pairs. The row tile follows M (_fitting); 3 stages where the e copies' tiles fit in shared memory,
# else 1. Provisional set, to tune with the GPU benchmark.
# The 128-row tiles take 8 warps: with 4, the 128 x 64 accumulator and the mixing's values spill (sm_90 builds).
_GPU = [(rows, p, q, 8, 8 if rows == 128 else warps, stages) for rows in (16, 32, 64, 128)
        for p, q, warps in ((64, 32, 4), (64, 64, 8)) for stages in (3, 1)]
_INTERPRETER = (16, 32, 32, 2, 4, 1)


def _fitting(configs_: list, named_args: dict, **kwargs) -> list:
    """Per tile shape: the row tile of M's size bucket (16 to 128), with the most stages that fit."""
    rows = min(max(16, named_args["M_BUCKET"]), 128)
    return deepest_fitting([config for config in configs_ if config.kwargs["BLOCK_M"] == rows],
                           kwargs["EXPANSION"], named_args["weight_ptr"], named_args["a_ptr"])


@triton.autotune(configs=configs(("BLOCK_M", "BLOCK_P", "BLOCK_Q", "GROUP_M"), _GPU, _INTERPRETER),
                 key=["M_BUCKET", "P", "Q", "stride_wq", "EXPANSION"],
                 prune_configs_by={"early_config_prune": _fitting})
@triton.jit(do_not_specialize=["offset"])
def mixed_matmul_kernel(a_ptr, weight_ptr, bias_ptr, c_ptr, seed_ptr, offset, M, P, Q, stride_am, stride_aq,
                        stride_cm, stride_cp, stride_wq, stride_wp, copy_stride, M_BUCKET,
                        EXPANSION: tl.constexpr, HAS_BIAS: tl.constexpr, MATH64: tl.constexpr,
                        UPCAST_16BIT: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, GROUP_M: tl.constexpr):
    tile_m, tile_p = grouped_tile(tl.program_id(0), M, P, BLOCK_M, BLOCK_P, GROUP_M)
    rows = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tile_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_in = rows < M
    column_in = columns < P
    seed = tl.load(seed_ptr)
    copy_stride = tl.cast(copy_stride, tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_P), tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for start in range(0, Q, BLOCK_Q):
        reduction = start + tl.arange(0, BLOCK_Q).to(tl.int64)
        reduction_in = reduction < Q
        a = tl.load(a_ptr + rows[:, None] * stride_am + reduction[None, :] * stride_aq,
                    mask=row_in[:, None] & reduction_in[None, :], other=0.0)
        index = reduction[:, None] * stride_wq + columns[None, :] * stride_wp
        w_mask = reduction_in[:, None] & column_in[None, :]
        mixed = mix(weight_ptr, copy_stride, index, w_mask, seed, offset, index, EXPANSION, MATH64)
        # W_eff rounded to the compute dtype, as the combine path would store it.
        acc = dot(a, cast_to(mixed, a.dtype), acc, UPCAST_16BIT, INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + columns, mask=column_in, other=0.0).to(acc.dtype)[None, :]
    tl.store(c_ptr + rows[:, None] * stride_cm + columns[None, :] * stride_cp, cast_to(acc, c_ptr.dtype.element_ty),
             mask=row_in[:, None] & column_in[None, :])


def mixed_matmul(a: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor,
                 offset: int, transposed: bool, out: torch.Tensor) -> None:
    """out = a @ W_eff^T + bias (transposed=False; a [M, K], out [M, N]) or a @ W_eff (transposed=True; a [M, N],
    out [M, K]) for the contiguous weight [e, N, K]; a, bias and out in the compute dtype."""
    check_dot_dtype(a.dtype)
    _, n, k = weight.shape
    m, p = out.shape
    q = a.shape[1]
    if m == 0 or p == 0:
        return
    stride_wq, stride_wp = (k, 1) if transposed else (1, k)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(p, meta["BLOCK_P"]),)

    mixed_matmul_kernel[grid](a, weight, bias if bias is not None else out, out, seed, offset, m, p, q,
                              a.stride(0), a.stride(1), out.stride(0), out.stride(1), stride_wq, stride_wp, n * k,
                              size_bucket(m), EXPANSION=weight.shape[0], HAS_BIAS=bias is not None,
                              MATH64=a.dtype == torch.float64, **dot_options(a.dtype))
