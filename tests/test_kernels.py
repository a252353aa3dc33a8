"""combine / scatter / scatter-accumulate of every CPU backend against the float64 reference."""

import pytest
import torch
from helpers import CPU_BACKENDS, EXPANSIONS, assert_matches_reference, random_seed

import majority_kernels as mk
from majority_kernels import reference

SHAPES = [(1,), (7,), (64,), (65,), (3, 5), (13, 17), (2, 3, 5, 7), (1, 1, 1)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _weight(expansion, shape, dtype, generator):
    return torch.randn(expansion, *shape, dtype=torch.float64, generator=generator).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_combine_float32(backend, expansion, shape, generator):
    weight = _weight(expansion, shape, torch.float32, generator)
    seed, offset = random_seed(generator), int(torch.randint(0, 2**40, (), generator=generator))
    with mk.use_backend(backend):
        actual = mk.functional.combine(weight, seed, offset)
    assert actual.shape == shape and actual.dtype == torch.float32
    assert_matches_reference(actual, reference.combine(weight.double(), seed, offset))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_dtype", [None, *DTYPES])
def test_combine_dtypes(backend, dtype, out_dtype, generator):
    weight = _weight(3, (11, 13), dtype, generator)
    seed = random_seed(generator)
    with mk.use_backend(backend):
        actual = mk.functional.combine(weight, seed, 5, out_dtype=out_dtype)
    assert actual.dtype == (out_dtype or dtype)
    # The reference mixes the same (rounded) weight values in float64.
    assert_matches_reference(actual, reference.combine(weight.double(), seed, 5), dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("shape", [(1,), (65,), (13, 17), (2, 3, 5, 7)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter(backend, expansion, shape, dtype, generator):
    grad = _weight(1, shape, dtype, generator)[0]
    seed, offset = random_seed(generator), random_seed(generator)
    with mk.use_backend(backend):
        actual = mk.functional.scatter(grad, seed, offset, expansion)
    assert actual.shape == (expansion, *shape) and actual.dtype == dtype
    assert_matches_reference(actual, reference.scatter(grad.double(), seed, offset, expansion))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_accumulates_in_place(backend, expansion, dtype, generator):
    grad = _weight(1, (9, 31), dtype, generator)[0]
    existing = _weight(expansion, (9, 31), dtype, generator)
    before = existing.double().clone()
    seed = random_seed(generator)
    with mk.use_backend(backend):
        result = mk.functional.scatter(grad, seed, 3, expansion, accumulate_into=existing)
    assert result is existing
    assert_matches_reference(existing, before + reference.scatter(grad.double(), seed, 3, expansion))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_scatter_out_dtype(backend, generator):
    grad = _weight(1, (6, 7), torch.bfloat16, generator)[0]
    with mk.use_backend(backend):
        actual = mk.functional.scatter(grad, 4, 0, 3, out_dtype=torch.float32)
    assert actual.dtype == torch.float32
    assert_matches_reference(actual, reference.scatter(grad.double(), 4, 0, 3), grad.dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_weight_and_grad(backend, generator):
    base = _weight(4, (10, 12), torch.float32, generator)
    weight = base.transpose(1, 2)  # [4, 12, 10], not contiguous
    grad = torch.randn(12, 20, generator=generator)[:, ::2]
    with mk.use_backend(backend):
        combined = mk.functional.combine(weight, 8, 0)
        scattered = mk.functional.scatter(grad, 8, 0, 4)
    assert_matches_reference(combined, reference.combine(weight.contiguous().double(), 8, 0))
    assert_matches_reference(scattered, reference.scatter(grad.contiguous().double(), 8, 0, 4))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_tensors(backend):
    with mk.use_backend(backend):
        assert mk.functional.combine(torch.empty(3, 0, 5), 1).shape == (0, 5)
        assert mk.functional.scatter(torch.empty(0, 5), 1, 0, 3).shape == (3, 0, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_seed_as_tensor_equals_int(backend, generator):
    weight = _weight(4, (5, 6), torch.float32, generator)
    with mk.use_backend(backend):
        torch.testing.assert_close(mk.functional.combine(weight, torch.tensor(2**62 + 5), 9),
                                   mk.functional.combine(weight, 2**62 + 5, 9), rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_and_inf_propagate(backend):
    weight = torch.ones(3, 4, 5)
    weight[1, 2, 3] = float("nan")
    weight[0, 0, 0] = float("inf")
    with mk.use_backend(backend):
        combined = mk.functional.combine(weight, 3)
        scattered = mk.functional.scatter(weight[1], 3, 0, 2)
    assert torch.isnan(combined[2, 3]) and torch.isinf(combined[0, 0])
    assert torch.isfinite(combined).sum() == 18
    assert torch.isnan(scattered[:, 2, 3]).all()


def test_backends_agree_on_large_tensor(generator):
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the C++ extension is not built (MK_BUILD_EXT=0 install)")
    weight = _weight(4, (300, 257), torch.float32, generator)
    seed = random_seed(generator)
    with mk.use_backend("cpu"):
        fast = mk.functional.combine(weight, seed, 2**32 - 1000)
    assert_matches_reference(fast, reference.combine(weight.double(), seed, 2**32 - 1000))
