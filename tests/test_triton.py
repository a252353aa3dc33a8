"""The Triton backend's own tests; what every backend must do is tests/test_conformance.py's.

Here: the uniforms bit for bit, opcheck and gradcheck of its ops, the linear layer's fused and combine paths and
their choice, gradient accumulation in place, embeddings, the layers and torch.compile, the benchmark's Triton
variants and the sm_90 build. Without a GPU every kernel runs on CPU tensors in Triton's interpreter (conftest
sets TRITON_INTERPRET=1), on small shapes chosen to cross the tiles (1024-element blocks, 16 x 32 x 32 GEMM tiles
under the interpreter). On a GPU the same tests run natively, plus the `gpu` ones: half precision, larger shapes,
cross-backend equality.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import helpers
import pytest
import torch
import torch.nn.functional as F
from helpers import (
    EXPANSIONS,
    TOLERANCES,
    assert_compiled_training_matches_eager,
    assert_gemm_matches_reference,
    assert_matches_reference,
    cpu64,
    needs_float64_dot,
    random_seed,
    sgd_losses,
)

import majority_kernels as mk
from majority_kernels import backends, paths, reference, tuning

DEVICE = helpers.TRITON_DEVICE
pytestmark = helpers.needs_triton
device_randn, device_seed = helpers.triton_randn, helpers.triton_seed

if helpers.TRITON_UNAVAILABLE is None:
    import triton
    import triton.language as tl

    from majority_kernels import triton_ops
    from majority_kernels.triton_kernels import mixing, tiling

    OPS = torch.ops.majority_kernels_triton

    @triton.jit
    def _uniforms_kernel(out_ptr, seed_ptr, offset, numel, EXPANSION: tl.constexpr, BLOCK: tl.constexpr):
        """The uniforms u[j, i] exactly as the kernels draw them (mixing.group_uniforms), into out
        [4 * counters, numel]."""
        index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = index < numel
        seed = tl.load(seed_ptr)
        for group in tl.static_range((EXPANSION + 2) // 4):
            u0, u1, u2, u3 = mixing.group_uniforms(seed, offset, index, group, EXPANSION)
            row = out_ptr + (4 * group) * numel + index
            tl.store(row, u0, mask=mask)
            tl.store(row + numel, u1, mask=mask)
            tl.store(row + 2 * numel, u2, mask=mask)
            tl.store(row + 3 * numel, u3, mask=mask)


def _uniforms(expansion, numel, seed, offset):
    groups = (expansion + 2) // 4
    out = torch.empty(4 * groups, numel, device=DEVICE)
    _uniforms_kernel[(triton.cdiv(numel, 256),)](
        out, device_seed(seed), offset - 2**64 if offset >= 2**63 else offset, numel, EXPANSION=expansion, BLOCK=256
    )
    return out[: expansion - 1].cpu()


def _triton():
    return mk.use_backend("triton")


# ---- the RNG -------------------------------------------------------------------------------------------------


def test_uniforms_match_vectors_exactly(rng_vectors):
    for case in rng_vectors["uniforms"]:
        # Element 0 of a 5-copy weight (4 uniforms) at offset c uses exactly counter c.
        assert _uniforms(5, 1, case["seed"], case["c"])[:, 0].tolist() == case["u"]


@pytest.mark.parametrize("expansion", [3, 8, 9])
@pytest.mark.parametrize("offset", [0, 2**32 - 100, 2**64 - 150])
def test_uniforms_equal_reference_exactly(expansion, offset, generator):
    # The offsets cross the 32-bit counter boundary and wrap mod 2^64.
    seed = random_seed(generator)
    expected = reference.uniforms(expansion, 300, seed, offset)
    assert torch.equal(_uniforms(expansion, 300, seed, offset), expected)


@pytest.mark.skipif("cpu" not in mk.available_backends("cpu"), reason="the C++ extension is not built")
def test_mixing_weights_equal_cpu_backend(generator):
    seed = random_seed(generator)
    with mk.use_backend("cpu"):
        expected = mk.functional.mixing_weights(5, 999, seed, 77)
    with _triton():
        actual = mk.functional.mixing_weights(5, 999, seed, 77, device=DEVICE)
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=1e-6)


# ---- registration: opcheck, gradients ------------------------------------------------------------------------


def test_opcheck_every_op(generator):
    weight = device_randn(3, 5, 7, generator=generator).requires_grad_()
    grad = device_randn(5, 7, generator=generator).requires_grad_()
    table = device_randn(2, 6, 5, generator=generator).requires_grad_()
    indices = torch.tensor([[0, 5, 5], [2, 0, 1]], device=DEVICE)
    x, dy = device_randn(4, 7, generator=generator), device_randn(4, 5, generator=generator)
    cases = [
        (OPS.combine.default, (weight, device_seed(), 11, None)),
        (OPS.combine.default, (weight, device_seed(), -11, torch.bfloat16)),
        (OPS.scatter.default, (grad, device_seed(), 11, 3, None)),
        (OPS.scatter_add_.default, (device_randn(3, 5, 7, generator=generator), grad.detach(), device_seed(), 11)),
        (OPS.mixing_weights.default, (device_seed(), 11, 3, 35)),
        (OPS.embedding_combine.default, (table, indices, device_seed(), 11, None)),
        (
            OPS.embedding_scatter_add_.default,
            (
                device_randn(2, 6, 5, generator=generator),
                device_randn(2, 3, 5, generator=generator),
                indices,
                device_seed(),
                11,
            ),
        ),
        (
            OPS.mixed_matmul.default,
            (x, weight.detach(), device_randn(5, generator=generator), device_seed(), 11, False),
        ),
        (OPS.mixed_matmul.default, (dy, weight.detach(), None, device_seed(), 11, True)),
        (OPS.weight_grad.default, (dy, x, device_seed(), 11, 3, torch.float32)),
        (OPS.weight_grad_add_.default, (device_randn(3, 5, 7, generator=generator), dy, x, device_seed(), 11)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("expansion", [1, 3, 5])
def test_gradcheck_combine_scatter_embedding(expansion, generator):
    weight = device_randn(expansion, 4, 6, generator=generator, dtype=torch.float64).requires_grad_()
    grad = device_randn(4, 6, generator=generator, dtype=torch.float64).requires_grad_()
    indices = torch.tensor([3, 0, 3], device=DEVICE)
    seed = device_seed(99)
    assert torch.autograd.gradcheck(lambda w: OPS.combine(w, seed, 3, None), (weight,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda w: OPS.combine(w, seed, 3, None), (weight,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda g: OPS.scatter(g, seed, 3, expansion, None), (grad,), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda w: OPS.embedding_combine(w, indices, seed, 3, None), (weight,), fast_mode=True
    )
    assert torch.autograd.gradgradcheck(
        lambda w: OPS.embedding_combine(w, indices, seed, 3, None), (weight,), fast_mode=True
    )


@pytest.mark.parametrize("forced", [pytest.param(("fused", "fused"), marks=needs_float64_dot), ("combine", "scatter")])
def test_gradcheck_majority_linear(forced, generator):
    x = device_randn(3, 5, generator=generator, dtype=torch.float64).requires_grad_()
    w = device_randn(4, 2, 5, generator=generator, dtype=torch.float64).requires_grad_()
    b = device_randn(2, generator=generator, dtype=torch.float64).requires_grad_()
    with _triton(), paths.force_paths(*forced):
        assert torch.autograd.gradcheck(
            lambda x, w, b: mk.functional.majority_linear(x, w, b, seed=7), (x, w, b), fast_mode=True
        )


# ---- the linear layer's paths --------------------------------------------------------------------------------


def _linear_case(m, n, k, expansion, generator, dtype=torch.float32):
    x = device_randn(m, k, generator=generator, dtype=dtype).requires_grad_()
    weight = device_randn(expansion, n, k, generator=generator).requires_grad_()
    bias = device_randn(n, generator=generator).requires_grad_()
    return x, weight, bias


def _reference_linear(x, weight, bias, seed, offset, grad_out, compute_dtype):
    """Output and (x, weight, bias) gradients of the mixed linear layer in float64, from W_eff rounded to the
    compute dtype as the kernels use it."""
    x, weight, bias = (cpu64(t).requires_grad_() for t in (x, weight, bias))
    mixed = reference.combine(weight, seed, offset)
    rounded = mixed + (mixed.to(compute_dtype).double() - mixed).detach()
    out = F.linear(x, rounded, bias)
    out.backward(cpu64(grad_out))
    return out.detach(), x.grad, weight.grad, bias.grad


@pytest.mark.parametrize("forward", ["fused", "combine"])
@pytest.mark.parametrize("wgrad", ["fused", "scatter"])
def test_linear_paths_match_reference(forward, wgrad, generator):
    # 37 x 45 x 70: several tiles of every GEMM dimension, none of them full.
    x, weight, bias = _linear_case(37, 45, 70, 3, generator)
    seed, offset = random_seed(generator), 2**64 - 20
    grad_out = device_randn(37, 45, generator=generator)
    with _triton(), paths.force_paths(forward, wgrad):
        out = mk.functional.majority_linear(x, weight, bias, seed=seed, offset=offset)
        out.backward(grad_out)
    expected = _reference_linear(x, weight, bias, seed, offset, grad_out, torch.float32)
    for actual, wanted in zip((out, x.grad, weight.grad, bias.grad), expected):
        assert_gemm_matches_reference(actual.detach().cpu(), wanted)


@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_fused_kernels_every_expansion(expansion, generator):
    x, weight, bias = _linear_case(17, 20, 33, expansion, generator)
    seed = random_seed(generator)
    grad_out = device_randn(17, 20, generator=generator)
    with _triton(), paths.force_paths("fused", "fused"):
        out = mk.functional.majority_linear(x, weight, bias, seed=seed, offset=5)
        out.backward(grad_out)
    expected = _reference_linear(x, weight, bias, seed, 5, grad_out, torch.float32)
    for actual, wanted in zip((out, x.grad, weight.grad, bias.grad), expected):
        assert_gemm_matches_reference(actual.detach().cpu(), wanted)


def test_linear_batched_input_and_no_bias(generator):
    x = device_randn(2, 3, 9, generator=generator)
    weight = device_randn(2, 4, 9, generator=generator)
    with _triton(), paths.force_paths("fused"):
        out = mk.functional.majority_linear(x, weight, seed=1)
    assert out.shape == (2, 3, 4)
    assert_gemm_matches_reference(cpu64(out), cpu64(x) @ reference.combine(cpu64(weight), 1).T)


@pytest.mark.parametrize("forward", ["fused", "combine"])
def test_linear_empty_batch_and_features(forward):
    weight, bias = torch.ones(2, 4, 0, device=DEVICE, requires_grad=True), torch.ones(4, device=DEVICE)
    with _triton(), paths.force_paths(forward, "fused"):
        out = mk.functional.majority_linear(torch.ones(3, 0, device=DEVICE), weight, bias, seed=1)
        out.sum().backward()
        assert torch.equal(out, bias.expand(3, 4)) and weight.grad.shape == (2, 4, 0)
        weight = torch.ones(2, 4, 5, device=DEVICE, requires_grad=True)
        assert mk.functional.majority_linear(torch.ones(0, 5, device=DEVICE), weight, seed=1).shape == (0, 4)


@pytest.mark.parametrize("forward", ["fused", "combine"])
def test_linear_under_autocast(forward, generator):
    # float32 master weights, bfloat16 compute: W_eff (and the output) in bfloat16.
    x, weight, bias = _linear_case(20, 24, 40, 4, generator)
    grad_out = device_randn(20, 24, generator=generator, dtype=torch.bfloat16)
    with _triton(), paths.force_paths(forward, "fused"), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = mk.functional.majority_linear(x, weight, bias, seed=3)
    out.backward(grad_out)
    assert out.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    expected = _reference_linear(x.to(torch.bfloat16), weight, bias.to(torch.bfloat16), 3, 0, grad_out, torch.bfloat16)
    torch.testing.assert_close(cpu64(out), expected[0], **TOLERANCES[torch.bfloat16])
    torch.testing.assert_close(cpu64(weight.grad), expected[2], rtol=2e-2, atol=2e-2)


def test_fused_path_weight_kept_without_a_saved_copy(generator):
    # The fused input gradient reads the copies: a leaf weight is remembered (and checked), a frozen one saved.
    x, weight, bias = _linear_case(5, 6, 7, 2, generator)
    with _triton(), paths.force_paths("fused"):
        out = mk.functional.majority_linear(x, weight, bias, seed=2)
        with torch.no_grad():
            weight.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()
        frozen = weight.detach()
        out = mk.functional.majority_linear(x, frozen, bias, seed=2)
        out.backward(torch.ones_like(out))
    expected = torch.ones(5, 6, dtype=torch.float64) @ reference.combine(cpu64(frozen), 2)
    assert_gemm_matches_reference(x.grad.cpu(), expected)


def test_weight_grad_add_accumulates(generator):
    dy, x = device_randn(19, 6, generator=generator), device_randn(19, 11, generator=generator)
    existing = device_randn(3, 6, 11, generator=generator)
    before = cpu64(existing)
    OPS.weight_grad_add_(existing, dy, x, device_seed(5), 9)
    expected = before + reference.scatter(cpu64(dy).T @ cpu64(x), 5, 9, 3)
    assert_gemm_matches_reference(existing.cpu(), expected)


@pytest.mark.parametrize("wgrad", ["fused", "scatter"])
def test_linear_gradient_accumulates_into_grad(wgrad, generator):
    # The second backward adds into weight.grad in place (weight_grad_add_ / scatter_add_).
    x, weight, bias = _linear_case(9, 6, 11, 3, generator)
    grad_out = device_randn(9, 6, generator=generator)
    with _triton(), paths.force_paths("fused", wgrad):
        for _ in range(2):
            mk.functional.majority_linear(x, weight, bias, seed=4).backward(grad_out)
    expected = _reference_linear(x, weight, bias, 4, 0, grad_out, torch.float32)
    assert_gemm_matches_reference(weight.grad.cpu(), 2 * expected[2])


def test_combine_and_embedding_gradients_accumulate_into_grad(generator):
    weight = device_randn(3, 4, 5, generator=generator).requires_grad_()
    indices = torch.tensor([1, 3, 1], device=DEVICE)
    with _triton():
        for _ in range(2):
            mk.functional.combine(weight, 6).sum().backward()
            triton_ops.embedding_combine(weight, indices, device_seed(6), 0, None).sum().backward()
    expected = reference.scatter(torch.ones(4, 5, dtype=torch.float64), 6, 0, 3)
    expected += reference.embedding_scatter(torch.ones(3, 5, dtype=torch.float64), indices.cpu(), 6, 0, 3, 4)
    assert_matches_reference(weight.grad.cpu(), 2 * expected)


def test_path_choice(monkeypatch):
    monkeypatch.delenv("MK_LINEAR_PATH", raising=False)
    monkeypatch.delenv("MK_WGRAD_PATH", raising=False)
    f32 = torch.float32
    thresholds = tuning.for_device(DEVICE)
    assert triton_ops.linear_paths(thresholds.triton_fused_forward_max_m, f32, DEVICE, 4) == ("fused", "fused")
    assert triton_ops.linear_paths(thresholds.triton_fused_wgrad_max_m + 1, f32, DEVICE, 4) == ("combine", "scatter")
    # One copy: the dense layer's own GEMMs, unless forced.
    assert triton_ops.linear_paths(1, f32, DEVICE, 1) == ("combine", "scatter")
    with paths.force_paths("fused", "fused"):
        assert triton_ops.linear_paths(1, f32, DEVICE, 1) == ("fused", "fused")
    monkeypatch.setenv("MK_LINEAR_PATH", "combine")
    monkeypatch.setenv("MK_WGRAD_PATH", " Scatter ")
    assert triton_ops.linear_paths(1, f32, DEVICE, 4) == ("combine", "scatter")
    with paths.force_paths("fused"):
        assert triton_ops.linear_paths(1, f32, DEVICE, 4) == ("fused", "scatter")
    monkeypatch.setenv("MK_LINEAR_PATH", "auto")  # the same vocabulary as the cuda backend's
    assert triton_ops.linear_paths(1, f32, DEVICE, 4) == ("fused", "scatter")
    monkeypatch.setenv("MK_LINEAR_PATH", "cublas")
    with pytest.raises(ValueError, match="MK_LINEAR_PATH must be one of auto, fused, combine"):
        triton_ops.linear_paths(1, f32, DEVICE, 4)
    with pytest.raises(ValueError, match="wgrad path must be one of"):
        with paths.force_paths(wgrad="epilogue"):
            pass


def test_float64_without_float64_dot_takes_the_combine_paths(monkeypatch, generator):
    # Triton < 3.5: tl.dot has no float64, so float64 layers take combine + scatter, and forcing a fused path or
    # calling a GEMM kernel with float64 raises a ValueError that says so.
    monkeypatch.delenv("MK_LINEAR_PATH", raising=False)
    monkeypatch.delenv("MK_WGRAD_PATH", raising=False)
    monkeypatch.setattr(tiling, "FLOAT64_DOT", False)
    assert triton_ops.linear_paths(1, torch.float64, DEVICE, 4) == ("combine", "scatter")
    assert triton_ops.linear_paths(1, torch.float32, DEVICE, 4) == ("fused", "fused")
    x = device_randn(3, 5, generator=generator, dtype=torch.float64)
    w = device_randn(2, 4, 5, generator=generator, dtype=torch.float64)
    with _triton():
        out = mk.functional.majority_linear(x, w, seed=7)
    assert_matches_reference(out.cpu(), F.linear(cpu64(x), reference.combine(cpu64(w), 7, 0)))
    for forward, wgrad in (("fused", None), (None, "fused")):
        with _triton(), paths.force_paths(forward, wgrad), pytest.raises(ValueError, match="float64 tiles"):
            mk.functional.majority_linear(x, w, seed=7)
    with pytest.raises(ValueError, match="float64 tiles"):
        OPS.mixed_matmul(x, w, None, device_seed(7), 0, False)


# ---- embeddings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("expansion", [1, 3, 8])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_embedding_combine_and_gradient(expansion, index_dtype, generator):
    # dim 130: two column tiles; repeated rows: the gradient adds up.
    table = device_randn(expansion, 10, 130, generator=generator).requires_grad_()
    indices = torch.tensor([[3, 0, 3], [9, 3, 1]], dtype=index_dtype, device=DEVICE)
    seed, offset = random_seed(generator), 2**63 + 1
    grad_out = device_randn(2, 3, 130, generator=generator)
    with _triton():
        out = backends.BACKENDS["triton"].embedding_combine(table, indices, device_seed(seed), offset - 2**64, None)
    out.backward(grad_out)
    assert out.shape == (2, 3, 130)
    expected_out = reference.embedding_combine(cpu64(table), indices.cpu(), seed, offset)
    assert_matches_reference(out.detach().cpu(), expected_out)
    expected = reference.embedding_scatter(cpu64(grad_out), indices.cpu(), seed, offset, expansion, 10)
    assert_matches_reference(table.grad.detach().cpu(), expected)


def test_embedding_half_precision_table(generator):
    table = device_randn(2, 7, 5, generator=generator, dtype=torch.bfloat16).requires_grad_()
    indices = torch.tensor([1, 1, 6], device=DEVICE)
    out = triton_ops.embedding_combine(table, indices, device_seed(4), 0, torch.float32)
    out.backward(torch.ones_like(out))
    assert out.dtype == torch.float32 and table.grad.dtype == torch.bfloat16
    expected = reference.embedding_scatter(torch.ones(3, 5, dtype=torch.float64), indices.cpu(), 4, 0, 2, 7)
    assert_matches_reference(table.grad.cpu(), expected)


def test_embedding_bad_indices_are_refused_at_the_boundary():
    # Checked once, by majority_embedding (majority_kernels._validation), for the Triton backend as for the others.
    table = torch.zeros(2, 4, 3, device=DEVICE)
    with _triton(), pytest.raises(TypeError, match="input must hold int64 or int32 indices, got torch.float32"):
        mk.functional.majority_embedding(torch.zeros(2, device=DEVICE), table, seed=0)
    if DEVICE.type == "cpu":  # CUDA indices: a device-side assert, no host sync
        for bad in ([2, -1], [4]):
            with _triton(), pytest.raises(IndexError, match="out of range for an embedding table of 4 rows"):
                mk.functional.majority_embedding(torch.tensor(bad, device=DEVICE), table, seed=0)


# ---- bad input, availability ---------------------------------------------------------------------------------


def test_bad_input_names_the_problem():
    weight = torch.zeros(2, 3, device=DEVICE)
    with _triton():
        with pytest.raises(TypeError, match="out_dtype must be a torch.dtype out of .*float8_e4m3fn"):
            mk.functional.combine(weight, 0, out_dtype=torch.float8_e4m3fn)
        with pytest.raises(TypeError, match="seed tensor must hold one int64 value"):
            mk.functional.combine(weight, torch.tensor(1, dtype=torch.int32, device=DEVICE))
        with pytest.raises(ValueError, match="accumulate_into must have shape"):
            mk.functional.scatter(
                torch.zeros(3, device=DEVICE), 0, 0, 2, accumulate_into=torch.zeros(2, 3, 4, device=DEVICE)
            )
    with pytest.raises(ValueError, match="grad_weight must be contiguous"):  # the in-place op's own assert
        triton_ops.scatter_add_(
            torch.zeros(3, 2, 4, device=DEVICE).transpose(1, 2),
            torch.zeros(4, 2, device=DEVICE),
            torch.tensor(0, device=DEVICE),
            0,
        )


def test_unavailable_explains(monkeypatch):
    assert triton_ops.unavailable(torch.device("meta")).startswith("backend 'triton' runs on CUDA tensors")
    monkeypatch.setattr(triton_ops, "INTERPRETING", False)
    assert "set TRITON_INTERPRET=1 before importing majority_kernels" in triton_ops.unavailable(torch.device("cpu"))


# ---- through the layers and torch.compile --------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        mk.MKLinear(8, 16, expansion=3),
        torch.nn.ReLU(),
        mk.MKConv1d(2, 2, 3, padding=1, expansion=2),
        torch.nn.Flatten(),
        mk.MKLinear(32, 1, expansion=5),
    ).to(DEVICE)


@pytest.mark.parametrize("forward", ["fused", "combine"])
def test_layers_train_like_reference_backend(forward):
    x = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = {}
    for backend in ("triton", "reference"):
        model = _model()
        torch.manual_seed(2)
        with mk.use_backend(backend), paths.force_paths(forward):
            results[backend] = (sgd_losses(model, x, steps=2), [p.detach().clone() for p in model.parameters()])
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["triton"][1], results["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forward", ["fused", "combine"])
def test_compile_fullgraph_matches_eager(forward):
    x = torch.randn(4, 2, 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with _triton(), paths.force_paths(forward):
        assert_compiled_training_matches_eager(_model, x, steps=2)


# ---- the benchmark's Triton variants ------------------------------------------------------------------------


def test_bench_triton_variants(tmp_path):
    from majority_kernels.cli import main

    assert (
        main(
            [
                "bench",
                "--backend",
                "triton",
                "--device",
                DEVICE.type,
                "--shapes",
                "8x16x16",
                "--expansion",
                "2",
                "--no-compile",
                "--only",
                "linear,kernels",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--output",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "run.json").read_text())
    linear = {row["variant"]: row for row in report["linear"]}
    assert set(linear) == {
        "dense",
        "naive",
        "mk[triton]",
        "mk[triton:combine,scatter-dW]",
        "mk[triton:combine,fused-dW]",
        "mk[triton:fused,scatter-dW]",
        "mk[triton:fused,fused-dW]",
    }
    assert all(row["time_s"] > 0 for row in linear.values())
    kernels = [row for row in report["kernels"] if row["variant"] == "mk[triton]"]
    assert {row["op"] for row in kernels} == {"combine", "scatter"}
    assert all(row["copy_bandwidth_fraction"] > 0 for row in kernels)
    assert "| % copy BW |" in (tmp_path / "run.md").read_text()


def test_bench_crossover_sweep():
    # Runs on CUDA in `majority-kernels bench`; here its rows and summary on the interpreter.
    from majority_kernels import bench
    from majority_kernels.bench import runner

    config = bench.BenchConfig(
        device=DEVICE,
        dtype=torch.float32,
        backends=("triton",),
        linear_shapes=(bench.LinearShape(1, 8, 16),),
        linear_expansions=(2,),
        conv_shapes=(),
        conv_expansions=(),
        repeats=1,
        warmup=0,
        crossover_ms=(1, 16),
    )
    rows = runner.crossover_rows((8, 16), 2, config, lambda: None)
    timings = [row for row in rows if row["variant"] != "summary"]
    assert {(row["M"], row["variant"]) for row in timings} <= {
        (m, name) for m in (1, 16) for name in (runner.COMBINE, runner.FUSED_FORWARD, runner.FUSED_WGRAD)
    }
    assert {row["variant"] for row in timings if row["M"] == 1} == {
        runner.COMBINE,
        runner.FUSED_FORWARD,
        runner.FUSED_WGRAD,
    }
    summary = rows[-1]
    thresholds = tuning.for_device(DEVICE)
    assert summary["variant"] == "summary"
    assert summary["fused_forward_max_m"] == thresholds.triton_fused_forward_max_m
    text = bench.report.crossover_summary(rows)
    assert text.startswith("- weight 8x16, e = 2: the fused forward ")
    assert f"triton_fused_wgrad_max_m = {thresholds.triton_fused_wgrad_max_m}" in text


# ---- GPU builds without a GPU --------------------------------------------------------------------------------

# Run with benchmarks/ on the path, for the build helpers of benchmarks/sm90_builds.py.
_COMPILE_FOR_SM90 = textwrap.dedent("""
    import re

    import triton

    from majority_kernels.triton_kernels import combine, conv, embedding, linear, scatter, tiling, weight_grad
    from majority_kernels import tune
    from sm90_builds import (SM90_SHARED_LIMIT, build, conv_constants, conv_signature, linear_constants,
                             linear_signature, ptxas_report, rows, weight_grad_constants, weight_grad_signature)

    def scalar_accesses(built):  # the global loads and stores of the build that are not 16-byte vectors
        accesses = re.findall(r"\\b(?:ld|st)\\.global\\.[\\w:.]+", built.asm["ptx"])
        return [access for access in accesses if ".v4." not in access]

    elementwise = {"seed_ptr": "*i64", "offset": "i64", "numel": "i32"}
    # Any size builds; where numel is a multiple of 16 (Triton's launcher specializes on that, as for a 4096 x 4096
    # weight), every weight, gradient and output access is a 16-byte vector (8 elements per thread and copy): only
    # the seed is read alone.
    for divisible in ((), ("numel",)):
        combined = build(combine.combine_kernel, {"weight_ptr": "*fp32", "out_ptr": "*bf16", **elementwise},
                         {"EXPANSION": 5, "MATH64": False, "BLOCK": 1024}, divisible=divisible)
        scattered = build(scatter.scatter_kernel, {"grad_ptr": "*bf16", "out_ptr": "*fp32", **elementwise},
                          {"EXPANSION": 3, "MATH64": False, "MODE": 1, "HAS_GRAD": True, "BLOCK": 1024},
                          divisible=divisible)
    for built in (combined, scattered):
        assert [access[-3:] for access in scalar_accesses(built)] == ["b64"], scalar_accesses(built)
    # Every block size `majority-kernels tune` can choose builds without spills, for one and two groups of copies.
    for block in sorted({block for plan in tune.PLANS.values() for block in plan.blocks}):
        for expansion in (4, 8):
            for built in (build(combine.combine_kernel, {"weight_ptr": "*fp32", "out_ptr": "*bf16", **elementwise},
                                {"EXPANSION": expansion, "MATH64": False, "BLOCK": block}, divisible=("numel",)),
                          build(scatter.scatter_kernel, {"grad_ptr": "*bf16", "out_ptr": "*fp32", **elementwise},
                                {"EXPANSION": expansion, "MATH64": False, "MODE": 1, "HAS_GRAD": True,
                                 "BLOCK": block}, divisible=("numel",))):
                assert ptxas_report(built.asm["ptx"])[1] == 0, (block, expansion, built.name)
    lookups = {"indices_ptr": "*i64", "seed_ptr": "*i64", "offset": "i64", "lookups": "i32", "rows": "i32",
               "dim": "i32"}
    build(embedding.scatter_add_kernel, {"grad_ptr": "*bf16", "out_ptr": "*fp32", **lookups},
          {"EXPANSION": 4, "MATH64": False, "BLOCK_LOOKUPS": 8, "BLOCK_COLUMNS": 128})
    build(embedding.gather_kernel, {"weight_ptr": "*fp64", "out_ptr": "*bf16", **lookups},
          {"EXPANSION": 2, "MATH64": True, "BLOCK_LOOKUPS": 8, "BLOCK_COLUMNS": 128})
    # The GEMMs per (activation, weight) dtype pair they serve: autocast bf16 over float32 weights, float32 with
    # TF32, and float64 (tl.dot with a float64 accumulator) where this Triton has it.
    cases = [("bf16", "fp32", False, "ieee"), ("fp32", "fp32", False, "tf32")]
    for act, weight, math64, precision in cases + [("fp64", "fp64", True, "ieee")] * tiling.FLOAT64_DOT:
        build(linear.mixed_matmul_kernel, linear_signature(act, weight),
              linear_constants(math64, precision, {"BLOCK_M": 16, "BLOCK_P": 64, "BLOCK_Q": 32, "GROUP_M": 8}))
        build(weight_grad.weight_grad_kernel, weight_grad_signature(act, weight),
              weight_grad_constants(math64, precision, {"BLOCK_N": 64, "BLOCK_K": 64, "BLOCK_M": 32, "GROUP_N": 8},
                                    expansion=5), num_warps=8)
        build(conv.mixed_conv2d_kernel, conv_signature(act, weight),
              conv_constants(math64, precision, {"BLOCK_M": 128, "BLOCK_P": 64, "BLOCK_Q": 32, "GROUP_M": 8}),
              num_warps=8)
    # Every configuration of the GEMMs that the autotuner's pruning can keep on sm_90, per dtype pair the fused paths
    # serve in training: none may build over sm_90's 227 KiB of shared memory (the pruning's estimate must not let
    # one through), nor spill more than SPILL_BUDGET bytes per thread. The worst of them spill 76 bytes with
    # Triton 3.6 (benchmarks/results/sm90-builds-triton-3.6.0.md) and 176 with Triton 3.9, both 128-row tiles of
    # the linear GEMM.
    # The spill budget holds from Triton 3.6 on (the GPU machine's and later releases); Triton 3.0's code generation
    # spills the float32 (TF32) tiles more (up to about 300 bytes), which costs speed there, never correctness.
    SPILL_BUDGET = 192 if tuple(int(part) for part in triton.__version__.split(".")[:2]) >= (3, 6) else None
    kept = rows(4, kept_only=True)
    assert {row["kernel"] for row in kept} == {"linear", "weight_grad", "conv"}
    over = [row for row in kept if row["shared"] > SM90_SHARED_LIMIT or row["spill_bytes"] is None
            or (SPILL_BUDGET is not None and row["spill_bytes"] > SPILL_BUDGET)]
    assert not over, over
    print("built")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels are built and run by the other tests")
def test_kernels_build_for_sm90():
    """The interpreter runs the kernels' Python, not Triton's compiler: build them for an H100 (sm_90, down to a
    cubin with the ptxas Triton ships), so that code the compiler rejects fails here too."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).parents[1] / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])]
    )
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "built" in result.stdout, result.stderr[-3000:]


# ---- GPU only ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("forward", ["fused", "combine"])
@pytest.mark.parametrize("wgrad", ["fused", "scatter"])
def test_gpu_half_precision_linear(dtype, forward, wgrad, generator):
    x, weight, bias = _linear_case(300, 520, 260, 4, generator)
    grad_out = device_randn(300, 520, generator=generator, dtype=dtype)
    with _triton(), paths.force_paths(forward, wgrad), torch.autocast("cuda", dtype=dtype):
        out = mk.functional.majority_linear(x, weight, bias, seed=11)
    out.backward(grad_out)
    expected = _reference_linear(x.to(dtype), weight, bias.to(dtype), 11, 0, grad_out, dtype)
    torch.testing.assert_close(cpu64(out), expected[0], rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(cpu64(weight.grad), expected[2], rtol=2e-2, atol=5e-2)


@pytest.mark.gpu
def test_gpu_cross_backend_equality(generator):
    # Identical uniforms; P within 1e-6 of the C++ backends (CUDA and CPU) wherever they are built.
    seed, numel, offset = random_seed(generator), 1 << 18, 2**32 - 7
    assert torch.equal(_uniforms(8, numel, seed, offset), reference.uniforms(8, numel, seed, offset))
    with _triton():
        p = mk.functional.mixing_weights(8, numel, seed, offset, device=DEVICE).cpu()
    for name, device in (("cuda", DEVICE), ("cpu", torch.device("cpu"))):
        if name in mk.available_backends(device):
            with mk.use_backend(name):
                q = mk.functional.mixing_weights(8, numel, seed, offset, device=device).cpu()
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_gpu_64_bit_indexing():
    # 2^31 + 3 elements: flat indices and copy offsets past int32.
    numel = 2**31 + 3
    weight = torch.ones(1, numel, dtype=torch.float16, device=DEVICE)
    with _triton():
        combined = mk.functional.combine(weight, 5, 0)
    assert combined[-4:].eq(1).all() and combined[:4].eq(1).all()
    del combined
    with _triton():
        copies = mk.functional.scatter(weight[0], 5, 0, 1)
    assert copies[0, -4:].eq(1).all()


@pytest.mark.gpu
def test_gpu_cuda_graph_capture(generator):
    layer = mk.MKLinear(64, 32, expansion=4).cuda()
    x = torch.randn(16, 64, device=DEVICE)
    seed = torch.tensor(5, device=DEVICE)
    with _triton():
        mk.functional.majority_linear(x, layer.weight, layer.bias, seed=seed).sum().backward()  # autotunes
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = mk.functional.majority_linear(x, layer.weight, layer.bias, seed=seed)
        for value in (6, 7):
            seed.fill_(value)
            graph.replay()
            torch.testing.assert_close(out, mk.functional.majority_linear(x, layer.weight, layer.bias, seed=value))
