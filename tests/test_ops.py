"""The registered ops: opcheck, float64 gradcheck (also second order), torch.compile(fullgraph=True)."""

import pytest
import torch
from helpers import FAST_CPU_BACKENDS, assert_compiled_training_matches_eager, seed_tensor

import majority_kernels as mk
from majority_kernels import ops

pytestmark = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="the C++ extension is not built (MK_BUILD_EXT=0)")

OPS = torch.ops.majority_kernels if ops.HAS_EXTENSION else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_every_op(dtype):
    weight = torch.randn(3, 5, 7, dtype=dtype, requires_grad=True)
    grad = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    cases = [
        (OPS.combine.default, (weight, seed_tensor(), 11, None)),
        (OPS.combine.default, (weight, seed_tensor(), 11, torch.bfloat16)),
        (OPS.scatter.default, (grad, seed_tensor(), 11, 3, None)),
        (OPS.scatter.default, (grad, seed_tensor(), 11, 3, torch.float64)),
        (OPS.scatter_add_.default, (torch.randn(3, 5, 7, dtype=dtype), grad.detach(), seed_tensor(), 11)),
        (OPS.mixing_weights.default, (seed_tensor(), 11, 3, 35)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("expansion", [1, 3, 5])
def test_gradcheck_combine_and_scatter(expansion):
    weight = torch.randn(expansion, 4, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    seed = seed_tensor(99)
    assert torch.autograd.gradcheck(lambda w: OPS.combine(w, seed, 3, None), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: OPS.combine(w, seed, 3, None), (weight,))
    assert torch.autograd.gradcheck(lambda g: OPS.scatter(g, seed, 3, expansion, None), (grad,))


def test_gradcheck_majority_linear_and_conv():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: mk.functional.majority_linear(x, w, b, seed=7), (x, w, b))
    xc = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(3, 6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: mk.functional.majority_conv2d(x, w, None, 2, 1, (2, 1), 2, seed=5), (xc, wc)
    )


class _TwinProjections(torch.nn.Module):
    """Two same-shape MK layers on the same input (like attention's q and k): each must draw its own seed."""

    def __init__(self):
        super().__init__()
        self.q, self.k = mk.MKLinear(16, 16, expansion=2), mk.MKLinear(16, 16, expansion=2)
        with torch.no_grad():
            self.k.weight.copy_(self.q.weight)

    def forward(self, x):
        return self.q(x) * self.k(x)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_compile_fullgraph_training_matches_eager(backend):
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            mk.MKLinear(8, 16, expansion=3),
            torch.nn.ReLU(),
            _TwinProjections(),
            mk.MKConv1d(1, 2, 3, padding=1, expansion=2),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 1),
        )

    with mk.use_backend(backend):
        assert_compiled_training_matches_eager(make, torch.randn(4, 1, 8), steps=3)


def test_compile_fullgraph_functional_with_seed_tensor():
    torch._dynamo.reset()
    weight = torch.randn(4, 6, 5, requires_grad=True)
    x = torch.randn(3, 5)

    def step(x, weight, seed):
        return mk.functional.majority_linear(x, weight, seed=seed).sum()

    compiled = torch.compile(step, fullgraph=True)
    for seed in (1, 2):  # a new seed tensor value must not need a new graph
        seed_t = torch.tensor(seed)
        expected = step(x, weight, seed_t)
        (g_expected,) = torch.autograd.grad(expected, weight)
        actual = compiled(x, weight, seed_t)
        (g_actual,) = torch.autograd.grad(actual, weight)
        torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(g_actual, g_expected)
