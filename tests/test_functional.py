"""majority_linear / majority_conv{1,2,3}d of every CPU backend against the float64 reference: outputs and every
gradient (input, each copy of the weight, bias)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import CPU_BACKENDS, EXPANSIONS, FAST_CPU_BACKENDS, assert_gemm_matches_reference, random_seed

import majority_kernels as mk
from majority_kernels import reference


def _leaf(tensor):
    return tensor.detach().clone().requires_grad_(True)


def _compare(backend, op, reference_op, inputs, seed, offset=0):
    """Runs op (the library's) and reference_op (float64, P materialised) on the same inputs, checks the outputs
    and the gradients of every input against a random output gradient."""
    ours = [_leaf(t) for t in inputs]
    theirs = [_leaf(t.double()) for t in inputs]
    with mk.use_backend(backend):
        out = op(*ours, seed=seed, offset=offset)
    expected = reference_op(*theirs, seed, offset)
    assert_gemm_matches_reference(out, expected)
    grad_out = torch.randn_like(expected)
    out.backward(grad_out.to(out.dtype))
    expected.backward(grad_out)
    for mine, oracle in zip(ours, theirs):
        assert_gemm_matches_reference(mine.grad, oracle.grad)


def _reference_linear(x, w, b, seed, offset):
    return F.linear(x, reference.combine(w, seed, offset), b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 3, 7), (13, 17, 11), (0, 4, 6), (33, 65, 31)])
def test_linear(backend, expansion, m, n, k, generator):
    x = torch.randn(m, k, generator=generator)
    w = torch.randn(expansion, n, k, generator=generator)
    b = torch.randn(n, generator=generator)
    _compare(backend, mk.functional.majority_linear, _reference_linear, [x, w, b], random_seed(generator), 77)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_linear_batched_input_without_bias(backend, generator):
    x = torch.randn(2, 3, 4, 9, generator=generator)
    w = torch.randn(3, 5, 9, generator=generator)
    with mk.use_backend(backend):
        out = mk.functional.majority_linear(x, w, seed=3)
    assert out.shape == (2, 3, 4, 5)
    assert_gemm_matches_reference(out, _reference_linear(x.double(), w.double(), None, 3, 0))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_linear_float64(backend, generator):
    x = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    w = torch.randn(3, 5, 6, dtype=torch.float64, generator=generator)
    _compare(
        backend,
        lambda x, w, seed, offset: mk.functional.majority_linear(x, w, seed=seed, offset=offset),
        lambda x, w, seed, offset: _reference_linear(x, w, None, seed, offset),
        [x, w],
        11,
    )


CONV_CASES = [
    # dims, input shape, weight shape without expansion, stride, padding, dilation, groups
    (1, (2, 4, 11), (6, 2, 3), 2, 1, 2, 2),
    (1, (3, 1, 1), (2, 1, 1), 1, 0, 1, 1),
    (2, (2, 3, 7, 6), (5, 3, 3, 2), (2, 1), (1, 0), (1, 2), 1),
    (2, (1, 4, 5, 5), (4, 1, 3, 3), 1, "same", 1, 4),
    (2, (5, 6, 7), (2, 5, 2, 2), 1, 0, 1, 1),  # unbatched
    (3, (1, 2, 5, 4, 6), (4, 1, 2, 3, 2), (1, 2, 1), 1, 1, 2),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", [1, 3, 4])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(backend, expansion, case, generator):
    dims, x_shape, w_shape, stride, padding, dilation, groups = case
    ours = getattr(mk.functional, f"majority_conv{dims}d")
    dense = getattr(F, f"conv{dims}d")
    x = torch.randn(*x_shape, generator=generator)
    w = torch.randn(expansion, *w_shape, generator=generator)
    b = torch.randn(w_shape[0], generator=generator)

    def op(x, w, b, seed, offset):
        return ours(x, w, b, stride, padding, dilation, groups, seed=seed, offset=offset)

    def reference_op(x, w, b, seed, offset):
        return dense(x, reference.combine(w, seed, offset), b, stride, padding, dilation, groups)

    _compare(backend, op, reference_op, [x, w, b], random_seed(generator))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_bfloat16(backend, generator):
    x = torch.randn(8, 16, generator=generator)
    w = torch.randn(4, 12, 16, generator=generator, requires_grad=True)
    with mk.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mk.functional.combine(w, 5, out_dtype=torch.get_autocast_dtype("cpu"))
        out = mk.functional.majority_linear(x, w, seed=5)
    assert mixed.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    expected = _reference_linear(x.double(), w.detach().double(), None, 5, 0)
    torch.testing.assert_close(out.double(), expected, rtol=3e-2, atol=3e-2)
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32  # the master weights keep their dtype
    expected_grad = reference.scatter(x.double().sum(0).expand(12, 16), 5, 0, 4)
    torch.testing.assert_close(w.grad.double(), expected_grad, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)  # the reference backend materialises P on purpose
def test_saved_tensors_do_not_grow_with_expansion(backend, generator):
    x = torch.randn(16, 32, generator=generator, requires_grad=True)
    saved_bytes = {}
    for expansion in (1, 2, 8):
        w = torch.randn(expansion, 24, 32, generator=generator, requires_grad=True)
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with mk.use_backend(backend), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mk.functional.majority_linear(x, w, seed=1)
        saved_bytes[expansion] = sum(storages.values())
    # At most the input (16 x 32) and W_eff (24 x 32) float32, plus the 8-byte seed; nothing of size e x |W|. (One
    # copy may take another path than several, the dense layer's GEMMs on the GPU backends, and save other tensors.)
    assert saved_bytes[2] == saved_bytes[8]
    assert max(saved_bytes.values()) <= (16 * 32 + 24 * 32) * 4 + 8
