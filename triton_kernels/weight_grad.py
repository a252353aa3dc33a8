"""The fused weight gradient: dW_eff = dY^T X as a GEMM whose epilogue regenerates P for its tile and writes (or
adds to) the e copies' gradients P_k * dW_eff directly (mixing.spread): dW_eff never goes to memory."""

import torch
import triton
import triton.language as tl

from .mixing import ADD, STORE, spread
from .tiling import check_dot_dtype, configs, dot, dot_options, grouped_tile, size_bucket

# (BLOCK_N, BLOCK_K, BLOCK_M, GROUP_N, num_warps, num_stages); M is the reduction. The epilogue holds the draws
# of all copies of its tile: with more than 16 output elements per thread it spills registers (checked with
# sm_90 builds), hence 64 x 64 output tiles over 8 warps. Provisional set, to tune with the GPU benchmark.
_GPU = [(64, 64, 32, 8, 8, 3), (64, 64, 64, 8, 8, 3), (64, 64, 64, 8, 8, 4), (64, 64, 128, 8, 8, 3)]
_INTERPRETER = (32, 32, 16, 2, 4, 1)
_NAMES = ("BLOCK_N", "BLOCK_K", "BLOCK_M", "GROUP_N")
_KEY = ["N", "K", "M_BUCKET", "EXPANSION"]


@triton.jit(do_not_specialize=["offset"])
def weight_grad_kernel(grad_ptr, x_ptr, out_ptr, seed_ptr, offset, M, N, K, stride_gm, stride_gn, stride_xm,
                       stride_xk, M_BUCKET, EXPANSION: tl.constexpr, MATH64: tl.constexpr, MODE: tl.constexpr,
                       UPCAST_16BIT: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_N: tl.constexpr):
    tile_n, tile_k = grouped_tile(tl.program_id(0), N, K, BLOCK_N, BLOCK_K, GROUP_N)
    ns = tile_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tile_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    n_in = ns < N
    k_in = ks < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for start in range(0, M, BLOCK_M):
        ms = start + tl.arange(0, BLOCK_M).to(tl.int64)
        m_in = ms < M
        grad_t = tl.load(grad_ptr + ms[None, :] * stride_gm + ns[:, None] * stride_gn,
                         mask=n_in[:, None] & m_in[None, :], other=0.0)
        x = tl.load(x_ptr + ms[:, None] * stride_xm + ks[None, :] * stride_xk, mask=m_in[:, None] & k_in[None, :],
                    other=0.0)
        acc = dot(grad_t, x, acc, UPCAST_16BIT, INPUT_PRECISION)
    index = ns[:, None] * K + ks[None, :]
    mask = n_in[:, None] & k_in[None, :]
    spread(out_ptr, tl.cast(N, tl.int64) * K, index, mask, acc, tl.load(seed_ptr), offset, index, EXPANSION, MATH64,
           MODE)


def _tuned(restore_out: bool):
    # Accumulating launches must see the same gradient on every timed trial: restore it in between.
    return triton.autotune(configs=configs(_NAMES, _GPU, _INTERPRETER), key=_KEY,
                           restore_value=["out_ptr"] if restore_out else None)(weight_grad_kernel)


_write_kernel, _add_kernel = _tuned(False), _tuned(True)


def weight_grad(grad_out: torch.Tensor, x: torch.Tensor, seed: torch.Tensor, offset: int, out: torch.Tensor,
                accumulate: bool) -> None:
    """out[k] = P_k * (grad_out^T @ x) (or +=) for grad_out [M, N], x [M, K] (same dtype) and a contiguous
    out [e, N, K]."""
    check_dot_dtype(grad_out.dtype)
    m, n = grad_out.shape
    k = x.shape[1]
    if n == 0 or k == 0:
        return

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(k, meta["BLOCK_K"]),)

    kernel = _add_kernel if accumulate else _write_kernel
    kernel[grid](grad_out, x, out, seed, offset, m, n, k, grad_out.stride(0), grad_out.stride(1), x.stride(0),
                 x.stride(1), size_bucket(m), EXPANSION=out.shape[0],
                 MATH64=torch.float64 in (x.dtype, out.dtype), MODE=ADD if accumulate else STORE,
                 **dot_options(x.dtype))
