"""A fused 2-D convolution forward on the Triton backend: an implicit-GEMM convolution (triton_kernels/conv.py)
that mixes the copies as it loads its weight tiles, with the same P as combine (W_eff never in memory, im2col
never built). Forward only, NCHW, groups = 1; no layer uses it. Importing this module registers its op,
`torch.ops.majority_kernels_triton.mixed_conv2d`; `majority-kernels bench --only conv-fused` measures it against
combine + cuDNN (docs/backends.md)."""

from typing import Optional, Sequence, Union

from torch import Tensor

from .. import _validation as check
from ..triton_kernels import conv as conv_kernels
from ..triton_ops._registry import custom_op

IntOrPair = Union[int, Sequence[int]]


@custom_op("mixed_conv2d")
def _mixed_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    seed: Tensor,
    offset: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> Tensor:
    """F.conv2d(x, W_eff, bias, stride, padding, dilation) for NCHW x and weight [e, C_out, C_in, KH, KW]
    (groups = 1 only), in x's dtype, W_eff built inside an implicit-GEMM convolution. No autograd formula."""
    return conv_kernels.mixed_conv2d(x, weight, bias, seed, offset, stride, padding, dilation, groups)


@_mixed_conv2d.register_fake
def _(x, weight, bias, seed, offset, stride, padding, dilation, groups):
    sizes = (
        conv_kernels.output_size(x.shape[2 + d], weight.shape[3 + d], stride[d], padding[d], dilation[d])
        for d in (0, 1)
    )
    return x.new_empty((x.shape[0], weight.shape[1], *sizes))


def conv2d_fused_forward(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    *,
    seed: Union[int, Tensor],
    offset: int = 0,
) -> Tensor:
    """The forward of mk.functional.majority_conv2d by the fused implicit-GEMM kernel: equal to combine then
    F.conv2d (same P, W_eff rounded to the compute dtype), without W_eff in memory. Input and bias are cast to the
    compute dtype (the autocast dtype, else weight's), as majority_conv2d would. A backward through its output
    raises."""
    check.check_floating(input, "input")
    check.check_floating(weight, "weight")
    dtype = check.compute_dtype(input, weight)
    pairs = [
        list(conv_kernels.pair(value, name, minimum))
        for value, name, minimum in ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1))
    ]
    return _mixed_conv2d(
        input.to(dtype),
        weight,
        None if bias is None else bias.to(dtype),
        check.seed_tensor(seed, weight.device),
        check.signed_offset(offset),
        *pairs,
        groups,
    )
