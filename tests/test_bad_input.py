"""Bad arguments give clear errors (the right exception type and a message naming the argument); a few inputs that
look odd but are valid (autocast, non-contiguous weights, models without MK layers) work."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import majority_kernels as mk
from majority_kernels import backends, reference

BAD_EXPANSIONS = [
    (0, ValueError),
    (-1, ValueError),
    (2.5, TypeError),
    (True, TypeError),
    ("4", TypeError),
    (None, TypeError),
]
EXPANSION_IDS = [repr(value) for value, _ in BAD_EXPANSIONS]

EXPANSION_USERS = {
    "MKLinear": lambda e: mk.MKLinear(3, 2, expansion=e),
    "MKConv1d": lambda e: mk.MKConv1d(3, 2, 3, expansion=e),
    "MKConv2d": lambda e: mk.MKConv2d(3, 2, 3, expansion=e),
    "MKConv3d": lambda e: mk.MKConv3d(3, 2, 3, expansion=e),
    "convert": lambda e: mk.convert(nn.Sequential(nn.Linear(3, 2)), e),
    "convert-keyword": lambda e: mk.convert(nn.Sequential(nn.Linear(3, 2)), expansion=e),
    "from_dense": lambda e: mk.MKLinear.from_dense(nn.Linear(3, 2), e),
    "from_dense-conv": lambda e: mk.MKConv2d.from_dense(nn.Conv2d(3, 2, 1), expansion=e),
    "mixing_weights": lambda e: mk.functional.mixing_weights(e, (2, 3), 1),
    "scatter": lambda e: mk.functional.scatter(torch.ones(2, 3), 1, 0, e),
}


@pytest.mark.parametrize("user", EXPANSION_USERS)
@pytest.mark.parametrize("value, error", BAD_EXPANSIONS, ids=EXPANSION_IDS)
def test_bad_expansion(user, value, error):
    with pytest.raises(error, match="expansion"):
        EXPANSION_USERS[user](value)


def test_convert_with_bad_expansion_leaves_model_unchanged():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="expansion"):
        mk.convert(model, 0)
    assert type(model[0]) is nn.Linear


INIT_USERS = {
    "MKLinear": lambda init: mk.MKLinear(3, 2, init=init),
    "MKConv2d": lambda init: mk.MKConv2d(3, 2, 3, init=init),
    "convert": lambda init: mk.convert(nn.Sequential(nn.Linear(3, 2)), init=init),
    "from_dense": lambda init: mk.MKConv1d.from_dense(nn.Conv1d(3, 2, 1), 2, init=init),
}


@pytest.mark.parametrize("user", INIT_USERS)
@pytest.mark.parametrize("init", ["foo", "Replicate", None, 1])
def test_bad_init(user, init):
    with pytest.raises(ValueError, match="init"):
        INIT_USERS[user](init)


# ------------------------------------------------------------------------------------------------ weights, shapes


def test_linear_weight_without_expansion_dimension():
    with pytest.raises(ValueError, match=r"weight.*expansion") as info:
        mk.functional.majority_linear(torch.randn(4, 5), torch.randn(3, 5), seed=1)
    assert "unsqueeze(0)" in str(info.value)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_weight_without_expansion_dimension(dims):
    conv = getattr(mk.functional, f"majority_conv{dims}d")
    with pytest.raises(ValueError, match=r"weight.*expansion"):
        conv(torch.randn(1, 2, *(5,) * dims), torch.randn(3, 2, *(3,) * dims), seed=1)


def test_weight_with_empty_expansion_dimension():
    with pytest.raises(ValueError, match="expansion"):
        mk.functional.majority_linear(torch.randn(4, 5), torch.randn(0, 3, 5), seed=1)
    with pytest.raises(ValueError, match="expansion"):
        mk.functional.combine(torch.randn(0, 3), 1)


def test_combine_of_zero_dim_weight():
    with pytest.raises(ValueError, match="weight"):
        mk.functional.combine(torch.randn(()), 1)


@pytest.mark.parametrize("input_shape", [(4, 6), (4, 1), (6,), (5, 1), ()])
def test_linear_input_last_dim_mismatch(input_shape):
    with pytest.raises(ValueError, match="in_features"):
        mk.functional.majority_linear(torch.randn(input_shape), torch.randn(2, 3, 5), seed=1)


def test_linear_layer_input_mismatch():
    with pytest.raises(ValueError, match="in_features"):
        mk.MKLinear(5, 3, expansion=2)(torch.randn(4, 6))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_channel_mismatch(dims):
    conv = getattr(mk.functional, f"majority_conv{dims}d")
    with pytest.raises(ValueError, match="channels"):
        conv(torch.randn(1, 3, *(5,) * dims), torch.randn(2, 4, 2, *(3,) * dims), seed=1)


def test_grouped_conv_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        mk.functional.majority_conv2d(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 2, 3, 3), groups=3, seed=1)
    with pytest.raises(ValueError, match="channels"):
        mk.MKConv2d(4, 4, 3, groups=2, expansion=2)(torch.randn(1, 2, 5, 5))


@pytest.mark.parametrize("input_shape", [(4, 5), (1, 1, 2, 5, 5)])
def test_conv2d_input_rank(input_shape):
    with pytest.raises(ValueError, match="input"):
        mk.functional.majority_conv2d(torch.randn(input_shape), torch.randn(2, 3, 2, 3, 3), seed=1)


@pytest.mark.parametrize("bias_shape", [(4,), (1, 3), (), (2,)])
def test_linear_bias_of_wrong_shape(bias_shape):
    with pytest.raises(ValueError, match="bias"):
        mk.functional.majority_linear(torch.randn(4, 5), torch.randn(2, 3, 5), torch.randn(bias_shape), seed=1)


def test_conv_bias_of_wrong_shape():
    with pytest.raises(ValueError, match="bias"):
        mk.functional.majority_conv1d(torch.randn(1, 2, 5), torch.randn(2, 3, 2, 3), torch.randn(2), seed=1)


def test_integer_bias():
    with pytest.raises(TypeError, match="bias"):
        mk.functional.majority_linear(torch.randn(4, 5), torch.randn(2, 3, 5), torch.ones(3, dtype=torch.int64), seed=1)


# ------------------------------------------------------------------------------------------------------- dtypes


def test_dtype_mismatch_functional():
    with pytest.raises(TypeError, match="dtype"):
        mk.functional.majority_linear(torch.randn(4, 5, dtype=torch.float64), torch.randn(2, 3, 5), seed=1)
    with pytest.raises(TypeError, match="dtype"):
        mk.functional.majority_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 3, 2, 3, 3).half(), seed=1)


def test_dtype_mismatch_layer_train_mode():
    with pytest.raises(TypeError, match="dtype"):
        mk.MKLinear(5, 3, expansion=2)(torch.randn(4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        mk.MKConv1d(2, 3, 3, expansion=2, dtype=torch.float64)(torch.randn(1, 2, 6))


@pytest.mark.parametrize("argument", ["input", "weight"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input_or_weight(argument, dtype):
    x, w = torch.randn(4, 5), torch.randn(2, 3, 5)
    if argument == "input":
        x = x.to(dtype)
    else:
        w = w.to(dtype)
    with pytest.raises(TypeError, match=argument):
        mk.functional.majority_linear(x, w, seed=1)
    with pytest.raises(TypeError, match=argument):
        mk.functional.majority_conv1d(x.T.unsqueeze(0), w.unsqueeze(-1), seed=1)


def test_integer_input_to_layer():
    with pytest.raises(TypeError, match="input"):
        mk.MKLinear(5, 3, expansion=2)(torch.ones(4, 5, dtype=torch.int64))


def test_non_tensor_input():
    with pytest.raises(TypeError, match="input"):
        mk.functional.majority_linear([[1.0] * 5], torch.randn(2, 3, 5), seed=1)


def test_autocast_bfloat16_functional(generator):
    x = torch.randn(4, 5, generator=generator)
    w = torch.randn(3, 6, 5, generator=generator)
    b = torch.randn(6, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mk.functional.majority_linear(x, w, b, seed=17)
        yc = mk.functional.majority_conv1d(x.T.unsqueeze(0), w.unsqueeze(-1), b, seed=17)
    assert y.dtype == torch.bfloat16 and yc.dtype == torch.bfloat16
    expected = F.linear(x.double(), reference.combine(w.double(), 17), b.double())
    torch.testing.assert_close(y.double(), expected, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(yc.double().squeeze(0).T, expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("training", [True, False])
def test_autocast_bfloat16_layer(training, generator):
    layer = mk.MKConv2d(3, 4, 3, padding=1, expansion=3).train(training)
    x = torch.randn(2, 3, 5, 5, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()


# ------------------------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("on_meta", ["input", "weight", "bias"])
def test_device_mismatch(on_meta):
    tensors = {"input": torch.randn(4, 5), "weight": torch.randn(2, 3, 5), "bias": torch.randn(3)}
    tensors[on_meta] = tensors[on_meta].to("meta")
    with pytest.raises(ValueError, match="device"):
        mk.functional.majority_linear(tensors["input"], tensors["weight"], tensors["bias"], seed=1)


def test_device_mismatch_conv():
    with pytest.raises(ValueError, match="device"):
        mk.functional.majority_conv2d(torch.randn(1, 2, 5, 5, device="meta"), torch.randn(2, 3, 2, 3, 3), seed=1)


# ------------------------------------------------------------------------------------------------ seed / offset


BAD_SEEDS = [
    (-1, ValueError),
    (2**63, ValueError),
    (2**64 + 3, ValueError),
    (1.5, TypeError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    (float("-inf"), ValueError),
    (True, TypeError),
    ("1", TypeError),
    (None, TypeError),
    (torch.tensor(1, dtype=torch.int32), TypeError),
    (torch.tensor([1, 2]), TypeError),
    (torch.tensor(1.0), TypeError),
    (torch.empty(0, dtype=torch.int64), TypeError),
]
SEED_IDS = [
    "-1",
    "2**63",
    "2**64+3",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "True",
    "str",
    "None",
    "int32-tensor",
    "2-element-tensor",
    "float-tensor",
    "empty-tensor",
]

SEED_USERS = {
    "majority_linear": lambda s: mk.functional.majority_linear(torch.randn(2, 3), torch.randn(2, 4, 3), seed=s),
    "majority_conv2d": lambda s: mk.functional.majority_conv2d(
        torch.randn(1, 1, 3, 3), torch.randn(2, 1, 1, 2, 2), seed=s
    ),
    "combine": lambda s: mk.functional.combine(torch.randn(2, 4), s),
    "scatter": lambda s: mk.functional.scatter(torch.randn(4), s, 0, 2),
    "mixing_weights": lambda s: mk.functional.mixing_weights(2, 4, s),
}


@pytest.mark.parametrize("user", SEED_USERS)
@pytest.mark.parametrize("seed, error", BAD_SEEDS, ids=SEED_IDS)
def test_bad_seed(user, seed, error):
    with pytest.raises(error, match="seed"):
        SEED_USERS[user](seed)


@pytest.mark.parametrize("seed", [0, 1, 2**32, 2**63 - 1, torch.tensor(2**62), torch.tensor([5])])
def test_valid_seeds(seed):
    out = mk.functional.combine(torch.randn(3, 4, dtype=torch.float64), seed)
    assert out.shape == (4,) and torch.isfinite(out).all()


BAD_OFFSETS = [
    (-1, ValueError),
    (2**64, ValueError),
    (1.5, TypeError),
    (True, TypeError),
    (None, TypeError),
    (torch.tensor(3), TypeError),
]


@pytest.mark.parametrize("offset, error", BAD_OFFSETS, ids=["-1", "2**64", "1.5", "True", "None", "tensor"])
@pytest.mark.parametrize("user", ["majority_linear", "combine", "mixing_weights", "scatter"])
def test_bad_offset(user, offset, error):
    calls = {
        "majority_linear": lambda: mk.functional.majority_linear(
            torch.randn(2, 3), torch.randn(2, 4, 3), seed=1, offset=offset
        ),
        "combine": lambda: mk.functional.combine(torch.randn(2, 4), 1, offset),
        "mixing_weights": lambda: mk.functional.mixing_weights(2, 4, 1, offset),
        "scatter": lambda: mk.functional.scatter(torch.randn(4), 1, offset, 2),
    }
    with pytest.raises(error, match="offset"):
        calls[user]()


@pytest.mark.parametrize("offset", [0, 2**63 - 1, 2**63, 2**64 - 1])
def test_valid_offsets(offset, generator):
    weight = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        mk.functional.combine(weight, 5, offset), reference.combine(weight, 5, offset), rtol=1e-10, atol=1e-12
    )


def test_scatter_accumulate_into_wrong_shape():
    with pytest.raises(ValueError, match="accumulate_into"):
        mk.functional.scatter(torch.randn(4), 1, 0, 2, accumulate_into=torch.zeros(3, 4))


# ----------------------------------------------------------------------------------------------------- backends


def test_unknown_backend_in_use_backend():
    with pytest.raises(ValueError, match="nope"):
        with mk.use_backend("nope"):
            pass


def test_unknown_backend_from_environment(monkeypatch):
    monkeypatch.setenv("MK_BACKEND", "nope")
    with pytest.raises(ValueError, match="nope"):
        mk.functional.combine(torch.randn(2, 3), 1)
    with pytest.raises(ValueError, match="nope"):
        mk.MKLinear(3, 2, expansion=2)(torch.randn(1, 3))


def test_use_backend_overrides_environment(monkeypatch):
    monkeypatch.setenv("MK_BACKEND", "nope")
    with mk.use_backend("reference"):
        out = mk.functional.combine(torch.randn(2, 3, dtype=torch.float64), 1)
    assert out.shape == (3,)


@pytest.mark.parametrize("name", ["reference", "auto", "REFERENCE", " reference "])
def test_backend_from_environment(monkeypatch, name):
    monkeypatch.setenv("MK_BACKEND", name)
    w = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(mk.functional.combine(w, 9), reference.combine(w, 9), rtol=1e-12, atol=1e-14)


def test_backend_that_cannot_run_here_raises():
    if "cpu" not in mk.available_backends("cpu"):
        pytest.skip("the C++ extension is not built")
    with mk.use_backend("cpu"):
        with pytest.raises(RuntimeError, match="cpu"):
            mk.functional.combine(torch.randn(2, 3, device="meta"), 1)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_installed_triton_loads_as_a_backend():
    # Guards the Triton tier: its test modules skip themselves when the backend cannot load, so a Triton release
    # the kernels no longer import under would otherwise pass CI with that whole tier skipped.
    assert backends.TRITON_ERROR is None


def test_unavailable_gpu_backend_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        with mk.use_backend("cuda"):
            mk.functional.combine(torch.randn(2, 3), 1)


# --------------------------------------------------------------------------------------------------- from_dense


@pytest.mark.parametrize(
    "mk_type, dense",
    [
        (mk.MKLinear, lambda: nn.Conv2d(2, 3, 3)),
        (mk.MKConv2d, lambda: nn.Linear(2, 3)),
        (mk.MKConv2d, lambda: nn.Conv1d(2, 3, 3)),
        (mk.MKConv2d, lambda: nn.ConvTranspose2d(2, 3, 3)),
        (mk.MKConv1d, lambda: nn.ConvTranspose1d(2, 3, 3)),
        (mk.MKLinear, lambda: NonDynamicallyQuantizableLinear(2, 3)),
        (mk.MKLinear, lambda: nn.Bilinear(2, 2, 3)),
        (mk.MKLinear, lambda: nn.Identity()),
    ],
    ids=[
        "conv2d->linear",
        "linear->conv2d",
        "conv1d->conv2d",
        "convtranspose2d",
        "convtranspose1d",
        "linear-subclass",
        "bilinear",
        "identity",
    ],
)
def test_from_dense_wrong_type(mk_type, dense):
    with pytest.raises(TypeError, match=mk_type.__name__):
        mk_type.from_dense(dense(), 2)


@pytest.mark.parametrize(
    "lazy, mk_type", [(lambda: nn.LazyLinear(3), mk.MKLinear), (lambda: nn.LazyConv2d(3, 3), mk.MKConv2d)]
)
def test_from_dense_of_uninitialised_lazy_layer(lazy, mk_type):
    with pytest.raises(ValueError, match="initiali[sz]ed"):
        mk_type.from_dense(lazy(), 2)


def test_from_dense_of_initialised_lazy_layer(generator):
    lazy = nn.LazyLinear(3)
    x = torch.randn(2, 4, generator=generator)
    expected = lazy(x)
    layer = mk.MKLinear.from_dense(lazy, 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-7)


def test_convert_does_not_silently_skip_uninitialised_lazy_layers():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="[Ll]azy"):
        mk.convert(model)


def test_from_dense_of_non_module():
    with pytest.raises(TypeError):
        mk.MKLinear.from_dense(torch.randn(3, 2), 2)


# ------------------------------------------------------------------------------------------- valid odd inputs


def test_collapse_of_model_without_mk_layers():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Sequential(nn.Conv1d(2, 2, 1)))
    assert mk.collapse(model) is model
    assert mk.collapse(nn.ReLU()) is not None


@pytest.mark.parametrize("expansion", [1, 3, 4])
def test_non_contiguous_linear_weight_equals_contiguous(expansion, generator):
    base = torch.randn(5, expansion, 7, generator=generator, dtype=torch.float64)
    weight = base.permute(1, 2, 0)  # [e, 7, 5], not contiguous
    assert not weight.is_contiguous()
    x = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(7, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        mk.functional.majority_linear(x, weight, bias, seed=21, offset=4),
        mk.functional.majority_linear(x, weight.contiguous(), bias, seed=21, offset=4),
        rtol=0,
        atol=0,
    )
    transposed = torch.randn(7, expansion, 5, generator=generator, dtype=torch.float64).transpose(0, 1)
    torch.testing.assert_close(
        mk.functional.majority_linear(x, transposed, bias, seed=2),
        mk.functional.majority_linear(x, transposed.contiguous(), bias, seed=2),
        rtol=0,
        atol=0,
    )
    sliced = torch.randn(expansion, 7, 10, generator=generator, dtype=torch.float64)[:, :, ::2]
    torch.testing.assert_close(
        mk.functional.majority_linear(x, sliced, bias, seed=3),
        mk.functional.majority_linear(x, sliced.contiguous(), bias, seed=3),
        rtol=0,
        atol=0,
    )


def test_non_contiguous_weight_gradients(generator):
    weight = torch.randn(5, 3, 7, generator=generator, dtype=torch.float64).permute(1, 2, 0).requires_grad_()
    contiguous = weight.detach().contiguous().requires_grad_()
    x = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    mk.functional.majority_linear(x, weight, seed=8).backward(grad_out)
    mk.functional.majority_linear(x, contiguous, seed=8).backward(grad_out)
    assert weight.grad.shape == weight.shape
    torch.testing.assert_close(weight.grad, contiguous.grad, rtol=0, atol=0)


def test_non_contiguous_conv_weight_equals_contiguous(generator):
    weight = torch.randn(3, 3, 4, 3, 2, generator=generator, dtype=torch.float64).transpose(0, 2)  # [4, 3, 3, 3, 2]
    assert not weight.is_contiguous()
    x = torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        mk.functional.majority_conv2d(x, weight, None, 1, 1, seed=6),
        mk.functional.majority_conv2d(x, weight.contiguous(), None, 1, 1, seed=6),
        rtol=0,
        atol=0,
    )


def test_nan_input_propagates(generator):
    layer = mk.MKLinear(4, 3, expansion=2)
    x = torch.randn(2, 4, generator=generator)
    x[0, 1] = math.nan
    y = layer(x)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()
