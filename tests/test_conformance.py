"""Backend conformance: every (backend, device) pair that can run here against the float64 reference.

One suite for every backend: combine, scatter, scatter-accumulate, the mixing weights, the linear and
convolution layers' functional forms and the embedding lookup, forward and gradients, in every dtype, on odd and
tiny shapes, misaligned views and e = 1..9 and 11 (9: the largest unrolled sorting network of the CPU kernels;
11: the generic form beyond it). The pairs: reference and cpu on CPU tensors, triton on CPU tensors under its
interpreter (conftest sets TRITON_INTERPRET=1 without a GPU), and, on a GPU, triton and cuda on CUDA tensors (the
`gpu` tests). A pair that cannot run here is skipped with the backend's own reason. What is specific to one backend
(its RNG internals, path choice, registration, build) stays in that backend's test file.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TOLERANCES,
    assert_gemm_matches_reference,
    assert_matches_reference,
    cpu64,
    randn,
    random_indices,
    random_offset,
    random_seed,
)

import majority_kernels as mk
from majority_kernels import backends, reference


@dataclasses.dataclass(frozen=True)
class Pair:
    backend: str
    device: str

    @property
    def interpreted(self) -> bool:
        """Triton's interpreter: correct but slow, so it gets the smaller of some parameter lists."""
        return self.backend == "triton" and self.device == "cpu"

    def __str__(self) -> str:
        return f"{self.backend}-{self.device}"


def _pair_params() -> list:
    params = []
    for backend, device in [
        ("reference", "cpu"),
        ("cpu", "cpu"),
        ("triton", "cpu"),
        ("triton", "cuda"),
        ("cuda", "cuda"),
    ]:
        reason = backends.BACKENDS[backend].unavailable(torch.device(device))
        marks = [pytest.mark.skipif(reason is not None, reason=f"backend '{backend}' on {device}: {reason}")]
        if device == "cuda":
            marks.append(pytest.mark.gpu)
        params.append(pytest.param(Pair(backend, device), marks=marks, id=f"{backend}-{device}"))
    return params


PAIRS = _pair_params()
pair_param = pytest.mark.parametrize("pair", PAIRS)

EXPANSIONS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# 1, primes, the 4- and 8-element packs of the CUDA kernels and one past them, the Triton block (1024) crossed,
# several dimensions, all ones.
SHAPES = [(1,), (3,), (8,), (65,), (13, 17), (1500,), (2, 3, 5, 7), (1, 1, 1)]
ALIGNMENTS = pytest.mark.parametrize("misaligned", [False, True], ids=["aligned", "misaligned"])


def _on(pair: Pair):
    return mk.use_backend(pair.backend)


def _host(actual: torch.Tensor) -> torch.Tensor:
    """A result on the CPU in its own dtype (the tolerance follows it)."""
    return actual.detach().cpu()


# ---- combine ------------------------------------------------------------------------------------------------------


@pair_param
@ALIGNMENTS
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_combine(pair, expansion, shape, misaligned, generator):
    weight = randn(expansion, *shape, generator=generator, device=pair.device, misaligned=misaligned)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        actual = mk.functional.combine(weight, seed, offset)
    assert actual.shape == shape and actual.dtype == torch.float32 and actual.device == weight.device
    assert_matches_reference(_host(actual), reference.combine(cpu64(weight), seed, offset))


@pair_param
@ALIGNMENTS
@pytest.mark.parametrize("out_dtype", [None, *DTYPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_dtypes(pair, dtype, out_dtype, misaligned, generator):
    weight = randn(3, 11, 13, generator=generator, dtype=dtype, device=pair.device, misaligned=misaligned)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        actual = mk.functional.combine(weight, seed, offset, out_dtype=out_dtype)
    assert actual.dtype == (out_dtype or dtype)
    # The reference mixes the same (rounded) weight values in float64.
    assert_matches_reference(_host(actual), reference.combine(cpu64(weight), seed, offset), dtype)


# ---- scatter and scatter-accumulate ---------------------------------------------------------------------------------


@pair_param
@ALIGNMENTS
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_scatter(pair, expansion, shape, misaligned, generator):
    grad = randn(*shape, generator=generator, device=pair.device, misaligned=misaligned)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        actual = mk.functional.scatter(grad, seed, offset, expansion)
    assert actual.shape == (expansion, *shape) and actual.dtype == torch.float32
    assert_matches_reference(_host(actual), reference.scatter(cpu64(grad), seed, offset, expansion))


@pair_param
@pytest.mark.parametrize("out_dtype", [None, *DTYPES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_dtypes(pair, dtype, out_dtype, generator):
    grad = randn(9, 31, generator=generator, dtype=dtype, device=pair.device, misaligned=True)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        actual = mk.functional.scatter(grad, seed, offset, 3, out_dtype=out_dtype)
    assert actual.dtype == (out_dtype or dtype)
    assert_matches_reference(_host(actual), reference.scatter(cpu64(grad), seed, offset, 3), dtype)


@pair_param
@pytest.mark.parametrize("grad_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("expansion", [1, 3, 4, 8, 11])
def test_scatter_accumulates_in_place(pair, expansion, dtype, grad_dtype, generator):
    grad = randn(9, 31, generator=generator, dtype=grad_dtype, device=pair.device)
    existing = randn(expansion, 9, 31, generator=generator, dtype=dtype, device=pair.device)
    before = cpu64(existing)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        result = mk.functional.scatter(grad, seed, offset, expansion, accumulate_into=existing)
    assert result is existing
    expected = before + reference.scatter(cpu64(grad), seed, offset, expansion)
    assert_matches_reference(_host(existing), expected, grad_dtype)


# ---- combine and scatter: layouts, edge values ------------------------------------------------------------------


@pair_param
def test_non_contiguous_weight_and_grad(pair, generator):
    weight = randn(4, 10, 12, generator=generator, device=pair.device).transpose(1, 2)  # [4, 12, 10]
    grad = randn(12, 20, generator=generator, device=pair.device)[:, ::2]
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        combined = mk.functional.combine(weight, seed, offset)
        scattered = mk.functional.scatter(grad, seed, offset, 4)
    assert_matches_reference(_host(combined), reference.combine(cpu64(weight), seed, offset))
    assert_matches_reference(_host(scattered), reference.scatter(cpu64(grad), seed, offset, 4))


@pair_param
def test_empty_tensors(pair):
    with _on(pair):
        assert mk.functional.combine(torch.empty(3, 0, 5, device=pair.device), 1).shape == (0, 5)
        assert mk.functional.scatter(torch.empty(0, 5, device=pair.device), 1, 0, 3).shape == (3, 0, 5)


@pair_param
def test_nan_and_inf_propagate(pair):
    weight = torch.ones(3, 4, 5, device=pair.device)
    weight[1, 2, 3] = float("nan")
    weight[0, 0, 0] = float("inf")
    with _on(pair):
        combined = mk.functional.combine(weight, 3).cpu()
        scattered = mk.functional.scatter(weight[1], 3, 0, 2).cpu()
    assert torch.isnan(combined[2, 3]) and torch.isinf(combined[0, 0])
    assert torch.isfinite(combined).sum() == 18
    assert torch.isnan(scattered[:, 2, 3]).all()


@pair_param
def test_seed_as_tensor_equals_int(pair, generator):
    weight = randn(4, 5, 6, generator=generator, device=pair.device)
    with _on(pair):
        as_tensor = mk.functional.combine(weight, torch.tensor(2**62 + 5, device=pair.device), 9)
        as_int = mk.functional.combine(weight, 2**62 + 5, 9)
    assert torch.equal(as_tensor, as_int)


@pair_param
def test_counters_cross_the_32_bit_boundary_and_wrap(pair, generator):
    # 300 x 257 elements: many blocks of every backend, the offsets' counters crossing 2^32 and wrapping 2^64.
    if pair.interpreted:
        pytest.skip("77 Triton blocks per call are minutes in the interpreter; 1500 elements cross its blocks")
    weight = randn(4, 300, 257, generator=generator, device=pair.device)
    seed = random_seed(generator)
    for offset in (2**32 - 1000, 2**64 - 30000):
        with _on(pair):
            actual = mk.functional.combine(weight, seed, offset)
        assert_matches_reference(_host(actual), reference.combine(cpu64(weight), seed, offset))


# ---- the mixing weights -------------------------------------------------------------------------------------------


@pair_param
@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_mixing_weights(pair, expansion, generator):
    # Relative accuracy: a small P (a small spacing of the uniforms) is as accurate as a large one.
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        p = mk.functional.mixing_weights(expansion, 2100, seed, offset, device=pair.device)
    assert p.dtype == torch.float32 and p.shape == (expansion, 2100)
    expected = reference.mixing_weights(expansion, 2100, seed, offset)
    torch.testing.assert_close(cpu64(p), expected, rtol=2e-6, atol=0)
    torch.testing.assert_close(cpu64(p).sum(0), torch.ones(2100, dtype=torch.float64), rtol=0, atol=1e-6)


@pair_param
def test_mixing_weights_match_vectors(pair, rng_vectors):
    with _on(pair):
        for case in rng_vectors["mixing"]:
            p = mk.functional.mixing_weights(
                case["e"], case["n"], case["seed"], case["offset"], device=pair.device, dtype=torch.float64
            )
            torch.testing.assert_close(p.cpu(), torch.tensor(case["P"], dtype=torch.float64), rtol=0, atol=1e-6)


# ---- the linear layer ---------------------------------------------------------------------------------------------


def _check_layer_against_reference(pair, functional, reference_fn, x, weight, bias, generator, gemm=True):
    """functional(x, weight, bias, seed, offset) on the pair against reference_fn(x, W_eff, bias) in float64: the
    output and the gradients of x, of every copy and of the bias."""
    seed, offset = random_seed(generator), random_offset(generator)
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    with _on(pair):
        out = functional(x, weight, bias, seed, offset)
    grad_out = randn(*out.shape, generator=generator, device=pair.device, dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)

    references = [cpu64(t).requires_grad_() for t in leaves]
    x64, weight64 = references[:2]
    bias64 = references[2] if bias is not None else None
    expected = reference_fn(x64, reference.combine(weight64, seed, offset), bias64)
    expected_grads = torch.autograd.grad(expected, references, cpu64(grad_out))
    check = assert_gemm_matches_reference if gemm else assert_matches_reference
    for actual, wanted in zip((out, *grads), (expected.detach(), *expected_grads)):
        assert actual.device == x.device
        check(actual.detach().cpu(), wanted)


@pair_param
@pytest.mark.parametrize("expansion", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 19, 7), (2, 3, 33, 17)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_linear(pair, expansion, shape, with_bias, generator):
    *batch, in_features, out_features = shape
    x = randn(*batch, in_features, generator=generator, device=pair.device)
    weight = randn(expansion, out_features, in_features, generator=generator, device=pair.device)
    bias = randn(out_features, generator=generator, device=pair.device) if with_bias else None
    _check_layer_against_reference(
        pair,
        lambda x, w, b, seed, offset: mk.functional.majority_linear(x, w, b, seed=seed, offset=offset),
        F.linear,
        x,
        weight,
        bias,
        generator,
    )


@pair_param
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_linear_dtypes(pair, dtype, generator):
    x = randn(6, 24, generator=generator, device=pair.device, dtype=dtype)
    weight = randn(3, 10, 24, generator=generator, device=pair.device, dtype=dtype)
    bias = randn(10, generator=generator, device=pair.device, dtype=dtype)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        out = mk.functional.majority_linear(x, weight, bias, seed=seed, offset=offset)
    assert out.dtype == dtype
    expected = F.linear(cpu64(x), reference.combine(cpu64(weight), seed, offset), cpu64(bias))
    tolerance = dict(TOLERANCES[dtype])
    tolerance["atol"] = max(tolerance["atol"], 3e-5) * (8 if dtype != torch.float64 else 1)
    torch.testing.assert_close(cpu64(out), expected, **tolerance)


# ---- convolutions -------------------------------------------------------------------------------------------------

# (dims, in_channels, out_channels, kernel, input spatial, keywords)
CONVS = [
    (1, 3, 5, 3, (11,), dict(padding=1)),
    (2, 4, 6, 3, (7, 9), dict(stride=2, padding=1)),
    (2, 4, 6, 1, (5, 5), dict(groups=2)),
    (2, 2, 3, 3, (6, 6), dict(dilation=2, padding="same")),
    (3, 2, 3, 2, (4, 5, 3), dict()),
]
CONV_FUNCTIONS = {
    1: (mk.functional.majority_conv1d, F.conv1d),
    2: (mk.functional.majority_conv2d, F.conv2d),
    3: (mk.functional.majority_conv3d, F.conv3d),
}


@pair_param
@pytest.mark.parametrize("expansion", [1, 3, 4])
@pytest.mark.parametrize("case", CONVS, ids=lambda case: f"conv{case[0]}d-{case[5]}")
def test_conv(pair, expansion, case, generator):
    dims, cin, cout, k, spatial, keywords = case
    groups = keywords.get("groups", 1)
    x = randn(2, cin, *spatial, generator=generator, device=pair.device)
    weight = randn(expansion, cout, cin // groups, *(k,) * dims, generator=generator, device=pair.device)
    bias = randn(cout, generator=generator, device=pair.device)
    mixed_conv, dense_conv = CONV_FUNCTIONS[dims]
    _check_layer_against_reference(
        pair,
        lambda x, w, b, seed, offset: mixed_conv(x, w, b, **keywords, seed=seed, offset=offset),
        lambda x, w, b: dense_conv(x, w, b, **keywords),
        x,
        weight,
        bias,
        generator,
    )


# ---- embeddings ---------------------------------------------------------------------------------------------------

# (rows, dim, indices shape): 1, primes, dims around the CPU kernels' 128-column blocks and the CUDA kernels'
# 16-byte packs, 0-d and 3-d indices.
TABLES = [(1, 1, ()), (7, 3, (5,)), (13, 130, (2, 3)), (5, 257, (4,)), (31, 64, (3, 2, 2)), (2, 129, (1, 1))]


@pair_param
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("expansion", [1, 2, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("table", TABLES, ids=str)
def test_embedding(pair, table, expansion, index_dtype, generator):
    rows, dim, shape = table
    weight = randn(
        expansion, rows, dim, generator=generator, device=pair.device, dtype=torch.float64, misaligned=dim % 2 == 1
    ).requires_grad_()
    indices = random_indices(rows, shape, generator, index_dtype, pair.device)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        out = mk.functional.majority_embedding(indices, weight, seed=seed, offset=offset)
    assert out.shape == (*shape, dim) and out.dtype == torch.float64
    assert_matches_reference(_host(out), reference.embedding_combine(cpu64(weight), indices.cpu(), seed, offset))
    grad = randn(*shape, dim, generator=generator, device=pair.device, dtype=torch.float64)
    (grad_weight,) = torch.autograd.grad(out, weight, grad)
    expected = reference.embedding_scatter(cpu64(grad), indices.cpu(), seed, offset, expansion, rows)
    assert_matches_reference(_host(grad_weight), expected)


@pair_param
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_dtypes(pair, dtype, generator):
    weight = randn(4, 11, 40, generator=generator, device=pair.device, dtype=dtype).requires_grad_()
    indices = random_indices(11, (3, 5), generator, device=pair.device)
    seed, offset = random_seed(generator), random_offset(generator)
    with _on(pair):
        out = mk.functional.majority_embedding(indices, weight, seed=seed, offset=offset)
    assert out.dtype == dtype  # as F.embedding: the table's dtype
    assert_matches_reference(_host(out), reference.embedding_combine(cpu64(weight), indices.cpu(), seed, offset), dtype)
    grad = randn(3, 5, 40, generator=generator, device=pair.device, dtype=dtype)
    (grad_weight,) = torch.autograd.grad(out, weight, grad)
    assert grad_weight.dtype == dtype
    expected = reference.embedding_scatter(cpu64(grad), indices.cpu(), seed, offset, 4, 11)
    # A row looked up n times gets n products rounded to the table's dtype, added in the backend's own order.
    repeats = int(torch.bincount(indices.reshape(-1).cpu(), minlength=11).max())
    tolerance = dict(TOLERANCES[dtype])
    tolerance["atol"] += repeats * torch.finfo(dtype).eps * float(expected.abs().max())
    torch.testing.assert_close(_host(grad_weight).double(), expected, **tolerance)


@pair_param
def test_embedding_empty_lookups_and_empty_rows(pair, generator):
    weight = randn(2, 4, 3, generator=generator, device=pair.device)
    empty = torch.zeros(0, 5, dtype=torch.int64, device=pair.device)
    with _on(pair):
        assert mk.functional.majority_embedding(empty, weight, seed=1).shape == (0, 5, 3)
        no_columns = torch.empty(2, 4, 0, device=pair.device)
        assert mk.functional.majority_embedding(torch.tensor([1, 3], device=pair.device), no_columns, seed=1).shape == (
            2,
            0,
        )
