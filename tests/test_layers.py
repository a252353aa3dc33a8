"""MKLinear / MKConv1d / MKConv2d / MKConv3d: construction, train-mode mixing against the float64 reference,
gradients, eval mode and its cache, to_dense / fuse, from_dense, and the statistics of the mixed kernel."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import majority_kernels as mk
from majority_kernels import reference

EXPANSIONS = [1, 2, 3, 4, 5, 8]
F64 = dict(rtol=1e-10, atol=1e-12)  # float64 against the float64 reference
EXACTISH = dict(rtol=1e-12, atol=1e-14)  # float64, same computation up to summation order

MK_CONV = {1: mk.MKConv1d, 2: mk.MKConv2d, 3: mk.MKConv3d}
DENSE_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
MAJORITY_CONV = {1: mk.functional.majority_conv1d, 2: mk.functional.majority_conv2d, 3: mk.functional.majority_conv3d}

# (dims, in_channels, out_channels, kernel_size, keyword arguments, input spatial shape)
CONV_CASES = [
    (1, 3, 4, 3, {}, (9,)),
    (1, 4, 6, 5, dict(stride=2, padding=2, dilation=2, groups=2), (17,)),
    (1, 2, 3, 3, dict(padding="same", padding_mode="circular"), (7,)),
    (1, 1, 1, 1, dict(bias=False), (1,)),
    (2, 3, 5, 3, dict(stride=(2, 1), padding=(1, 2)), (7, 6)),
    (2, 4, 4, (3, 2), dict(padding="same", dilation=(1, 2), groups=4, padding_mode="reflect"), (6, 7)),
    (2, 3, 2, 3, dict(padding=1, padding_mode="replicate"), (4, 5)),
    (2, 2, 3, 1, dict(bias=False, padding="valid"), (5, 5)),
    (2, 6, 3, 3, dict(padding=2, padding_mode="circular", groups=3, stride=2), (5, 7)),
    (3, 2, 3, 2, dict(stride=2, padding=1), (4, 5, 3)),
    (3, 2, 4, 3, dict(padding="same", groups=2, padding_mode="reflect"), (3, 4, 5)),
]
CONV_IDS = [f"conv{c[0]}d-{i}" for i, c in enumerate(CONV_CASES)]

# (input shape without in_features, in_features, out_features): odd sizes, 1, primes, unbatched, 3-D input
LINEAR_CASES = [((3,), 5, 7), ((1,), 1, 1), ((2, 3), 13, 11), ((), 4, 3), ((17,), 2, 31)]

# What an MK convolution copies from its dense counterpart and to_dense gives back.
CONV_HYPERPARAMETERS = [
    *"in_channels out_channels kernel_size stride padding dilation groups padding_mode".split(),
    "_reversed_padding_repeated_twice",
]


def draw_seed_like_layer(device):
    """The layers' per-step seed draw: torch.randint(0, 2^63 - 1) from the device's torch generator."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device=device)


def forward_with_seed(layer, *inputs):
    """Run layer(*inputs) and return (output, the seed the layer drew), checking the forward drew exactly one seed
    from the global generator, as mk.functional.draw_seed does."""
    before = torch.get_rng_state()
    output = layer(*inputs)
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    seed = draw_seed_like_layer(layer.weight.device)
    assert torch.equal(torch.get_rng_state(), after), "the train forward must draw exactly one seed"
    return output, seed


def randomize(layer, generator):
    """Give every copy (and the bias) distinct random values, so mixing errors show."""
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
    return layer


def make_conv(dims, cin, cout, k, kwargs, expansion, generator, dtype=torch.float64):
    layer = MK_CONV[dims](cin, cout, k, **kwargs, expansion=expansion, dtype=dtype)
    return randomize(layer, generator)


def dense_conv_reference(dims, cin, cout, k, kwargs, weight, bias, x):
    """nn.ConvNd's own forward (its padding-mode handling) with the given weight and bias."""
    dense = DENSE_CONV[dims](cin, cout, k, **kwargs, device="meta", dtype=torch.float64)
    params = {"weight": weight}
    if bias is not None:
        params["bias"] = bias
    return functional_call(dense.to_empty(device="cpu"), params, (x,))


def conv_input(dims, cin, spatial, generator, batch=2):
    shape = (cin, *spatial) if batch is None else (batch, cin, *spatial)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- construction


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("expansion", [1, 3, 4])
def test_linear_constructor(bias, expansion):
    layer = mk.MKLinear(5, 7, bias, expansion=expansion)
    assert isinstance(layer, nn.Module)
    assert layer.in_features == 5 and layer.out_features == 7
    assert layer.expansion == expansion and type(layer.expansion) is int
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.shape == (expansion, 7, 5)
    if bias:
        assert isinstance(layer.bias, nn.Parameter) and layer.bias.shape == (7,)
    else:
        assert layer.bias is None
    assert {name for name, _ in layer.named_parameters()} == ({"weight", "bias"} if bias else {"weight"})
    assert layer.training


def test_linear_defaults_expansion_4_replicate():
    layer = mk.MKLinear(6, 3)
    assert layer.expansion == 4 and layer.weight.shape == (4, 3, 6)
    for k in range(1, 4):
        assert torch.equal(layer.weight[k], layer.weight[0])
    # the dense init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.weight.abs().max() <= 1 / math.sqrt(6)
    assert layer.weight[0].std() > 0


def test_linear_device_and_dtype_keywords():
    layer = mk.MKLinear(4, 2, expansion=3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    assert layer.weight.device.type == "cpu"
    meta = mk.MKLinear(4, 2, expansion=3, device="meta")
    assert meta.weight.is_meta and meta.weight.shape == (3, 2, 4)


def test_expansion_and_init_are_keyword_only():
    with pytest.raises(TypeError):
        mk.MKLinear(4, 2, True, 3)
    with pytest.raises(TypeError):
        mk.MKConv2d(2, 3, 3, 1, 0, 1, 1, True, "zeros", None, None, 3)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
@pytest.mark.parametrize("expansion", [1, 3])
def test_conv_constructor_mirrors_dense(case, expansion):
    dims, cin, cout, k, kwargs, _ = case
    layer = MK_CONV[dims](cin, cout, k, **kwargs, expansion=expansion)
    dense = DENSE_CONV[dims](cin, cout, k, **kwargs)
    for name in CONV_HYPERPARAMETERS:
        assert getattr(layer, name) == getattr(dense, name), name
    assert layer.expansion == expansion
    assert layer.weight.shape == (expansion, *dense.weight.shape)
    assert (layer.bias is None) == (dense.bias is None)
    if layer.bias is not None:
        assert layer.bias.shape == dense.bias.shape == (cout,)


def test_conv_positional_arguments_like_dense():
    layer = mk.MKConv2d(4, 6, (3, 1), (2, 1), (1, 0), (1, 1), 2, False, "reflect", "cpu", torch.float64, expansion=2)
    assert layer.kernel_size == (3, 1) and layer.stride == (2, 1) and layer.padding == (1, 0)
    assert layer.groups == 2 and layer.bias is None and layer.padding_mode == "reflect"
    assert layer.weight.dtype == torch.float64 and layer.weight.shape == (2, 6, 2, 3, 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_defaults_expansion_4_replicate(dims):
    layer = MK_CONV[dims](3, 2, 3)
    assert layer.expansion == 4 and layer.weight.shape == (4, 2, 3, *([3] * dims))
    assert all(torch.equal(layer.weight[k], layer.weight[0]) for k in range(4))


def test_independent_init_copies_differ():
    layer = mk.MKLinear(8, 8, expansion=3, init="independent")
    assert not torch.equal(layer.weight[0], layer.weight[1])
    assert not torch.equal(layer.weight[1], layer.weight[2])


# ------------------------------------------------------------------------------------------ train-mode forward


@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("shape", LINEAR_CASES, ids=str)
def test_linear_train_forward_equals_functional_and_reference(expansion, shape, generator):
    batch, fin, fout = shape
    layer = randomize(mk.MKLinear(fin, fout, expansion=expansion, dtype=torch.float64), generator)
    x = torch.randn(*batch, fin, generator=generator, dtype=torch.float64)
    y, seed = forward_with_seed(layer, x)
    assert y.shape == (*batch, fout) and y.dtype == torch.float64
    torch.testing.assert_close(y, mk.functional.majority_linear(x, layer.weight, layer.bias, seed=seed), rtol=0, atol=0)
    expected = F.linear(x, reference.combine(layer.weight.detach(), seed), layer.bias.detach())
    torch.testing.assert_close(y, expected, **F64)


def test_linear_train_forward_without_bias(generator):
    layer = randomize(mk.MKLinear(6, 5, bias=False, expansion=3, dtype=torch.float64), generator)
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    y, seed = forward_with_seed(layer, x)
    torch.testing.assert_close(y, x @ reference.combine(layer.weight.detach(), seed).T, **F64)


def test_linear_train_forward_float32(generator):
    layer = randomize(mk.MKLinear(9, 7, expansion=4), generator)
    x = torch.randn(5, 9, generator=generator)
    y, seed = forward_with_seed(layer, x)
    assert y.dtype == torch.float32
    expected = F.linear(
        x.double(), reference.combine(layer.weight.detach().double(), seed), layer.bias.detach().double()
    )
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
@pytest.mark.parametrize("expansion", [1, 3, 4])
def test_conv_train_forward_equals_reference(case, expansion, generator):
    dims, cin, cout, k, kwargs, spatial = case
    layer = make_conv(dims, cin, cout, k, kwargs, expansion, generator)
    x = conv_input(dims, cin, spatial, generator)
    y, seed = forward_with_seed(layer, x)
    bias = None if layer.bias is None else layer.bias.detach()
    expected = dense_conv_reference(dims, cin, cout, k, kwargs, reference.combine(layer.weight.detach(), seed), bias, x)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected, **F64)
    if kwargs.get("padding_mode", "zeros") == "zeros":
        functional = MAJORITY_CONV[dims](
            x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups, seed=seed
        )
        torch.testing.assert_close(y, functional, rtol=0, atol=0)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_unbatched_input(dims, generator):
    layer = make_conv(dims, 2, 3, 3, dict(padding=1), 3, generator)
    x = conv_input(dims, 2, (4,) * dims, generator, batch=None)
    y, seed = forward_with_seed(layer, x)
    expected = DENSE_CONV[dims](2, 3, 3, padding=1, dtype=torch.float64)
    expected = functional_call(
        expected, {"weight": reference.combine(layer.weight.detach(), seed), "bias": layer.bias.detach()}, (x,)
    )
    assert y.shape == (3, *(4,) * dims)
    torch.testing.assert_close(y, expected, **F64)


# --------------------------------------------------------------------------------------------------- gradients


def reference_linear_grads(layer, x, seed, grad_out):
    weight = layer.weight.detach().clone().requires_grad_()
    bias = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = F.linear(xr, reference.combine(weight, seed), bias)
    out.backward(grad_out)
    return out, xr.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("shape", LINEAR_CASES, ids=str)
def test_linear_gradients_match_reference(expansion, shape, generator):
    batch, fin, fout = shape
    layer = randomize(mk.MKLinear(fin, fout, expansion=expansion, dtype=torch.float64), generator)
    x = torch.randn(*batch, fin, generator=generator, dtype=torch.float64, requires_grad=True)
    y, seed = forward_with_seed(layer, x)
    grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(grad_out)
    out, gx, gw, gb = reference_linear_grads(layer, x, seed, grad_out)
    torch.testing.assert_close(y, out, **F64)
    torch.testing.assert_close(x.grad, gx, **F64)
    assert layer.weight.grad.shape == (expansion, fout, fin)
    torch.testing.assert_close(layer.weight.grad, gw, **F64)
    torch.testing.assert_close(layer.bias.grad, gb, **F64)


@pytest.mark.parametrize("make_input", ["transposed", "sliced", "expanded"])
def test_linear_gradients_non_contiguous_input(make_input, generator):
    layer = randomize(mk.MKLinear(7, 5, expansion=3, dtype=torch.float64), generator)
    if make_input == "transposed":
        x = torch.randn(7, 6, generator=generator, dtype=torch.float64).t()
    elif make_input == "sliced":
        x = torch.randn(6, 15, generator=generator, dtype=torch.float64)[:, 1::2]
    else:
        x = torch.randn(1, 7, generator=generator, dtype=torch.float64).expand(6, 7)
    assert not x.is_contiguous()
    x.requires_grad_()
    y, seed = forward_with_seed(layer, x)
    grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(grad_out)
    out, gx, gw, gb = reference_linear_grads(layer, x.detach().contiguous(), seed, grad_out)
    torch.testing.assert_close(y, out, **F64)
    torch.testing.assert_close(x.grad, gx, **F64)
    torch.testing.assert_close(layer.weight.grad, gw, **F64)
    torch.testing.assert_close(layer.bias.grad, gb, **F64)


def test_linear_gradients_non_contiguous_grad_output(generator):
    layer = randomize(mk.MKLinear(4, 6, expansion=5, dtype=torch.float64), generator)
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    y, seed = forward_with_seed(layer, x)
    grad_out = torch.randn(6, 3, generator=generator, dtype=torch.float64).t()
    y.backward(grad_out)
    _, gx, gw, gb = reference_linear_grads(layer, x, seed, grad_out.contiguous())
    torch.testing.assert_close(x.grad, gx, **F64)
    torch.testing.assert_close(layer.weight.grad, gw, **F64)


def test_linear_gradients_accumulate(generator):
    layer = randomize(mk.MKLinear(4, 3, expansion=3, dtype=torch.float64), generator)
    xs = [torch.randn(2, 4, generator=generator, dtype=torch.float64) for _ in range(2)]
    expected = torch.zeros_like(layer.weight)
    for x in xs:
        y, seed = forward_with_seed(layer, x)
        grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
        y.backward(grad_out)
        expected += reference_linear_grads(layer, x, seed, grad_out)[2]
    torch.testing.assert_close(layer.weight.grad, expected, **F64)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_conv_gradients_match_reference(case, expansion, generator):
    dims, cin, cout, k, kwargs, spatial = case
    layer = make_conv(dims, cin, cout, k, kwargs, expansion, generator)
    x = conv_input(dims, cin, spatial, generator).requires_grad_()
    y, seed = forward_with_seed(layer, x)
    grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(grad_out)

    weight = layer.weight.detach().clone().requires_grad_()
    bias = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = dense_conv_reference(dims, cin, cout, k, kwargs, reference.combine(weight, seed), bias, xr)
    out.backward(grad_out)
    torch.testing.assert_close(y, out, **F64)
    torch.testing.assert_close(x.grad, xr.grad, **F64)
    torch.testing.assert_close(layer.weight.grad, weight.grad, **F64)
    if bias is not None:
        torch.testing.assert_close(layer.bias.grad, bias.grad, **F64)


def test_conv_gradients_non_contiguous_input(generator):
    layer = make_conv(2, 3, 4, 3, dict(padding=1), 4, generator)
    x = torch.randn(2, 6, 5, 3, generator=generator, dtype=torch.float64).permute(0, 3, 2, 1)  # [2, 3, 5, 6]
    assert not x.is_contiguous()
    x.requires_grad_()
    y, seed = forward_with_seed(layer, x)
    grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(grad_out)
    weight = layer.weight.detach().clone().requires_grad_()
    xr = x.detach().contiguous().requires_grad_()
    out = F.conv2d(xr, reference.combine(weight, seed), layer.bias.detach(), padding=1)
    out.backward(grad_out)
    torch.testing.assert_close(y, out, **F64)
    torch.testing.assert_close(x.grad, xr.grad, **F64)
    torch.testing.assert_close(layer.weight.grad, weight.grad, **F64)


@pytest.mark.parametrize("expansion", [1, 4])
def test_linear_empty_batch(expansion):
    layer = mk.MKLinear(5, 3, expansion=expansion)
    x = torch.randn(0, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 5)
    assert layer.weight.grad is not None and torch.equal(layer.weight.grad, torch.zeros(expansion, 3, 5))
    assert torch.equal(layer.bias.grad, torch.zeros(3))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_empty_batch(dims):
    layer = MK_CONV[dims](2, 3, 3, padding=1, expansion=3)
    y = layer(torch.randn(0, 2, *(4,) * dims))
    assert y.shape == (0, 3, *(4,) * dims)
    y.sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
    assert torch.equal(layer.bias.grad, torch.zeros(3))


# --------------------------------------------------------------------------------------------------- eval mode


@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_linear_eval_is_dense_with_mean_weight(expansion, generator):
    layer = randomize(mk.MKLinear(6, 4, expansion=expansion, dtype=torch.float64), generator).eval()
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    mean = layer.weight.detach().mean(0)
    torch.testing.assert_close(layer.collapsed_weight(), mean, **EXACTISH)
    state = torch.get_rng_state()
    with torch.no_grad():
        y = layer(x)
    assert torch.equal(torch.get_rng_state(), state), "eval mode must not draw random numbers"
    torch.testing.assert_close(y, F.linear(x, mean, layer.bias.detach()), **EXACTISH)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_conv_eval_is_dense_with_mean_weight(case, generator):
    dims, cin, cout, k, kwargs, spatial = case
    layer = make_conv(dims, cin, cout, k, kwargs, 3, generator).eval()
    x = conv_input(dims, cin, spatial, generator)
    bias = None if layer.bias is None else layer.bias.detach()
    expected = dense_conv_reference(dims, cin, cout, k, kwargs, layer.weight.detach().mean(0), bias, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, **EXACTISH)
    torch.testing.assert_close(layer(x), expected, **EXACTISH)


def test_collapsed_weight_shape_and_value(generator):
    layer = randomize(mk.MKConv2d(3, 4, (3, 2), expansion=5, dtype=torch.float64), generator)
    collapsed = layer.collapsed_weight()
    assert collapsed.shape == (4, 3, 3, 2)
    torch.testing.assert_close(collapsed, layer.weight.detach().mean(0), **EXACTISH)


def test_eval_cache_refreshed_after_optimizer_step(generator):
    layer = randomize(mk.MKLinear(5, 3, expansion=4, dtype=torch.float64), generator)
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()
    layer.eval()
    with torch.no_grad():
        after = layer(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, F.linear(x, layer.weight.detach().mean(0), layer.bias.detach()), **EXACTISH)


def test_eval_cache_refreshed_after_load_state_dict(generator):
    layer = randomize(mk.MKConv1d(2, 3, 3, expansion=3, dtype=torch.float64), generator).eval()
    other = randomize(mk.MKConv1d(2, 3, 3, expansion=3, dtype=torch.float64), generator).eval()
    x = torch.randn(2, 2, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)


def test_eval_cache_refreshed_after_dtype_cast(generator):
    layer = randomize(mk.MKLinear(6, 4, expansion=3), generator).eval()
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        layer(x.float())
        layer.double()
        y = layer(x)
    assert y.dtype == torch.float64 and layer.collapsed_weight().dtype == torch.float64
    torch.testing.assert_close(y, F.linear(x, layer.weight.mean(0), layer.bias), **EXACTISH)


def test_eval_cache_refreshed_after_in_place_init(generator):
    layer = randomize(mk.MKLinear(6, 4, expansion=3, dtype=torch.float64), generator).eval()
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.bias.expand(2, 4), rtol=0, atol=0)


def test_eval_after_inference_mode_then_input_gradient(generator):
    """A frozen model run once under torch.inference_mode must still give input gradients afterwards (as nn.Linear
    does): the eval cache must not keep an inference tensor that autograd later has to save."""
    layer = randomize(mk.MKLinear(6, 4, expansion=3, dtype=torch.float64), generator).eval().requires_grad_(False)
    with torch.inference_mode():
        layer(torch.randn(2, 6, dtype=torch.float64))
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.mean(0).sum(0).expand(2, 6), **EXACTISH)


@pytest.mark.parametrize("expansion", [1, 3, 4])
def test_eval_with_grad_flows_through_mean(expansion, generator):
    layer = randomize(mk.MKLinear(5, 4, expansion=expansion, dtype=torch.float64), generator).eval()
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    dense = nn.Linear(5, 4, dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(layer.weight.mean(0))
        dense.bias.copy_(layer.bias)
    xd = x.detach().clone().requires_grad_()
    grad_out = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    state = torch.get_rng_state()
    layer(x).backward(grad_out)
    assert torch.equal(torch.get_rng_state(), state)
    dense(xd).backward(grad_out)
    for k in range(expansion):
        torch.testing.assert_close(layer.weight.grad[k], dense.weight.grad / expansion, **EXACTISH)
    torch.testing.assert_close(layer.bias.grad, dense.bias.grad, **EXACTISH)
    torch.testing.assert_close(x.grad, xd.grad, **EXACTISH)


def test_eval_under_no_grad_has_no_graph(generator):
    layer = mk.MKConv2d(2, 3, 3, expansion=3).eval()
    with torch.no_grad():
        y = layer(torch.randn(1, 2, 5, 5, generator=generator))
    assert not y.requires_grad and y.grad_fn is None


def test_train_eval_switch(generator):
    layer = randomize(mk.MKLinear(8, 8, expansion=4, dtype=torch.float64), generator)
    x = torch.randn(2, 8, generator=generator, dtype=torch.float64)
    layer.eval()
    with torch.no_grad():
        e1 = layer(x)
    layer.train()
    t = layer(x)
    layer.eval()
    with torch.no_grad():
        e2 = layer(x)
    assert not torch.allclose(t, e1)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- to_dense / fuse


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("method", ["to_dense", "fuse"])
def test_linear_to_dense(bias, training, method, generator):
    layer = randomize(mk.MKLinear(7, 3, bias, expansion=3, dtype=torch.float64), generator).train(training)
    state = torch.get_rng_state()
    dense = getattr(layer, method)()
    assert torch.equal(torch.get_rng_state(), state), f"{method} must not consume the global RNG"
    assert type(dense) is nn.Linear
    assert dense.in_features == 7 and dense.out_features == 3 and dense.training == training
    assert dense.weight.dtype == torch.float64 and dense.weight.shape == (3, 7)
    torch.testing.assert_close(dense.weight.detach(), layer.weight.detach().mean(0), **EXACTISH)
    if bias:
        torch.testing.assert_close(dense.bias, layer.bias, rtol=0, atol=0)
        assert dense.bias.data_ptr() != layer.bias.data_ptr()
    else:
        assert dense.bias is None
    x = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), layer.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
@pytest.mark.parametrize("training", [True, False])
def test_conv_to_dense(case, training, generator):
    dims, cin, cout, k, kwargs, spatial = case
    layer = make_conv(dims, cin, cout, k, kwargs, 4, generator).train(training)
    reference_dense = DENSE_CONV[dims](cin, cout, k, **kwargs)
    state = torch.get_rng_state()
    dense = layer.to_dense()
    assert torch.equal(torch.get_rng_state(), state), "to_dense must not consume the global RNG"
    assert type(dense) is DENSE_CONV[dims] and dense.training == training
    for name in CONV_HYPERPARAMETERS:
        assert getattr(dense, name) == getattr(reference_dense, name), name
    torch.testing.assert_close(dense.weight.detach(), layer.weight.detach().mean(0), **EXACTISH)
    assert (dense.bias is None) == (layer.bias is None)
    if dense.bias is not None:
        torch.testing.assert_close(dense.bias, layer.bias, rtol=0, atol=0)
    x = conv_input(dims, cin, spatial, generator)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), layer.eval()(x), rtol=0, atol=0)


def test_to_dense_is_a_copy(generator):
    layer = randomize(mk.MKLinear(4, 3, expansion=2, dtype=torch.float64), generator)
    dense = layer.fuse()
    weight, bias = dense.weight.detach().clone(), dense.bias.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1)
        layer.bias.add_(1)
    assert torch.equal(dense.weight, weight) and torch.equal(dense.bias, bias)


def test_to_dense_keeps_requires_grad():
    layer = mk.MKLinear(4, 3, expansion=2)
    layer.weight.requires_grad_(False)
    dense = layer.to_dense()
    assert not dense.weight.requires_grad and dense.bias.requires_grad


# ------------------------------------------------------------------------------------------------- from_dense


DENSE_FACTORIES = {
    "linear": lambda: nn.Linear(6, 5),
    "linear-nobias": lambda: nn.Linear(3, 1, bias=False),
    "conv1d": lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1),
    "conv2d": lambda: nn.Conv2d(4, 6, (3, 1), padding="same", groups=2, padding_mode="reflect"),
    "conv3d": lambda: nn.Conv3d(2, 3, 2, dilation=2, bias=False),
}
MK_FOR = {nn.Linear: mk.MKLinear, nn.Conv1d: mk.MKConv1d, nn.Conv2d: mk.MKConv2d, nn.Conv3d: mk.MKConv3d}
INPUTS = {
    nn.Linear: lambda d: (7, d.in_features),
    nn.Conv1d: lambda d: (2, d.in_channels, 9),
    nn.Conv2d: lambda d: (2, d.in_channels, 5, 6),
    nn.Conv3d: lambda d: (1, d.in_channels, 5, 6, 5),
}


@pytest.mark.parametrize("name", DENSE_FACTORIES)
@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_from_dense_replicate(name, expansion, generator):
    dense = DENSE_FACTORIES[name]()
    layer = MK_FOR[type(dense)].from_dense(dense, expansion=expansion)
    assert type(layer) is MK_FOR[type(dense)] and layer.expansion == expansion
    assert layer.weight.shape == (expansion, *dense.weight.shape)
    for k in range(expansion):
        assert torch.equal(layer.weight[k], dense.weight)
    if dense.bias is None:
        assert layer.bias is None
    else:
        assert torch.equal(layer.bias, dense.bias) and layer.bias.data_ptr() != dense.bias.data_ptr()
    assert layer.weight.data_ptr() != dense.weight.data_ptr()
    x = torch.randn(INPUTS[type(dense)](dense), generator=generator)
    layer.eval(), dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("expansion", [3, 5, 8])
def test_from_dense_replicate_eval_is_bit_exact(expansion, generator):
    """docs/design.md section 3: with init="replicate" a converted model computes exactly what it did before, in
    eval mode."""
    dense = nn.Linear(64, 32)
    layer = mk.MKLinear.from_dense(dense, expansion=expansion).eval()
    assert torch.equal(layer.collapsed_weight(), dense.weight.detach())
    x = torch.randn(5, 64, generator=generator)
    with torch.no_grad():
        assert torch.equal(layer(x), dense(x))


def test_from_dense_float64_replicate_eval(generator):
    dense = nn.Conv2d(3, 5, 3, padding=1, dtype=torch.float64).eval()
    layer = mk.MKConv2d.from_dense(dense, 5).eval()
    x = torch.randn(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), dense(x), **EXACTISH)


@pytest.mark.parametrize("training", [True, False])
def test_from_dense_keeps_training_dtype_requires_grad(training):
    dense = nn.Conv1d(2, 3, 3, dtype=torch.float64).train(training)
    dense.bias.requires_grad_(False)
    layer = mk.MKConv1d.from_dense(dense, 2)
    assert layer.training == training
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    assert layer.weight.requires_grad and not layer.bias.requires_grad
    assert (layer.stride, layer.padding, layer.kernel_size) == (dense.stride, dense.padding, dense.kernel_size)


def test_from_dense_does_not_modify_dense():
    dense = nn.Linear(4, 3)
    weight, bias = dense.weight.detach().clone(), dense.bias.detach().clone()
    layer = mk.MKLinear.from_dense(dense, 3, init="independent")
    with torch.no_grad():
        layer.weight.add_(1)
        layer.bias.add_(1)
    assert torch.equal(dense.weight, weight) and torch.equal(dense.bias, bias)


@pytest.mark.parametrize("expansion", [2, 4, 8])
def test_from_dense_independent_statistics(expansion):
    torch.manual_seed(1234)
    dense = nn.Linear(1024, 512)
    dense_std = 1 / math.sqrt(3 * 1024)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert dense.weight.std().item() == pytest.approx(dense_std, rel=0.01)
    layer = mk.MKLinear.from_dense(dense, expansion=expansion, init="independent")
    assert torch.equal(layer.bias, dense.bias)
    scale = math.sqrt((expansion + 1) / 2)
    for k in range(expansion):
        assert not torch.equal(layer.weight[k], dense.weight)
        assert layer.weight[k].std().item() == pytest.approx(dense_std * scale, rel=0.02)
        assert abs(layer.weight[k].mean().item()) < 0.02 * dense_std * scale
        assert layer.weight[k].abs().max().item() <= scale / math.sqrt(1024) * (1 + 1e-6)
    # the copies are independent draws
    corr = torch.corrcoef(layer.weight.detach().reshape(expansion, -1))
    off_diagonal = corr[~torch.eye(expansion, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.02


def test_from_dense_independent_conv_statistics():
    torch.manual_seed(99)
    dense = nn.Conv2d(64, 128, 3)
    layer = mk.MKConv2d.from_dense(dense, expansion=3, init="independent")
    dense_std = 1 / math.sqrt(3 * 64 * 9)
    for k in range(3):
        assert layer.weight[k].std().item() == pytest.approx(dense_std * math.sqrt(2), rel=0.03)
    assert not torch.equal(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize("name", DENSE_FACTORIES)
def test_from_dense_expansion_1_train_equals_dense(name, generator):
    dense = DENSE_FACTORIES[name]().double()
    layer = MK_FOR[type(dense)].from_dense(dense, expansion=1)
    assert layer.training
    x = torch.randn(INPUTS[type(dense)](dense), generator=generator, dtype=torch.float64, requires_grad=True)
    xd = x.detach().clone().requires_grad_()
    y = layer(x)
    yd = dense(xd)
    torch.testing.assert_close(y, yd, **EXACTISH)
    grad_out = torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y.backward(grad_out)
    yd.backward(grad_out)
    torch.testing.assert_close(layer.weight.grad[0], dense.weight.grad, **EXACTISH)
    torch.testing.assert_close(x.grad, xd.grad, **EXACTISH)


# ------------------------------------------------------------------------------------- statistics of the mix


@pytest.mark.parametrize("expansion", [2, 4, 8])
def test_mixed_weight_keeps_dense_init_variance(expansion):
    torch.manual_seed(2024)
    layer = mk.MKLinear(512, 512, expansion=expansion, init="independent")
    dense_var = 1 / (3 * 512)
    x = torch.eye(512)
    # with an identity input and no bias, the train-mode output is the transposed mixed kernel
    layer.bias = None
    with torch.no_grad():
        w_eff, seed = forward_with_seed(layer, x)
    torch.testing.assert_close(w_eff.T, mk.functional.combine(layer.weight.detach(), seed), rtol=1e-5, atol=1e-7)
    assert w_eff.var().item() == pytest.approx(dense_var, rel=0.03)
    assert abs(w_eff.mean().item()) < 0.01 * math.sqrt(dense_var)
    # each mixed element is a convex combination of its copies
    lo, hi = layer.weight.min(0).values, layer.weight.max(0).values
    assert bool((w_eff.T >= lo - 1e-6).all() and (w_eff.T <= hi + 1e-6).all())


def test_replicate_mixed_weight_equals_dense_weight(generator):
    dense = nn.Linear(9, 5, dtype=torch.float64)
    layer = mk.MKLinear.from_dense(dense, 4)
    x = torch.randn(3, 9, generator=generator, dtype=torch.float64)
    # P sums to 1, so mixing identical copies gives the copy back in train mode too
    torch.testing.assert_close(layer(x), dense(x), **F64)


def test_layers_deepcopy_and_pickle_state(generator):
    layer = randomize(mk.MKLinear(4, 3, expansion=3, dtype=torch.float64), generator).eval()
    x = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.weight.zero_()
        torch.testing.assert_close(layer(x), y, rtol=0, atol=0)
        torch.testing.assert_close(clone(x), layer.bias.expand(2, 3), rtol=0, atol=0)
