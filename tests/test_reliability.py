"""The library gives the right answer, or a clear error, under everything PyTorch lets a user do to a model:

* eval mode and the dense layer follow every way a parameter changes (fused and foreach optimizer steps, writes
  through `.data`, load_state_dict, `.to()`, parametrizations, vector_to_parameters, a new tensor at a freed
  address), and nothing of eval mode is pickled with a module;
* backward from several threads into shared MK weights that already have a `.grad` adds every gradient;
* `use_backend` blocks in different threads do not see each other;
* the mean of the copies is finite for finite copies, propagates Inf / NaN as torch.mean, and is exact for equal
  copies;
* meta tensors run through the layers and the functional ops;
* bad arguments raise errors that name them;
* a training run's eval loss equals that of a freshly collapsed model.
"""

import copy
import fractions
import math
import os
import pathlib
import pickle
import subprocess
import sys
import threading

import pytest
import torch
from helpers import CPU_BACKENDS
from torch import nn
from torch.nn.utils import parametrize

import majority_kernels as mk
from majority_kernels import backends, ops

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """One MK layer of each kind (e = 3, independent copies, float64) with an input for it."""
    torch.manual_seed(0)
    made = {
        "linear": (nn.Linear(5, 4), torch.randn(3, 5)),
        "conv2d": (nn.Conv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
        "embedding": (nn.Embedding(7, 4, padding_idx=1), torch.tensor([[0, 1, 6], [3, 3, 2]])),
    }
    out = {}
    for name, (dense, x) in made.items():
        layer = mk.convert(dense.double(), 3, init="independent", layer_types=(type(dense),))
        out[name] = (layer, x if name == "embedding" else x.double())
    return out


LAYER_NAMES = list(layers())


def dense_of(layer: nn.Module) -> nn.Module:
    """The dense layer with the mean of the copies, computed here in float64 from the parameter as it is now."""
    dense = layer._make_dense(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(layer.weight.detach().mean(0))
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense.eval()


def assert_eval_current(layer: nn.Module, x: torch.Tensor) -> None:
    """Eval mode, collapsed_weight, to_dense, fuse and collapse all give the mean of the copies as they are now.
    The eval forward runs first: a cache keyed on a freed tensor's address would meet its successor there."""
    layer.eval()
    with torch.no_grad():
        out = layer(x)
        expected = dense_of(layer)(x)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.collapsed_weight(), layer.weight.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.to_dense()(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.fuse()(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mk.collapse(copy.deepcopy(layer))(x), expected, rtol=1e-12, atol=1e-12)


def train_step(layer: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    layer.train()
    optimizer.zero_grad()
    layer(x).square().sum().backward()
    optimizer.step()


# --------------------------------------------------------------------------------- eval mode is never stale

# Every optimizer that torch 2.13 accepts fused=True for on CPU, and the foreach implementations.
OPTIMIZERS = {
    "Adam-fused": lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
    "AdamW-fused": lambda p: torch.optim.AdamW(p, lr=0.05, fused=True),
    "SGD-fused": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True),
    "Adagrad-fused": lambda p: torch.optim.Adagrad(p, lr=0.05, fused=True),
    "Adam-foreach": lambda p: torch.optim.Adam(p, lr=0.05, foreach=True),
    "AdamW-foreach": lambda p: torch.optim.AdamW(p, lr=0.05, foreach=True),
    "SGD-foreach": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, foreach=True),
    "RMSprop-foreach": lambda p: torch.optim.RMSprop(p, lr=0.05, foreach=True),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_optimizer_steps(name, optimizer):
    layer, x = layers()[name]
    opt = OPTIMIZERS[optimizer](layer.parameters())
    for _ in range(3):
        assert_eval_current(layer, x)  # an eval between steps, as in a training loop
        train_step(layer, x, opt)
    assert_eval_current(layer, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_writes_through_data(name):
    layer, x = layers()[name]
    assert_eval_current(layer, x)
    layer.weight.data.mul_(-2.0)  # bypasses the version counter
    assert_eval_current(layer, x)
    layer.weight.data[1].add_(0.5)
    assert_eval_current(layer, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_in_place_load_and_moves(name):
    layer, x = layers()[name]
    assert_eval_current(layer, x)
    with torch.no_grad():
        layer.weight[0].fill_(0.25)
    assert_eval_current(layer, x)
    other, _ = layers()[name]
    with torch.no_grad():
        other.weight.mul_(3.0)
    layer.load_state_dict(other.state_dict())
    assert_eval_current(layer, x)
    layer.float().double()  # a round trip through float32: new storage, different values
    assert_eval_current(layer, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_new_tensor_at_a_freed_address(name):
    layer, x = layers()[name]
    assert_eval_current(layer, x)
    shape = layer.weight.shape
    for scale in (2.0, -3.0, 0.5):
        layer.weight.data = torch.empty(0, dtype=torch.float64)  # frees the old storage
        # A new storage of the same size, usually at the freed address; the parameter keeps its version.
        layer.weight.data = torch.empty(shape, dtype=torch.float64).normal_().mul_(scale)
        assert_eval_current(layer, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_vector_to_parameters(name):
    layer, x = layers()[name]
    params = [layer.weight]
    numel = layer.weight.numel()
    for scale in (1.0, -2.0, 4.0):
        # The parameter becomes a view of the vector; the zeros free the last vector, the next one is usually
        # allocated where it was.
        torch.nn.utils.vector_to_parameters(torch.zeros(numel, dtype=torch.float64), params)
        torch.nn.utils.vector_to_parameters(torch.empty(numel, dtype=torch.float64).normal_().mul_(scale), params)
        assert_eval_current(layer, x)


class _Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_follows_a_parametrization(name):
    layer, x = layers()[name]
    parametrize.register_parametrization(layer, "weight", _Double())
    original = layer.parametrizations.weight.original
    for factor in (-1.0, 3.0, 0.5):
        # Each access of layer.weight is a new tensor 2 w, at version 0, usually at the last one's address.
        assert_eval_current(layer, x)
        with torch.no_grad():
            original.mul_(factor)
    assert_eval_current(layer, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_nothing_of_eval_mode_is_pickled(name):
    layer, x = layers()[name]
    size = len(pickle.dumps(layer))
    layer.eval()
    with torch.no_grad():
        layer(x), layer.collapsed_weight(), layer.to_dense()
    assert len(pickle.dumps(layer)) == size
    state = {key for key, value in vars(layer).items() if isinstance(value, torch.Tensor)}
    assert not state, f"tensors kept outside parameters and buffers: {state}"


# --------------------------------------------------------------------------- gradient accumulation, threads

THREADS, BACKWARDS_PER_THREAD, TRIALS = 4, 3, 3
# Triton's interpreter (its CPU tier) runs one kernel at a time only.
THREADED_BACKENDS = [name for name in CPU_BACKENDS if name != "triton"]


def threaded_layer(name: str, large: bool) -> tuple[nn.Module, torch.Tensor]:
    """A float32 layer with an input; large: millions of weights and a small input, so that the backward is mostly
    the in-place add into .grad and those of several threads overlap (the compiled kernels; the reference backend's
    are too slow at that size)."""
    torch.manual_seed(0)
    if name == "linear":
        width = 1024 if large else 128
        return mk.MKLinear(width, width, expansion=8), torch.randn(1, width)
    if name == "conv2d":
        channels = 256 if large else 16
        return mk.MKConv2d(channels, channels, 3, padding=1, expansion=8), torch.randn(1, channels, 3, 3)
    rows = 16384 if large else 512
    return mk.MKEmbedding(rows, 64, expansion=8), torch.randint(0, rows, (2, 8))


def accumulated_grad(layer: nn.Module, x: torch.Tensor, threaded: bool) -> torch.Tensor:
    """layer.weight.grad after THREADS * BACKWARDS_PER_THREAD backwards into an existing .grad; the graphs are built
    first in this thread (seeded alike), then run backward serially or from THREADS threads at once."""
    layer.weight.grad = torch.zeros_like(layer.weight)
    losses = []
    for i in range(THREADS * BACKWARDS_PER_THREAD):
        torch.manual_seed(i)
        losses.append((layer(x) * (1 + i / 7)).square().sum())
    if not threaded:
        for loss in losses:
            loss.backward()
        return layer.weight.grad.clone()
    start = threading.Barrier(THREADS)
    errors = []

    def work(mine):
        try:
            start.wait()
            for loss in mine:
                loss.backward()
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(losses[t::THREADS],)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return layer.weight.grad.clone()


@pytest.mark.parametrize("backend", THREADED_BACKENDS)
@pytest.mark.parametrize("name", ["linear", "conv2d", "embedding"])
def test_concurrent_backward_into_shared_weights_adds_every_gradient(name, backend):
    layer, x = threaded_layer(name, large=backend != "reference")
    with mk.use_backend(backend):
        serial = accumulated_grad(layer, x, threaded=False)
        for _ in range(TRIALS):
            threaded = accumulated_grad(layer, x, threaded=True)
            torch.testing.assert_close(threaded, serial, rtol=1e-5, atol=1e-5 * serial.abs().max().item())


def test_serial_accumulation_still_adds_in_place():
    # The in-place path (no expansion-sized gradient handed to autograd) stays on for a lone backward.
    layer = mk.MKLinear(8, 6, expansion=3)
    layer(torch.randn(2, 8)).sum().backward()
    grad = layer.weight.grad
    seen = []
    layer.weight.register_hook(lambda g: seen.append(g.stride()))
    layer(torch.randn(2, 8)).sum().backward()
    assert layer.weight.grad is grad and seen == [(0, 0, 0)]  # the memoryless zero went to autograd


# --------------------------------------------------------------------------------------- use_backend, threads


def test_use_backend_blocks_of_other_threads_do_not_mix():
    seen = {}
    a_entered, b_entered, a_left = threading.Event(), threading.Event(), threading.Event()

    def a():
        with mk.use_backend("reference"):
            a_entered.set()
            b_entered.wait(10)
            seen["a inside"] = backends.requested()
        a_left.set()

    def b():
        a_entered.wait(10)
        seen["b before"] = backends.requested()
        with mk.use_backend("cpu"):
            b_entered.set()
            a_left.wait(10)
            seen["b after a left"] = backends.requested()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"b before": "auto", "a inside": "reference", "b after a left": "cpu"}


@pytest.mark.parametrize("name", ["CPU", " Reference ", "AUTO"])
def test_use_backend_takes_names_as_mk_backend_does(name, monkeypatch):
    with mk.use_backend(name):
        assert backends.requested() == name.strip().lower()
    monkeypatch.setenv("MK_BACKEND", name)
    assert backends.requested() == name.strip().lower()


_CAPABILITY = "from majority_kernels import ops; print(ops.cpu_capability())"


@pytest.mark.skipif(not ops.HAS_EXTENSION, reason="needs the CPU extension")
@pytest.mark.parametrize("name", [" AVX2 ", "Portable"])
def test_cpu_capability_takes_names_as_mk_backend_does(name):
    def run(value):
        env = {**os.environ, "MK_CPU_CAPABILITY": value}
        return subprocess.run([sys.executable, "-c", _CAPABILITY], capture_output=True, text=True, env=env)

    assert run(name).stdout.strip() == run(name.strip().lower()).stdout.strip() != ""
    refused = run("avx3")
    assert refused.returncode != 0 and "MK_CPU_CAPABILITY must be avx512, avx2 or portable" in refused.stderr


# ---------------------------------------------------------------------------------------- mean of the copies


def mean_of_copies(copies: torch.Tensor) -> torch.Tensor:
    """collapsed_weight() of a linear layer whose copies [e, n] are `copies` (one output feature)."""
    expansion, features = copies.shape
    layer = mk.MKLinear(features, 1, bias=False, expansion=expansion, dtype=copies.dtype)
    with torch.no_grad():
        layer.weight.copy_(copies.view(expansion, 1, features))
        return layer.collapsed_weight().view(features)


def _largest(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).max * 0.9


@pytest.mark.parametrize("dtype", FLOATS)
def test_mean_of_finite_copies_near_the_limit_is_finite(dtype):
    big = _largest(dtype)
    cases = [
        [big, -big, big],
        [-big, big, big, big],
        [big, big],
        [-big, -big, -big],
        [1.0, big, big],
        [big, 1.0, -big, big],
    ]
    for values in cases:
        copies = torch.tensor(values, dtype=torch.float64).to(dtype).view(-1, 1).repeat(1, 3)
        mean = mean_of_copies(copies)
        exact = sum(fractions.Fraction(v) for v in copies[:, 0].double().tolist()) / len(values)
        expected = torch.tensor(float(exact), dtype=torch.float64)
        assert torch.isfinite(mean).all(), (values, mean)
        torch.testing.assert_close(mean[0].double(), expected, rtol=1e-2 if dtype.itemsize == 2 else 1e-6, atol=0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_mean_of_copies_propagates_inf_and_nan_as_torch_mean(dtype):
    inf, nan = math.inf, math.nan
    cases = [
        [inf, 1.0, 2.0],
        [1.0, inf, 2.0],
        [-inf, 1.0],
        [2.0, -inf, -inf],
        [inf, -inf, 1.0],
        [nan, 1.0],
        [1.0, nan],
        [inf, nan],
        [inf, inf],
    ]
    for values in cases:
        copies = torch.tensor(values, dtype=dtype).view(-1, 1)
        expected = copies.double().mean(0).to(dtype)
        torch.testing.assert_close(
            mean_of_copies(copies),
            expected,
            equal_nan=True,
            rtol=0,
            atol=0,
            msg=lambda m, values=values: f"{values}: {m}",
        )


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("expansion", [1, 2, 3, 5, 7, 8])
def test_mean_of_equal_copies_is_the_copy_bit_for_bit(dtype, expansion):
    generator = torch.Generator().manual_seed(expansion)
    finfo = torch.finfo(dtype)
    values = torch.cat(
        [
            torch.randn(200, generator=generator, dtype=torch.float64),
            torch.tensor([finfo.max, -finfo.max, finfo.tiny, finfo.tiny / 4, -finfo.tiny / 8, 0.0, -0.0, 1 / 3, 0.1]),
        ]
    ).to(dtype)
    copies = values.unsqueeze(0).repeat(expansion, 1)
    assert torch.equal(mean_of_copies(copies), values)


@pytest.mark.parametrize("dtype", FLOATS)
def test_mean_of_copies_is_accurate(dtype):
    generator = torch.Generator().manual_seed(3)
    copies = (torch.randn(5, 1000, generator=generator, dtype=torch.float64) * 10).to(dtype)
    expected = copies.double().mean(0)
    tolerance = {torch.float64: 1e-15, torch.float32: 3e-7, torch.bfloat16: 4e-3, torch.float16: 5e-4}[dtype]
    torch.testing.assert_close(
        mean_of_copies(copies).double(), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item()
    )


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_eval_of_replicated_layer_is_the_dense_layer_bit_for_bit(name):
    torch.manual_seed(1)
    dense, x = {
        "linear": (nn.Linear(5, 4), torch.randn(3, 5)),
        "conv2d": (nn.Conv2d(2, 3, 3), torch.randn(1, 2, 5, 5)),
        "embedding": (nn.Embedding(7, 4), torch.tensor([0, 6, 2])),
    }[name]
    layer = mk.convert(copy.deepcopy(dense), 3, layer_types=(type(dense),)).eval()
    with torch.no_grad():
        assert torch.equal(layer(x), dense(x))
        assert torch.equal(layer.to_dense().weight, dense.weight)


def test_eval_mean_near_the_limit_in_a_layer():
    layer = mk.MKLinear(2, 1, bias=False, expansion=3).eval()
    big = 3e38
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([big, -big, big]).view(3, 1, 1).expand(3, 1, 2))
        assert torch.isfinite(layer.collapsed_weight()).all()
        layer.weight[0].fill_(math.inf)
        assert torch.equal(layer.collapsed_weight(), torch.full((1, 2), math.inf))


# ------------------------------------------------------------- mixing weights: what the kernels must give
# combine itself near the float limit, and e = 1 as the dense layer exactly: the kernels' numerics.


def _combine_backends() -> list[str]:
    return [name for name in ("reference", "cpu", "triton") if name in mk.available_backends("cpu")]


@pytest.mark.parametrize("backend", _combine_backends())
def test_combine_of_finite_copies_near_the_limit_is_finite(backend):
    big = 3e38
    weight = torch.tensor([[big, -big, big, -big], [-big, big, big, -big], [big, big, -big, -big]])
    weight = weight.repeat(1, 64)
    with mk.use_backend(backend):
        for seed in range(4):
            out = mk.functional.combine(weight, seed)
            assert torch.isfinite(out).all(), f"seed {seed}: {out[~torch.isfinite(out)][:4]}"


@pytest.mark.parametrize("backend", _combine_backends())
def test_combine_of_one_copy_is_the_copy_bit_for_bit(backend):
    weight = torch.randn(1, 6, 37, generator=torch.Generator().manual_seed(0))
    with mk.use_backend(backend):
        for seed in range(4):
            assert torch.equal(mk.functional.combine(weight, seed), weight[0])


@pytest.mark.parametrize("backend", _combine_backends())
def test_one_copy_layer_trains_like_the_dense_layer_bit_for_bit(backend):
    torch.manual_seed(0)
    dense = nn.Linear(37, 6)
    layer = mk.MKLinear.from_dense(dense, expansion=1)
    x = torch.randn(4, 37)
    with mk.use_backend(backend):
        assert torch.equal(layer(x), dense(x))


# ------------------------------------------------------------------------------------------------ meta tensors

META_LAYERS = {
    "linear": lambda: (mk.MKLinear(5, 4, expansion=3, device="meta"), torch.empty(2, 5, device="meta")),
    "conv1d": lambda: (mk.MKConv1d(2, 3, 3, expansion=3, device="meta"), torch.empty(2, 2, 7, device="meta")),
    "conv2d": lambda: (mk.MKConv2d(2, 3, 3, expansion=3, device="meta"), torch.empty(2, 2, 7, 7, device="meta")),
    "conv3d": lambda: (mk.MKConv3d(2, 3, 3, expansion=3, device="meta"), torch.empty(1, 2, 5, 5, 5, device="meta")),
    "embedding": lambda: (
        mk.MKEmbedding(9, 4, expansion=3, device="meta"),
        torch.zeros(2, 3, dtype=torch.int64, device="meta"),
    ),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", META_LAYERS)
def test_layers_on_meta(name, training):
    layer, x = META_LAYERS[name]()
    out = layer.train(training)(x)
    assert out.device.type == "meta"
    out.sum().backward()
    assert layer.weight.grad.device.type == "meta" and layer.weight.grad.shape == layer.weight.shape


def test_functional_ops_on_meta():
    meta = dict(device="meta")
    f = mk.functional
    outputs = {
        "combine": f.combine(torch.empty(3, 4, 5, **meta), 1),
        "scatter": f.scatter(torch.empty(4, 5, **meta), 1, 0, 3),
        "majority_linear": f.majority_linear(torch.empty(2, 5, **meta), torch.empty(3, 4, 5, **meta), seed=1),
        "majority_conv1d": f.majority_conv1d(torch.empty(1, 2, 6, **meta), torch.empty(3, 4, 2, 3, **meta), seed=1),
        "majority_conv2d": f.majority_conv2d(
            torch.empty(1, 2, 6, 6, **meta), torch.empty(3, 4, 2, 3, 3, **meta), seed=1
        ),
        "majority_conv3d": f.majority_conv3d(
            torch.empty(1, 2, 4, 4, 4, **meta), torch.empty(3, 4, 2, 3, 3, 3, **meta), seed=1
        ),
        "majority_embedding": f.majority_embedding(
            torch.zeros(3, dtype=torch.int64, **meta), torch.empty(3, 7, 5, **meta), seed=1
        ),
    }
    shapes = {
        "combine": (4, 5),
        "scatter": (3, 4, 5),
        "majority_linear": (2, 4),
        "majority_conv1d": (1, 4, 4),
        "majority_conv2d": (1, 4, 4, 4),
        "majority_conv3d": (1, 4, 2, 2, 2),
        "majority_embedding": (3, 5),
    }
    for name, out in outputs.items():
        assert out.device.type == "meta" and tuple(out.shape) == shapes[name], name


# ---------------------------------------------------------------------------------------------- error table

_F = mk.functional
_FLOAT8 = torch.float8_e4m3fn


def _overlapping_scatter():
    grad = torch.zeros(2, 4)
    _F.scatter(grad[0], 1, 0, 2, accumulate_into=grad)


ERRORS = {
    "float8 weight": (lambda: _F.combine(torch.zeros(2, 3, dtype=_FLOAT8), 1), TypeError, "weight"),
    "float8 layer weight": (
        lambda: _F.majority_linear(torch.zeros(2, 3), torch.zeros(2, 4, 3, dtype=_FLOAT8), seed=1),
        TypeError,
        "weight",
    ),
    "float8 grad": (lambda: _F.scatter(torch.zeros(3, dtype=_FLOAT8), 1, 0, 2), TypeError, "grad"),
    "float8 accumulate_into": (
        lambda: _F.scatter(torch.zeros(3), 1, 0, 2, accumulate_into=torch.zeros(2, 3, dtype=_FLOAT8)),
        TypeError,
        "accumulate_into",
    ),
    "out_dtype int": (lambda: _F.combine(torch.zeros(2, 3), 1, out_dtype=torch.int32), TypeError, "out_dtype"),
    "out_dtype string": (lambda: _F.combine(torch.zeros(2, 3), 1, out_dtype="float32"), TypeError, "out_dtype"),
    "out_dtype float8": (lambda: _F.combine(torch.zeros(2, 3), 1, out_dtype=_FLOAT8), TypeError, "out_dtype"),
    "scatter out_dtype string": (lambda: _F.scatter(torch.zeros(3), 1, 0, 2, out_dtype="half"), TypeError, "out_dtype"),
    "expansion past int64": (lambda: mk.MKLinear(3, 2, expansion=2**63), ValueError, "expansion"),
    "mixing_weights expansion past int64": (lambda: _F.mixing_weights(2**63, 4, 1), ValueError, "expansion"),
    "mixing_weights numel past int64": (lambda: _F.mixing_weights(4, (2**31, 2**31), 1), ValueError, "numel"),
    "scatter numel past int64": (lambda: _F.scatter(torch.zeros(4), 1, 0, 2**62), ValueError, "numel"),
    "mixing_weights int dtype": (lambda: _F.mixing_weights(2, 3, 1, dtype=torch.int64), TypeError, "dtype"),
    "mixing_weights string dtype": (lambda: _F.mixing_weights(2, 3, 1, dtype="float32"), TypeError, "dtype"),
    "mixing_weights negative shape": (lambda: _F.mixing_weights(2, (3, -1), 1), ValueError, "shape"),
    "mixing_weights float shape": (lambda: _F.mixing_weights(2, (3, 2.5), 1), TypeError, "shape"),
    "mixing_weights string shape": (lambda: _F.mixing_weights(2, "34", 1), TypeError, "shape"),
    "seed on another device": (
        lambda: _F.combine(torch.zeros(2, 3), torch.tensor(1, device="meta")),
        ValueError,
        "seed",
    ),
    "mixing_weights seed on another device": (
        lambda: _F.mixing_weights(2, 3, torch.tensor(1), device="meta"),
        ValueError,
        "seed",
    ),
    "layer seed on another device": (
        lambda: _F.majority_linear(torch.zeros(2, 3), torch.zeros(2, 4, 3), seed=torch.tensor(1, device="meta")),
        ValueError,
        "seed",
    ),
    "accumulate_into overlaps grad": (_overlapping_scatter, ValueError, "accumulate_into"),
    "accumulate_into leaf that requires grad": (
        lambda: _F.scatter(torch.zeros(3), 1, 0, 2, accumulate_into=torch.zeros(2, 3, requires_grad=True)),
        ValueError,
        "accumulate_into",
    ),
    "convert of a non-module": (lambda: mk.convert([nn.Linear(2, 2)]), TypeError, "module"),
    "collapse of a non-module": (lambda: mk.collapse("model"), TypeError, "module"),
    "layer_types holding a non-class": (
        lambda: mk.convert(nn.Linear(2, 2), layer_types=[nn.Linear, "Conv2d"]),
        TypeError,
        "layer_types",
    ),
    "layer_types a string": (lambda: mk.convert(nn.Linear(2, 2), layer_types="Linear"), TypeError, "layer_types"),
    "use_backend of a non-string": (lambda: mk.use_backend(None).__enter__(), TypeError, "use_backend"),
    "use_backend unknown": (lambda: mk.use_backend("cpus").__enter__(), ValueError, "use_backend"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_name_the_argument(case):
    call, error, word = ERRORS[case]
    with pytest.raises(error, match=word):
        call()


def test_convert_takes_one_layer_class():
    model = mk.convert(nn.Sequential(nn.Linear(3, 2), nn.Conv1d(1, 1, 1)), 2, layer_types=nn.Linear)
    assert type(model[0]) is mk.MKLinear and type(model[1]) is nn.Conv1d


def test_accumulate_into_a_gradient_is_still_accepted():
    weight = nn.Parameter(torch.zeros(2, 4))
    weight.grad = torch.zeros(2, 4)
    out = _F.scatter(torch.ones(4), 1, 0, 2, accumulate_into=weight.grad)
    assert out is weight.grad
    torch.testing.assert_close(out.sum(0), torch.ones(4))


# ----------------------------------------------------------------------------------- a short training run


def test_eval_equals_collapsed_model_through_training():
    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    try:
        from eval_consistency import run
    finally:
        sys.path.pop(0)
    for fused in (True, False):
        result = run(fused, steps=200, eval_every=50)
        assert result["evaluations"] == 4 and result["max_abs_difference"] == 0.0, result


# ------------------------------------------------------------------------------------------------ memory

_SCRATCH = """
import resource, torch, majority_kernels as mk
weight = torch.randn(200_000, 1)  # 200 000 copies of a one-element weight: 0.8 MB
with mk.use_backend("cpu"):
    mk.functional.combine(weight[:2], 5)  # warm-up: the op's and torch's own first-use memory
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mixed = mk.functional.combine(weight, 6)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.testing.assert_close(mixed.double(), mk.reference.combine(weight, 6).double(), rtol=1e-5, atol=1e-6)
print((after - before) // 1024)
"""


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="needs the CPU extension")
def test_cpu_scratch_is_in_proportion_to_the_work():
    # A scratch of e x 128 lanes whatever numel is would take 102 MB here; e x numel is 0.8 MB.
    result = subprocess.run([sys.executable, "-c", _SCRATCH], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) < 20, f"peak RSS grew by {result.stdout.split()[-1]} MiB"
