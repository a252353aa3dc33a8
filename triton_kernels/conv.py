"""The fused 2-D convolution forward (a prototype, to measure against combine + cuDNN): an implicit GEMM whose
weight-tile load builds the W_eff tile from the e copies and the in-register RNG (mixing.mix), as linear.py does.

GEMM view of out[b, co, oh, ow] = sum_{ci, kh, kw} x[b, ci, oh * sh - ph + kh * dh, ow * sw - pw + kw * dw]
* W_eff[co, ci, kh, kw]: rows m = (b, oh, ow), columns co, reduction q = (ci, kh, kw). The A tile is gathered
from x (zeros where the receptive field lies in the padding), so im2col is never materialised. The weight
element (q, co) has the flat index co * Q + q in the dense [C_out, C_in, KH, KW] weight, and that index draws its
P: the same P as combine's. NCHW, groups = 1, forward only. Like linear.py's fused GEMM, the draws and the e-fold
weight loads are redone for every row tile, so it can only pay where few row tiles cover B * H_out * W_out.
"""

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .mixing import cast_to, mix
from .tiling import check_dot_dtype, configs, deepest_fitting, dot, dot_options, grouped_tile, size_bucket

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# (BLOCK_M, BLOCK_P, BLOCK_Q, GROUP_M, num_warps, num_stages). The gathered A tile's addresses and padding masks
# add to the registers the mixed weight tile needs: these 8-warp tiles build for sm_90 (bfloat16) without spills
# but for 128 x 64 x 32 (up to ~60 bytes at e = 4, ~160 at e = 8), where linear.py's 4-warp tiles would spill
# hundreds. _fitting keeps, per tile, the most stages that fit in shared memory. Provisional set, to tune with the
# GPU benchmark.
_GPU = [(rows, p, q, 8, 8, stages) for rows, p, q in ((64, 64, 32), (64, 128, 16), (128, 64, 16), (128, 64, 32))
        for stages in (3, 1)]
_INTERPRETER = (16, 32, 32, 2, 4, 1)


def _fitting(configs_: list, named_args: dict, **kwargs) -> list:
    """Per tile shape, the configuration with the most stages that fit in shared memory (one stage always)."""
    return deepest_fitting(configs_, kwargs["EXPANSION"], named_args["weight_ptr"], named_args["x_ptr"])


@triton.autotune(configs=configs(("BLOCK_M", "BLOCK_P", "BLOCK_Q", "GROUP_M"), _GPU, _INTERPRETER),
                 key=["M_BUCKET", "C_in", "C_out", "KH", "KW", "EXPANSION"],
                 prune_configs_by={"early_config_prune": _fitting})
@triton.jit(do_not_specialize=["offset"])
def mixed_conv2d_kernel(x_ptr, weight_ptr, bias_ptr, out_ptr, seed_ptr, offset, C_in, H, W, C_out, H_out, W_out,
                        stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, M, M_BUCKET,
                        KH: tl.constexpr, KW: tl.constexpr, EXPANSION: tl.constexpr, HAS_BIAS: tl.constexpr,
                        MATH64: tl.constexpr, UPCAST_16BIT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
                        GROUP_M: tl.constexpr):
    q_total = C_in * KH * KW
    tile_m, tile_p = grouped_tile(tl.program_id(0), M, C_out, BLOCK_M, BLOCK_P, GROUP_M)
    rows = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tile_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_in = rows < M
    column_in = columns < C_out
    # Each row's output pixel and the top-left input position of its receptive field (negative in the padding).
    # The coordinates fit in int32 (they lie within H and W plus the padding); every address is int64.
    pixels = tl.cast(H_out, tl.int64) * W_out
    image = rows // pixels
    pixel = rows % pixels
    top = ((pixel // W_out) * stride_h - pad_h).to(tl.int32)
    left = ((pixel % W_out) * stride_w - pad_w).to(tl.int32)
    row_start = image * C_in * H * W + top.to(tl.int64) * W + left
    seed = tl.load(seed_ptr)
    copy_stride = tl.cast(C_out, tl.int64) * q_total
    acc = tl.zeros((BLOCK_M, BLOCK_P), tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32)
    for start in range(0, q_total, BLOCK_Q):
        reduction = start + tl.arange(0, BLOCK_Q)  # int32, like q_total: C_in * KH * KW
        reduction_in = reduction < q_total
        tap = reduction % (KH * KW)
        down = tap // KW * dilation_h
        right = tap % KW * dilation_w
        ih = top[:, None] + down[None, :]
        iw = left[:, None] + right[None, :]
        # One unsigned comparison per bound pair: negative coordinates wrap to large values.
        inside = ((ih.to(tl.uint32, bitcast=True) < tl.cast(H, tl.uint32))
                  & (iw.to(tl.uint32, bitcast=True) < tl.cast(W, tl.uint32)))
        a_mask = row_in[:, None] & reduction_in[None, :] & inside
        column_start = (reduction // (KH * KW)).to(tl.int64) * H * W + down.to(tl.int64) * W + right
        a = tl.load(x_ptr + row_start[:, None] + column_start[None, :], mask=a_mask, other=0.0)
        index = reduction.to(tl.int64)[:, None] + columns[None, :] * q_total
        w_mask = reduction_in[:, None] & column_in[None, :]
        mixed = mix(weight_ptr, copy_stride, index, w_mask, seed, offset, index, EXPANSION, MATH64)
        # W_eff rounded to the compute dtype, as the combine path would store it.
        acc = dot(a, cast_to(mixed, a.dtype), acc, UPCAST_16BIT, INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + columns, mask=column_in, other=0.0).to(acc.dtype)[None, :]
    out = out_ptr + (image * C_out * pixels + pixel)[:, None] + (columns * pixels)[None, :]
    tl.store(out, cast_to(acc, out_ptr.dtype.element_ty), mask=row_in[:, None] & column_in[None, :])


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair (ValueError naming `name` otherwise)."""
    values = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return values


def _check(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor,
           groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D NCHW tensor [batch, in_channels, height, width], got shape "
                         f"{tuple(x.shape)}")
    if weight.dim() != 5:
        raise ValueError(f"weight must be 5-D [expansion, out_channels, in_channels, kh, kw], got shape "
                         f"{tuple(weight.shape)}")
    if groups != 1:
        raise ValueError(f"the fused convolution supports groups = 1 only, got groups = {groups}")
    if weight.shape[0] < 1 or weight.shape[3] < 1 or weight.shape[4] < 1:
        raise ValueError(f"weight's expansion and kernel dimensions must be >= 1, got shape {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[2]:
        raise ValueError(f"x has {x.shape[1]} channels but weight [expansion, out_channels, in_channels, kh, kw] "
                         f"expects {weight.shape[2]} (groups = 1 only); x {tuple(x.shape)}, weight "
                         f"{tuple(weight.shape)}")
    for name, tensor in (("x", x), ("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype not in DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {tensor.dtype}")
        if tensor is not None and tensor.device != weight.device:
            raise ValueError(f"{name} must be on weight's device {weight.device}, got {tensor.device}")
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (weight.shape[1],)):
        raise ValueError(f"bias must be a ({weight.shape[1]},) tensor of x's dtype {x.dtype}, got "
                         f"{tuple(bias.shape)} {bias.dtype}")
    if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != weight.device:
        raise ValueError(f"seed must be a one-element int64 tensor on {weight.device}, got {seed.dtype} "
                         f"{tuple(seed.shape)} on {seed.device}")


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The output length of one spatial dimension, as torch's convolutions compute it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def mixed_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], seed: torch.Tensor,
                 offset: int, stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                 dilation: Sequence[int] = (1, 1), groups: int = 1) -> torch.Tensor:
    """F.conv2d(x, W_eff, bias, stride, padding, dilation) for x [B, C_in, H, W] and the copies weight
    [e, C_out, C_in, KH, KW], W_eff mixed inside the GEMM (P of (seed, offset), docs/design.md section 4) and rounded
    to x's dtype; the output [B, C_out, H_out, W_out] in x's dtype. Inputs that are not contiguous are copied."""
    _check(x, weight, bias, seed, groups)
    check_dot_dtype(x.dtype)
    (stride_h, stride_w), (pad_h, pad_w) = pair(stride, "stride", 1), pair(padding, "padding", 0)
    dilation_h, dilation_w = pair(dilation, "dilation", 1)
    batch, c_in, height, width = x.shape
    expansion, c_out, _, kh, kw = weight.shape
    h_out = output_size(height, kh, stride_h, pad_h, dilation_h)
    w_out = output_size(width, kw, stride_w, pad_w, dilation_w)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"the (padded) input {height + 2 * pad_h}x{width + 2 * pad_w} is smaller than the "
                         f"(dilated) kernel {dilation_h * (kh - 1) + 1}x{dilation_w * (kw - 1) + 1}")
    out = x.new_empty((batch, c_out, h_out, w_out))
    m = batch * h_out * w_out
    if m == 0 or c_out == 0:
        return out
    x, weight = x.contiguous(), weight.contiguous()

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(c_out, meta["BLOCK_P"]),)

    mixed_conv2d_kernel[grid](x, weight, bias.contiguous() if bias is not None else out, out, seed, offset, c_in,
                              height, width, c_out, h_out, w_out, stride_h, stride_w, pad_h, pad_w, dilation_h,
                              dilation_w, m, size_bucket(m), KH=kh, KW=kw, EXPANSION=expansion,
                              HAS_BIAS=bias is not None,
                              MATH64=torch.float64 in (x.dtype, weight.dtype), **dot_options(x.dtype))
    return out
