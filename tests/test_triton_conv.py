"""The fused implicit-GEMM convolution forward (triton_kernels/conv.py, a prototype for the benchmark) against the
float64 reference: F.conv2d on the reference's W_eff.

Without a GPU the kernel runs in Triton's interpreter (16 x 32 x 32 tiles there): the shapes are tiny and odd, so
that rows (batch x output pixels), output channels and the reduction (C_in x KH x KW) all cross their tiles.
"""

import os
import subprocess
import sys

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import EXPANSIONS, TOLERANCES, assert_gemm_matches_reference, needs_float64_dot, random_seed

import majority_kernels as mk
from majority_kernels import reference

DEVICE = helpers.TRITON_DEVICE
pytestmark = helpers.needs_triton
device_randn, device_seed = helpers.triton_randn, helpers.triton_seed

if helpers.TRITON_UNAVAILABLE is None:
    from majority_kernels.experimental import fused_conv
    from majority_kernels.triton_kernels import conv, tiling

    OPS = torch.ops.majority_kernels_triton

# (batch, C_in, C_out, H, W, kernel, stride, padding, dilation): 1 x 1 and 3 x 3 kernels, rectangular ones,
# stride 2, padding, dilation 2, a 1 x 1 image in a 3 x 3 kernel's padding; C_out = 33 and C_in x 9 = 45 cross
# the 32-wide tiles.
SHAPES = [
    (2, 3, 5, 7, 6, 3, 1, 1, 1),
    (1, 5, 33, 9, 8, 3, 2, 2, 1),
    (2, 7, 4, 5, 5, 1, 1, 0, 1),
    (1, 4, 6, 11, 10, 3, (2, 1), (3, 1), 2),
    (3, 2, 3, 4, 6, (1, 3), 1, (0, 2), (1, 2)),
    (5, 3, 2, 1, 1, 3, 1, 1, 1),
]


def _case(shape, expansion, generator, dtype=torch.float32, bias=True):
    batch, c_in, c_out, height, width, kernel = shape[:6]
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = device_randn(batch, c_in, height, width, generator=generator, dtype=dtype)
    weight = device_randn(expansion, c_out, c_in, kh, kw, generator=generator, dtype=dtype)
    return x, weight, device_randn(c_out, generator=generator, dtype=dtype) if bias else None


def _reference(x, weight, bias, seed, offset, stride, padding, dilation):
    """F.conv2d in float64 on the reference's W_eff, rounded to x's dtype as the kernel rounds it."""
    mixed = reference.combine(weight.cpu().double(), seed, offset).to(x.dtype).double()
    return F.conv2d(x.cpu().double(), mixed, None if bias is None else bias.cpu().double(), stride, padding, dilation)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(shape, bias, generator):
    x, weight, b = _case(shape, 3, generator, bias=bias)
    seed, offset = random_seed(generator), 2**63 - 7  # counters wrap past 2^64
    out = conv.mixed_conv2d(x, weight, b, device_seed(seed), offset, *shape[6:])
    assert out.dtype == x.dtype and out.is_contiguous()
    assert_gemm_matches_reference(out.cpu(), _reference(x, weight, b, seed, offset, *shape[6:]))


@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_every_expansion(expansion, generator):
    shape = SHAPES[1]
    x, weight, b = _case(shape, expansion, generator)
    seed = random_seed(generator)
    out = conv.mixed_conv2d(x, weight, b, device_seed(seed), 5, *shape[6:])
    assert_gemm_matches_reference(out.cpu(), _reference(x, weight, b, seed, 5, *shape[6:]))


@needs_float64_dot
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]])
def test_float64(shape, generator):
    x, weight, b = _case(shape, 5, generator, dtype=torch.float64)
    seed = random_seed(generator)
    out = conv.mixed_conv2d(x, weight, b, device_seed(seed), 9, *shape[6:])
    torch.testing.assert_close(out.cpu(), _reference(x, weight, b, seed, 9, *shape[6:]), **TOLERANCES[torch.float64])


def test_float64_without_float64_dot_is_refused(monkeypatch, generator):
    monkeypatch.setattr(tiling, "FLOAT64_DOT", False)  # Triton < 3.5
    x, weight, b = _case(SHAPES[1], 2, generator, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64 tiles"):
        conv.mixed_conv2d(x, weight, b, device_seed(1), 0, *SHAPES[1][6:])


def test_equals_combine_then_conv(generator):
    # The MK path (combine, then F.conv2d) computes the same convolution with the same float32 W_eff (in full
    # float32 on a GPU too: the kernel follows torch's matmul precision, "highest" by default, cuDNN its own flag).
    shape = SHAPES[3]
    x, weight, b = _case(shape, 4, generator)
    stride, padding, dilation = shape[6:]
    with mk.use_backend("triton"), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = mk.functional.majority_conv2d(x, weight, b, stride, padding, dilation, seed=77, offset=3)
    out = fused_conv.conv2d_fused_forward(x, weight, b, stride, padding, dilation, seed=77, offset=3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_autocast_bfloat16(generator):
    # Input and bias cast to the autocast dtype, W_eff rounded to it, as majority_conv2d does.
    shape = SHAPES[0]
    x, weight, b = _case(shape, 3, generator)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = fused_conv.conv2d_fused_forward(x, weight, b, padding=1, seed=21)
    assert out.dtype == torch.bfloat16
    expected = _reference(x.to(torch.bfloat16), weight, b, 21, 0, 1, 1, 1)
    torch.testing.assert_close(out.cpu().double(), expected, **TOLERANCES[torch.bfloat16])


def test_empty_batch(generator):
    x, weight, b = _case((0, 3, 4, 5, 5, 3), 2, generator)
    assert conv.mixed_conv2d(x, weight, b, device_seed(), 0).shape == (0, 4, 3, 3)


def test_no_gradient_formula(generator):
    x, weight, b = _case(SHAPES[0], 2, generator)
    out = fused_conv.conv2d_fused_forward(x, weight.requires_grad_(), b, padding=1, seed=3)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        out.sum().backward()


def test_opcheck(generator):
    x, weight, b = _case(SHAPES[3], 3, generator)
    torch.library.opcheck(OPS.mixed_conv2d.default, (x, weight, b, device_seed(), 11, [2, 1], [3, 1], [2, 2], 1))
    torch.library.opcheck(OPS.mixed_conv2d.default, (x, weight, None, device_seed(), -11, [1, 1], [0, 0], [1, 1], 1))


def _bad_inputs():
    x, weight, bias, seed = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3, 3), torch.randn(4), device_seed()
    return [
        ((x[0], weight, bias, seed, 0), {}, ValueError, "x must be a 4-D NCHW tensor"),
        ((x, weight[0], bias, seed, 0), {}, ValueError, "weight must be 5-D"),
        ((x, weight, bias, seed, 0), {"groups": 3}, ValueError, "groups = 1 only"),
        ((x[:, :2], weight, bias, seed, 0), {}, ValueError, "x has 2 channels but weight"),
        ((x.int(), weight, bias, seed, 0), {}, TypeError, "x must be float32, bfloat16, float16 or float64"),
        ((x, weight, bias.double(), seed, 0), {}, ValueError, "bias must be a (4,) tensor of x's dtype"),
        ((x, weight, bias[:3], seed, 0), {}, ValueError, "bias must be a (4,) tensor"),
        ((x.to("meta"), weight, bias, seed, 0), {}, ValueError, "x must be on weight's device"),
        ((x, weight, bias, seed.int(), 0), {}, ValueError, "seed must be a one-element int64 tensor"),
        ((x, weight, bias, seed, 0), {"stride": 0}, ValueError, "stride must be an int >= 1"),
        ((x, weight, bias, seed, 0), {"padding": "same"}, ValueError, "padding must be an int >= 0"),
        ((x, weight, bias, seed, 0), {"dilation": (1, 2, 3)}, ValueError, "dilation must be an int >= 1"),
        ((x, weight, bias, seed, 0), {"dilation": 3}, ValueError, "smaller than the (dilated) kernel 7x7"),
    ]


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the cases are built on the CPU")
@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_names_the_problem(case):
    args, kwargs, error, message = _bad_inputs()[case]
    with pytest.raises(error) as raised:
        conv.mixed_conv2d(*args, **kwargs)
    assert message in str(raised.value)


def test_public_function_checks_dtypes():
    with pytest.raises(TypeError, match="input and weight must have the same dtype"):
        fused_conv.conv2d_fused_forward(
            torch.randn(1, 2, 4, 4, dtype=torch.float64, device=DEVICE),
            torch.randn(2, 3, 2, 3, 3, device=DEVICE),
            seed=1,
        )


def test_bench_conv_fused_rows():
    # A CUDA section of `majority-kernels bench`; here its rows and summary line on the interpreter.
    from majority_kernels import bench
    from majority_kernels.bench import runner

    shape = bench.ConvShape(1, 3, 4, 5, 5, 3)
    config = bench.BenchConfig(
        device=DEVICE,
        dtype=torch.float32,
        backends=("triton",),
        linear_shapes=(),
        linear_expansions=(),
        conv_shapes=(shape,),
        conv_expansions=(2,),
        repeats=1,
        warmup=0,
        sections=frozenset({"conv-fused"}),
    )
    rows = runner.conv_fused_rows(shape, 2, config, lambda: None)
    assert [row["variant"] for row in rows] == ["dense", "mk[triton]", "fused[triton]"]
    for row in rows:
        assert row["section"] == "conv-fused" and row["time_s"] > 0 and len(row["times_s"]) == 1
    assert rows[0]["ratio_dense"] == 1.0 and rows[1]["ratio_combine"] == 1.0
    assert rows[2]["ratio_combine"] == rows[2]["time_s"] / rows[1]["time_s"]
    text = bench.report.conv_fused_summary(rows)
    assert text.startswith("- the fused implicit GEMM beats combine + cuDNN ") and "1x3x4x5x5x3 e = 2" in text
    markdown = bench.to_markdown({"meta": bench.report.run_info(config, 1e9, {}), "conv-fused": rows})
    assert "## Conv2d forward: the fused implicit GEMM" in markdown
    assert "| 1x3x4x5x5x3 | 2 | fused[triton] |" in markdown


# ---- GPU only ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision(dtype, generator):
    # Large enough for several tiles of every GPU configuration.
    x, weight, b = _case((4, 37, 70, 19, 17, 3), 4, generator)
    with torch.autocast("cuda", dtype=dtype):
        out = fused_conv.conv2d_fused_forward(x, weight, b, padding=1, seed=11)
        with mk.use_backend("triton"):
            combined = mk.functional.majority_conv2d(x, weight, b, padding=1, seed=11)
    assert out.dtype == dtype
    expected = _reference(x.to(dtype), weight, b.to(dtype), 11, 0, 1, 1, 1)
    torch.testing.assert_close(out.double().cpu(), expected, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(out, combined, rtol=2e-2, atol=5e-2)


def test_the_prototype_registers_its_op_only_when_imported():
    # A fresh interpreter: this suite's other tests import the prototype.
    probe = (
        "import torch, majority_kernels, majority_kernels.triton_ops; "
        "ops = torch.ops.majority_kernels_triton; before = hasattr(ops, 'mixed_conv2d'); "
        "import majority_kernels.experimental.fused_conv; print(before, hasattr(ops, 'mixed_conv2d'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=dict(os.environ), check=True
    )
    assert result.stdout.split() == ["False", "True"]
