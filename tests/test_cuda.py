"""The CUDA C++ backend (csrc/cuda, majority_kernels/cuda_ops.py) and the GPU build (setup.py).

What every backend must do (combine, scatter, the mixing weights, the layers and embeddings against the float64
reference, misaligned views, every dtype and expansion) is tests/test_conformance.py's, whose `gpu` pairs run this
backend there. The `gpu` tests here are this backend's own: bit-identical uniforms, the seed read on the device,
opcheck of its ops, the C++ checks, the fused small-M forward against the float64 reference and the combine path,
CUDA graph capture and replay of a training step. The other tests run anywhere: the build helpers of
setup.py, the combine and scatter kernels' per-pack bodies built for the CPU (tests/cuda_pack_host.cpp), the linear
path choice, the fused op's fake kernel, and, in a CUDA build, that every op has its kernel.
"""

import ctypes
import dataclasses
import functools
import importlib.util
import math
import os
import shutil
import stat

import pytest
import torch
from helpers import (
    ROOT,
    TOLERANCES,
    assert_gemm_matches_reference,
    assert_matches_reference,
    cpu64,
    host_library,
    randn,
    random_offset,
    random_seed,
    seed_tensor,
)

import majority_kernels as mk
from majority_kernels import backends, cuda_ops, ops, paths, reference, tuning

OPS = torch.ops.majority_kernels if ops.HAS_EXTENSION else None
DEVICE = "cuda"

# The shared helpers' random values and seeds, on this file's device.
device_randn = functools.partial(randn, device=DEVICE)
device_seed = functools.partial(seed_tensor, device=DEVICE)
# 1..4: one Philox group of draws in registers; from 5 on, several groups and a two-pass scatter.
GPU_EXPANSIONS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16]
OP_NAMES = [
    "combine",
    "scatter",
    "scatter_add_",
    "mixing_weights",
    "embedding_combine",
    "embedding_scatter_add_",
    "mixed_linear",
]

_CUDA_REASON = backends.BACKENDS["cuda"].unavailable(torch.device("cuda"))
needs_cuda_kernels = pytest.mark.skipif(_CUDA_REASON is not None, reason=f"backend 'cuda': {_CUDA_REASON}")
needs_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="the C++ extension is not built")


# ---- build and backend glue (no GPU needed) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_script():
    spec = importlib.util.spec_from_file_location("mk_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds nothing: setup() runs only as __main__
    return module


def test_arch_list_default_and_override(build_script, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert build_script.cuda_arch_list() == "8.0;9.0+PTX"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert build_script.cuda_arch_list() == "9.0"


def test_pip_cuda_include_dirs(build_script, tmp_path):
    for folder in ("cu13/include", "cublas/include", "cudnn/lib"):
        (tmp_path / folder).mkdir(parents=True)
    found = build_script.pip_cuda_include_dirs([str(tmp_path)])
    assert found == [str(tmp_path / "cu13" / "include"), str(tmp_path / "cublas" / "include")]
    assert build_script.pip_cuda_include_dirs([str(tmp_path / "missing")]) == []


def test_toolkit_root_from_an_nvcc_wrapper(build_script, tmp_path):
    # A wrapper script outside the toolkit (like /usr/local/bin/nvcc here): the root comes from nvcc's dry run.
    toolkit = tmp_path / "cuda-99.0"
    (toolkit / "bin").mkdir(parents=True)
    wrapper = tmp_path / "nvcc"
    wrapper.write_text(f"#!/bin/sh\necho '#$ _HERE_={toolkit}/bin' >&2\necho '#$ TOP={toolkit}/bin/..' >&2\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    assert build_script.nvcc_toolkit_root(str(wrapper)) == str(toolkit)
    assert build_script.nvcc_toolkit_root(str(tmp_path / "no-such-nvcc")) is None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_toolkit_root_of_the_nvcc_on_path(build_script):
    root = build_script.nvcc_toolkit_root()
    assert root is not None and os.path.isfile(os.path.join(root, "bin", "nvcc"))


# ---- the kernels' per-pack bodies on the CPU (no GPU needed) -----------------------------------------------------


@pytest.fixture(scope="module")
def pack_host(tmp_path_factory):
    """tests/cuda_pack_host.cpp compiled with the host C++ compiler and loaded with ctypes."""
    return host_library("cuda_pack_host.cpp", tmp_path_factory.mktemp("pack_host"))


def _pack_call(pack_host, op, seed, offset, expansion, *tensors_and_flags):
    name = f"mk_{op}_{'double' if tensors_and_flags[0].dtype == torch.float64 else 'float'}"
    args = [
        ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int64(a) for a in tensors_and_flags
    ]
    getattr(pack_host, name)(ctypes.c_uint64(seed), ctypes.c_uint64(offset), ctypes.c_int64(expansion), *args)


def _vector_ok(tensors, numel, expansion, lanes):
    """The launchers' rule: every pointer 16-byte aligned, and every copy's packs too (numel % lanes == 0)."""
    return int(all(t.data_ptr() % 16 == 0 for t in tensors) and (expansion == 1 or numel % lanes == 0))


@pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("numel", [1, 3, 8, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("expansion", [1, 2, 3, 4, 5, 8, 9, 11, 16])
def test_pack_bodies_match_reference(pack_host, expansion, dtype, numel, misaligned, generator):
    lanes = 16 // dtype.itemsize
    seed, offset = random_seed(generator), random_offset(generator)

    def tensor(*shape):
        flat = torch.randn(math.prod(shape) + 1, dtype=torch.float64, generator=generator).to(dtype)
        return (flat[1:] if misaligned else flat[:-1]).view(shape)

    weight, grad, existing = tensor(expansion, numel), tensor(numel), tensor(expansion, numel)
    out, scattered = torch.empty(numel, dtype=dtype), torch.empty(expansion, numel, dtype=dtype)
    before = existing.double().clone()
    vector = _vector_ok((weight, grad, existing, out, scattered), numel, expansion, lanes)
    _pack_call(pack_host, "combine", seed, offset, expansion, weight, out, numel, vector)
    _pack_call(pack_host, "scatter", seed, offset, expansion, grad, scattered, numel, 0, vector)
    _pack_call(pack_host, "scatter", seed, offset, expansion, grad, existing, numel, 1, vector)
    assert_matches_reference(out, reference.combine(weight.double(), seed, offset))
    expected = reference.scatter(grad.double(), seed, offset, expansion)
    assert_matches_reference(scattered, expected)
    assert_matches_reference(existing, before + expected)


def test_linear_path_choice(monkeypatch):
    monkeypatch.delenv(paths.FORWARD_VARIABLE, raising=False)
    monkeypatch.delenv(paths.WGRAD_VARIABLE, raising=False)
    f32, bf16, f64 = torch.float32, torch.bfloat16, torch.float64
    gpu = torch.device("cuda")
    # The threshold comes from the GPU's tuning table (tests/test_tuning.py); its value here is the one in force.
    max_rows = 5
    monkeypatch.setattr(
        tuning, "for_device", lambda device: dataclasses.replace(tuning.DEFAULTS, cuda_fused_max_rows=max_rows)
    )
    assert cuda_ops.linear_path(1, f32, bf16, gpu, 4) == "fused"
    assert cuda_ops.linear_path(max_rows, f32, f32, gpu, 4) == "fused"
    assert cuda_ops.linear_path(max_rows + 1, f32, f32, gpu, 4) == "combine"
    assert cuda_ops.linear_path(1, f32, f64, gpu, 4) == "combine"  # no fused kernel for that pair
    assert cuda_ops.linear_path(1, f32, f32, gpu, 1) == "combine"  # one copy: the dense GEMM
    monkeypatch.setenv(paths.FORWARD_VARIABLE, "combine")
    assert cuda_ops.linear_path(1, f32, f32, gpu, 4) == "combine"
    monkeypatch.setenv(paths.FORWARD_VARIABLE, "fused")
    assert cuda_ops.linear_path(4096, f32, bf16, gpu, 4) == "fused"
    with pytest.raises(ValueError, match="no build for weight"):
        cuda_ops.linear_path(1, f32, f64, gpu, 4)
    with paths.force_paths("combine"):  # a block wins over the environment, on every backend
        assert cuda_ops.linear_path(1, f32, bf16, gpu, 4) == "combine"
    monkeypatch.setenv(paths.FORWARD_VARIABLE, " Auto ")
    assert cuda_ops.linear_path(1, f32, bf16, gpu, 4) == "fused"
    monkeypatch.setenv(paths.FORWARD_VARIABLE, "fastest")
    with pytest.raises(ValueError, match="MK_LINEAR_PATH must be one of auto, fused, combine"):
        cuda_ops.linear_path(1, f32, f32, gpu, 4)
    monkeypatch.delenv(paths.FORWARD_VARIABLE)
    monkeypatch.setenv(paths.WGRAD_VARIABLE, "scatter")
    assert cuda_ops.linear_path(1, f32, bf16, gpu, 4) == "fused"
    monkeypatch.setenv(paths.WGRAD_VARIABLE, "fused")  # the triton backend's dW GEMM: none here, never ignored
    with pytest.raises(ValueError, match="backend 'cuda' has only 'scatter'"):
        cuda_ops.linear_path(1, f32, f32, gpu, 4)


@needs_extension
def test_mixed_linear_fake_kernel():
    x = torch.empty(3, 5, device="meta", dtype=torch.bfloat16)
    weight = torch.empty(4, 7, 5, device="meta")
    out = OPS.mixed_linear(x, weight, None, torch.empty((), dtype=torch.int64, device="meta"), 0)
    assert out.shape == (3, 7) and out.dtype == torch.bfloat16


@pytest.fixture
def mixed_linear_on_cpu():
    """A stand-in CPU kernel for mixed_linear (combine, then F.linear), so that the autograd formula of cuda_ops
    runs here; removed after the test."""
    if torch._C._dispatch_has_kernel_for_dispatch_key("majority_kernels::mixed_linear", "CPU"):
        pytest.skip("mixed_linear already has a CPU kernel")
    library = torch.library.Library("majority_kernels", "IMPL")
    library.impl(
        "mixed_linear",
        lambda x, w, b, seed, offset: torch.nn.functional.linear(x, OPS.combine(w, seed, offset, x.dtype), b),
        "CPU",
    )
    yield
    library._destroy()


@needs_extension
def test_mixed_linear_autograd_accumulates_in_place_and_checks_the_weight(mixed_linear_on_cpu, generator):
    weight = torch.nn.Parameter(torch.randn(3, 5, 7, generator=generator, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.randn(5, generator=generator, dtype=torch.float64))
    seed = torch.tensor(random_seed(generator))
    expected = torch.zeros_like(weight)
    for _ in range(3):  # the second and third backward add into .grad in place
        x = torch.randn(4, 7, generator=generator, dtype=torch.float64, requires_grad=True)
        out = OPS.mixed_linear(x, weight, bias, seed, 0)
        grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64)
        out.backward(grad_out)
        reference_out = torch.nn.functional.linear(x, reference.combine(weight, seed, 0), bias)
        grad_weight, grad_x = torch.autograd.grad(reference_out, (weight, x), grad_out)
        expected += grad_weight
        torch.testing.assert_close(x.grad, grad_x)
    torch.testing.assert_close(weight.grad, expected)
    out = OPS.mixed_linear(x, weight, bias, seed, 0)
    with torch.no_grad():
        weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    non_leaf = torch.randn(3, 5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: OPS.mixed_linear(x, w * 1.0, bias, seed, 0), (x.detach().requires_grad_(), non_leaf)
    )


@needs_extension
def test_cuda_build_registers_every_op():
    has = [torch._C._dispatch_has_kernel_for_dispatch_key(f"majority_kernels::{name}", "CUDA") for name in OP_NAMES]
    assert has == [ops.HAS_CUDA_KERNELS] * len(OP_NAMES)


@pytest.mark.gpu
def test_gpu_machine_has_the_cuda_kernels():
    assert ops.HAS_CUDA_KERNELS, f"a GPU is there but backend 'cuda' is not: {_CUDA_REASON}"


# ---- the kernels on the GPU: bit-identical uniforms, the seed read on the device, registration, bad input ------


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("expansion", GPU_EXPANSIONS)
def test_uniforms_identical_to_the_reference(expansion, generator):
    # Mixed in float64 from the float32 uniforms, P matches the reference to 1e-10 only if every uniform is
    # bit-identical: one ulp of a uniform moves P by ~1e-8. Offsets cross a 32-bit counter boundary and wrap 2^64.
    seed = random_seed(generator)
    ones = torch.ones(4099, dtype=torch.float64, device="cuda")
    for offset in (0, 2**32 - 5000, 2**64 - 3000):
        with mk.use_backend("cuda"):
            p = mk.functional.scatter(ones, seed, offset, expansion)
        torch.testing.assert_close(
            p.cpu(), reference.mixing_weights(expansion, 4099, seed, offset), **TOLERANCES[torch.float64]
        )


@pytest.mark.gpu
@needs_cuda_kernels
def test_seed_read_from_the_device_tensor(generator):
    weight = device_randn(4, 100, generator=generator)
    seed = device_seed(5)
    first = OPS.combine(weight, seed, 0)
    seed.fill_(6)  # the kernel reads the new value: nothing was copied to the host at the first call
    second = OPS.combine(weight, seed, 0)
    assert_matches_reference(second.cpu(), reference.combine(cpu64(weight), 6, 0))
    assert not torch.equal(first, second)


@pytest.mark.gpu
@needs_cuda_kernels
def test_op_registration():
    weight = torch.randn(3, 5, 6, device="cuda", dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5, 6, device="cuda", dtype=torch.float64)
    table = torch.randn(3, 9, 6, device="cuda", dtype=torch.float64)
    indices = torch.tensor([[1, 8], [1, 0]], device="cuda")
    x = torch.randn(4, 6, device="cuda", dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, device="cuda", dtype=torch.float64, requires_grad=True)
    seed = device_seed(77)
    torch.library.opcheck(OPS.combine.default, (weight, seed, 3))
    torch.library.opcheck(OPS.scatter.default, (grad, seed, 3, 4))
    torch.library.opcheck(OPS.scatter_add_.default, (weight.detach().clone(), grad, seed, 3))
    torch.library.opcheck(OPS.mixing_weights.default, (seed, 3, 4, 10))
    torch.library.opcheck(OPS.embedding_combine.default, (table, indices, seed, 3))
    torch.library.opcheck(OPS.mixed_linear.default, (x, weight, bias, seed, 3))
    torch.library.opcheck(OPS.mixed_linear.default, (x, weight, None, seed, 3))


@pytest.mark.gpu
@needs_cuda_kernels
def test_bad_input_errors():
    weight = torch.randn(3, 4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="seed must be on cuda"):
        OPS.combine(weight, torch.tensor(1), 0)
    with pytest.raises(RuntimeError, match="seed must be a one-element int64 tensor"):
        OPS.combine(weight, torch.tensor([1, 2], device="cuda"), 0)
    with pytest.raises(RuntimeError, match="out_dtype must be float32"):
        OPS.combine(weight, device_seed(1), 0, torch.int32)
    with pytest.raises(RuntimeError, match="grad_weight must have shape"):
        OPS.scatter_add_(torch.zeros(3, 4, 6, device="cuda"), torch.zeros(4, 5, device="cuda"), device_seed(1), 0)
    with pytest.raises(RuntimeError, match="grad_weight must be contiguous"):
        OPS.scatter_add_(
            torch.zeros(3, 5, 4, device="cuda").transpose(1, 2), torch.zeros(4, 5, device="cuda"), device_seed(1), 0
        )
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        OPS.mixed_linear(torch.zeros(2, 5, device="cuda"), weight.cpu(), None, device_seed(1), 0)
    with pytest.raises(RuntimeError, match="input must have shape"):
        OPS.mixed_linear(torch.zeros(2, 6, device="cuda"), weight, None, device_seed(1), 0)
    with pytest.raises(RuntimeError, match="weight and input must have the same dtype"):
        OPS.mixed_linear(torch.zeros(2, 5, device="cuda", dtype=torch.float64), weight, None, device_seed(1), 0)
    with pytest.raises(RuntimeError, match="indices must be int64 or int32"):
        OPS.embedding_combine(weight, torch.zeros(2, device="cuda"), device_seed(1), 0)


# ---- the fused small-M forward ---------------------------------------------------------------------------------


def _linear_reference(x, weight, bias, seed, offset):
    mixed = reference.combine(cpu64(weight), seed, offset)
    out = cpu64(x) @ mixed.T
    return out if bias is None else out + cpu64(bias)


# (weight dtype, compute dtype): the pairs the fused kernel is built for.
LINEAR_DTYPES = [
    (torch.float32, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float64, torch.float64),
]


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtypes", LINEAR_DTYPES, ids=str)
@pytest.mark.parametrize(
    "rows, out_features, in_features", [(1, 1, 1), (3, 7, 33), (16, 64, 256), (17, 5, 129), (40, 9, 8)]
)
@pytest.mark.parametrize("expansion", [1, 5, 11])
def test_fused_linear_matches_reference(expansion, rows, out_features, in_features, dtypes, generator):
    weight_dtype, dtype = dtypes
    weight = device_randn(
        expansion, out_features, in_features, generator=generator, dtype=weight_dtype, misaligned=expansion == 5
    )
    x = device_randn(rows, in_features, generator=generator, dtype=dtype, misaligned=rows == 3)
    bias = device_randn(out_features, generator=generator, dtype=dtype) if rows != 17 else None
    seed, offset = random_seed(generator), random_offset(generator)
    signed = offset - 2**64 if offset >= 2**63 else offset
    actual = OPS.mixed_linear(x, weight, bias, device_seed(seed), signed)
    assert actual.shape == (rows, out_features) and actual.dtype == dtype
    assert_gemm_matches_reference(actual.cpu(), _linear_reference(x, weight, bias, seed, offset))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("rows", [1, 8, 16])
def test_fused_and_combine_paths_agree(rows, autocast, monkeypatch, generator):
    layer = mk.MKLinear(96, 40, expansion=4, init="independent", device="cuda")
    x = device_randn(2, rows, 96, generator=generator)
    results = {}
    for path in ("fused", "combine"):
        monkeypatch.setenv(paths.FORWARD_VARIABLE, path)
        torch.manual_seed(3)
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        with mk.use_backend("cuda"), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            out = layer(xg)
        out.float().square().sum().backward()
        results[path] = (out.float(), xg.grad, layer.weight.grad.clone(), layer.bias.grad.clone())
    tolerance = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-4, atol=1e-4)
    for fused, combined in zip(results["fused"], results["combine"]):
        torch.testing.assert_close(fused, combined, **tolerance)


@pytest.mark.gpu
@needs_cuda_kernels
def test_fused_linear_gradcheck():
    weight = torch.randn(3, 4, 6, device="cuda", dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 6, device="cuda", dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, device="cuda", dtype=torch.float64, requires_grad=True)
    seed = device_seed(21)
    assert torch.autograd.gradcheck(lambda *a: OPS.mixed_linear(*a, seed, 3), (x, weight, bias))
    assert torch.autograd.gradgradcheck(lambda *a: OPS.mixed_linear(*a, seed, 3), (x, weight, bias))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("rows", [4, 64])
def test_compiled_linear(rows, generator):
    weight = device_randn(4, 32, 48, generator=generator)
    x = device_randn(rows, 48, generator=generator)
    seed = device_seed(99)
    with mk.use_backend("cuda"):
        eager = mk.functional.majority_linear(x, weight, seed=seed, offset=5)
        compiled = torch.compile(lambda a, w: mk.functional.majority_linear(a, w, seed=seed, offset=5), fullgraph=True)(
            x, weight
        )
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


# ---- CUDA graphs -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("rows", [8, 64], ids=["fused", "combine"])
def test_cuda_graph_training_step(rows, generator):
    torch.manual_seed(0)
    layer = mk.MKLinear(64, 32, expansion=4, init="independent", device="cuda")
    x = device_randn(rows, 64, generator=generator)

    def step():
        out = layer(x)
        grads = torch.autograd.grad(out.square().sum(), (layer.weight, layer.bias))
        return (out, *grads)

    with mk.use_backend("cuda"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture (allocator, cuBLAS workspaces)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        torch.cuda.manual_seed(1234)
        eager = [t.clone() for t in step()]
        torch.cuda.manual_seed(1234)
        graph.replay()
        first = [t.clone() for t in captured]
        graph.replay()
    for replayed, expected in zip(first, eager):
        torch.testing.assert_close(replayed, expected, rtol=1e-6, atol=1e-6)
    # Each replay draws a fresh seed on the device, so fresh P: the next replay mixes differently.
    assert not torch.equal(captured[0], first[0])
