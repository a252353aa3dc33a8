"""The mixing weights of docs/design.md section 4 (spec v2): known-answer vectors, cross-backend equality,
Dirichlet(1) statistics."""

import pytest
import torch
from helpers import CPU_BACKENDS, EXPANSIONS, FAST_CPU_BACKENDS, random_seed

import majority_kernels as mk
from majority_kernels import reference


def test_reference_philox_matches_vectors(rng_vectors):
    for case in rng_vectors["philox"]:
        counter = tuple(torch.tensor([c]) for c in case["counter"])
        key = tuple(torch.tensor([k]) for k in case["key"])
        words = [int(w) for w in reference.philox4x32(counter, key)]
        assert words == case["words"]


def test_reference_uniforms_match_vectors_exactly(rng_vectors):
    for case in rng_vectors["uniforms"]:
        # Element 0 of a 5-copy weight (4 uniforms) at offset c uses exactly counter c.
        u = reference.uniforms(5, 1, case["seed"], case["c"])[:, 0]
        assert u.dtype == torch.float32
        assert u.tolist() == case["u"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixing_weights_match_vectors(backend, rng_vectors):
    with mk.use_backend(backend):
        for case in rng_vectors["mixing"]:
            p = mk.functional.mixing_weights(case["e"], case["n"], case["seed"], case["offset"], dtype=torch.float64)
            torch.testing.assert_close(p, torch.tensor(case["P"], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("offset", [0, 12345, 2**32 - 100, 2**64 - 150, 2**63 + 7])
def test_backend_equals_reference(backend, expansion, offset, generator):
    # n = 193 spans several CPU blocks; the offsets cross the 32-bit counter boundary and wrap mod 2^64.
    seed = random_seed(generator)
    expected = reference.mixing_weights(expansion, 193, seed, offset)
    with mk.use_backend(backend):
        actual = mk.functional.mixing_weights(expansion, 193, seed, offset)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-7)


def test_mixing_weights_shape_device_dtype():
    p = mk.functional.mixing_weights(3, (4, 5), 9, dtype=torch.float64)
    assert p.shape == (3, 4, 5) and p.dtype == torch.float64
    torch.testing.assert_close(p.reshape(3, 20), mk.functional.mixing_weights(3, 20, 9, dtype=torch.float64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", [2, 3, 4, 5, 8, 16])
def test_dirichlet_statistics(backend, expansion, generator):
    # The Triton interpreter draws ~100x slower: fewer elements there, with bounds that follow n. Its draws equal
    # the reference's bit for bit (test_backend_equals_reference), so the sharp check of the spec is the others'.
    n = 20_000 if backend == "triton" else 200_000
    with mk.use_backend(backend):
        p = mk.functional.mixing_weights(expansion, n, random_seed(generator), dtype=torch.float64)
    assert bool((p >= 0).all())
    torch.testing.assert_close(p.sum(0), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-6)
    mean, var = 1 / expansion, (expansion - 1) / (expansion**2 * (expansion + 1))
    # Standard errors of the sample mean and variance over n elements; 6 of them is a generous, still sharp bound.
    assert abs(p[0].mean().item() - mean) < 6 * (var / n) ** 0.5
    assert abs(p.var(dim=1).mean().item() - var) < 6 * var * (2 / n) ** 0.5 * 2
    # Copies of one element are negatively correlated as Dirichlet(1) says: corr = -1 / (e - 1).
    corr, expected_corr = torch.corrcoef(p[:2])[0, 1].item(), -1 / (expansion - 1)
    # 6 standard errors of a sample correlation, (1 - rho^2) / sqrt(n), and a floor for rho = -1 exactly (e = 2).
    assert abs(corr - expected_corr) < 6 * (1 - expected_corr**2) / n**0.5 + 1e-9


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_independent_across_elements_and_steps(backend):
    n = 20_000 if backend == "triton" else 100_000
    with mk.use_backend(backend):
        p = mk.functional.mixing_weights(4, n, 123, dtype=torch.float64)[0]
        # The next step of a layer: a different seed, or the offset just past this step's counters.
        next_seed = mk.functional.mixing_weights(4, n, 124, dtype=torch.float64)[0]
        next_offset = mk.functional.mixing_weights(4, n, 123, n, dtype=torch.float64)[0]
    bound = 6 / n**0.5
    assert abs(torch.corrcoef(torch.stack([p[:-1], p[1:]]))[0, 1].item()) < bound
    assert abs(torch.corrcoef(torch.stack([p, next_seed]))[0, 1].item()) < bound
    assert abs(torch.corrcoef(torch.stack([p, next_offset]))[0, 1].item()) < bound


def test_expansion_one_is_identity():
    for backend in CPU_BACKENDS:
        with mk.use_backend(backend):
            p = mk.functional.mixing_weights(1, 1000, 77, dtype=torch.float64)
        torch.testing.assert_close(p, torch.ones_like(p), rtol=1e-7, atol=0)
