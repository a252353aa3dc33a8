"""mk.convert / mk.collapse on whole models, and timm-style structural re-parameterisation through fuse()."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import majority_kernels as mk
from majority_kernels.layers import _MKLayer


class Net(nn.Module):
    """Nested Sequential, a grouped conv, Conv1d, Conv3d, an nn.MultiheadAttention and an MLP."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, dtype=dtype),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=2, padding_mode="reflect", dtype=dtype), nn.Tanh()),
        )
        self.volume = nn.Conv3d(1, 1, (1, 1, 1), bias=False, dtype=dtype)
        self.proj = nn.Conv1d(6, 8, 1, dtype=dtype)
        self.norm = nn.LayerNorm(8, dtype=dtype)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(8, 16, dtype=dtype), nn.GELU(), nn.Linear(16, 4, dtype=dtype))

    def forward(self, x):
        x = self.features(x)  # [B, 6, H, W]
        x = self.volume(x.unsqueeze(1)).squeeze(1)  # Conv3d over [B, 1, 6, H, W]
        x = self.proj(x.flatten(2)).transpose(1, 2)  # [B, H*W, 8]
        x = self.norm(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.mlp(x).mean(1)  # [B, 4]


CONVERTED = {
    "features.0": mk.MKConv2d,
    "features.2.0": mk.MKConv2d,
    "volume": mk.MKConv3d,
    "proj": mk.MKConv1d,
    "mlp.0": mk.MKLinear,
    "mlp.2": mk.MKLinear,
}
# The weights nn.MultiheadAttention's forward reads, expanded in place and bound at the attention module.
EXPANDED_IN_PLACE = ("attn.in_proj_weight", "attn.out_proj.weight")


def make_net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Net(dtype)


def net_input(generator, dtype=torch.float32):
    return torch.randn(2, 3, 4, 5, generator=generator, dtype=dtype)


def mk_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, _MKLayer)}


# ------------------------------------------------------------------------------------------------------ convert


@pytest.mark.parametrize("expansion", [1, 3])
def test_convert_replaces_matching_layers_in_place(expansion):
    model = make_net()
    relu, norm, attn = model.features[1], model.norm, model.attn
    result = mk.convert(model, expansion)
    assert result is model
    layers = mk_layers(model)
    assert {name: type(layer) for name, layer in layers.items()} == CONVERTED
    assert all(layer.expansion == expansion for layer in layers.values())
    assert model.features[2][0].groups == 2 and model.features[2][0].padding_mode == "reflect"
    assert model.features[1] is relu and model.norm is norm and model.attn is attn


def test_convert_expands_multihead_attention_in_place():
    model = make_net()
    attn, out_proj = model.attn, model.attn.out_proj
    mk.convert(model, 3)
    assert model.attn is attn and model.attn.out_proj is out_proj
    assert type(model.attn.out_proj) is NonDynamicallyQuantizableLinear
    assert model.attn.out_proj.weight.shape == (3, 8, 8) and model.attn.in_proj_weight.shape == (3, 24, 8)
    assert model.attn.in_proj_bias.shape == (24,)


def test_converted_multihead_attention_still_works(generator):
    model = make_net()
    reference = copy.deepcopy(model).eval()
    mk.convert(model, 3)
    x = net_input(generator)
    model.train()
    model(x).square().sum().backward()
    assert model.attn.out_proj.weight.grad is not None and model.attn.in_proj_weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "dense, mk_type", [(lambda: nn.Linear(4, 3), mk.MKLinear), (lambda: nn.Conv2d(2, 3, 3), mk.MKConv2d)]
)
def test_convert_root_layer_returns_mk_layer(dense, mk_type, generator):
    layer = dense()
    result = mk.convert(layer, 2)
    assert type(result) is mk_type and result.expansion == 2
    for k in range(2):
        assert torch.equal(result.weight[k], layer.weight)


def test_convert_layer_types_restricts():
    model = mk.convert(make_net(), layer_types=(nn.Linear,))
    assert {name: type(m) for name, m in mk_layers(model).items()} == {"mlp.0": mk.MKLinear, "mlp.2": mk.MKLinear}
    assert type(model.features[0]) is nn.Conv2d and type(model.proj) is nn.Conv1d


def test_convert_layer_types_conv_only():
    model = mk.convert(make_net(), layer_types=[nn.Conv2d, nn.Conv3d])
    assert set(mk_layers(model)) == {"features.0", "features.2.0", "volume"}


def test_convert_filter_receives_qualified_names_and_modules():
    model = make_net()
    originals = dict(model.named_modules())
    seen = {}

    def keep(name, module):
        seen[name] = module
        return not name.startswith("mlp")

    mk.convert(model, filter=keep)
    assert set(seen) == set(CONVERTED) | {"attn", "attn.out_proj"}
    for name, module in seen.items():
        assert module is originals[name]
    assert set(mk_layers(model)) == {"features.0", "features.2.0", "volume", "proj"}
    assert type(model.mlp[0]) is nn.Linear and model.attn.in_proj_weight.dim() == 3


def test_convert_filter_on_root_layer():
    layer = nn.Linear(3, 3)
    with pytest.warns(UserWarning, match="expanded no weight"):
        assert mk.convert(layer, filter=lambda name, module: False) is layer


@pytest.mark.parametrize("layer_types", [(nn.Linear, 3), "Linear", (torch.Tensor,), ()])
def test_convert_layer_types_must_be_module_classes(layer_types):
    model = make_net()
    with pytest.raises(TypeError, match="layer_types"):
        mk.convert(model, layer_types=layer_types)
    assert not mk_layers(model)


def test_convert_layer_types_absent_from_the_model_warns():
    model = make_net()
    with pytest.warns(UserWarning, match="expanded no weight of Net.*module type not in layer_types"):
        mk.convert(model, layer_types=(nn.ConvTranspose2d,))
    assert not mk_layers(model) and model.attn.in_proj_weight.dim() == 2


def test_convert_layer_types_takes_subclasses():
    model = mk.convert(make_net(), layer_types=(nn.Linear,))
    assert set(mk_layers(model)) == {"mlp.0", "mlp.2"}
    assert model.attn.out_proj.weight.dim() == 3 and model.attn.in_proj_weight.dim() == 2


def test_convert_exclude_by_name_and_type():
    model = mk.convert(make_net(), exclude=["mlp.0", "attn.in_proj_weight", nn.Conv3d])
    assert set(mk_layers(model)) == set(CONVERTED) - {"mlp.0", "volume"}
    assert model.attn.in_proj_weight.dim() == 2 and model.attn.out_proj.weight.dim() == 3


def test_convert_returns_a_summary_and_logs_it(caplog):
    model = make_net()
    total = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    with caplog.at_level("INFO", logger="majority_kernels"):
        result, summary = mk.convert(model, 2, exclude=["mlp.2"], return_summary=True)
    assert result is model and summary.expansion == 2
    dense = {name for w in summary.dense for name in w.names}
    assert dense == {"mlp.2.weight"} and summary.dense[0].detail == "excluded"
    assert {name for w in summary.weights if w.how == "expanded" for name in w.names} == set(EXPANDED_IN_PLACE)
    assert summary.share() == pytest.approx(1 - model.mlp[2].weight.numel() / total)
    assert summary.line() in caplog.text


def test_convert_twice_keeps_expanded_weights_and_refuses_another_expansion():
    model = mk.convert(make_net(), 3)
    before = mk_layers(model)
    in_proj = model.attn.in_proj_weight
    _, summary = mk.convert(model, 3, return_summary=True)
    assert mk_layers(model) == before and model.attn.in_proj_weight is in_proj
    assert {w.detail for w in summary.weights} == {"expanded before"}
    with pytest.raises(ValueError, match="already expanded with expansion 3, not 5; collapse"):
        mk.convert(model, 5)
    root = mk.MKLinear(3, 2, expansion=2)
    assert mk.convert(root, 2) is root
    with pytest.raises(ValueError, match="already expanded"):
        mk.convert(root, 4)


def test_convert_independent_init():
    model = mk.convert(make_net(), 3, init="independent")
    for layer in mk_layers(model).values():
        if layer.weight[0].numel() > 1:
            assert not torch.equal(layer.weight[0], layer.weight[1])


def test_convert_keeps_training_flag_and_dtype():
    model = make_net(torch.float64).eval()
    model.mlp[0].train()
    mk.convert(model, 2)
    assert model.mlp[0].training and not model.mlp[2].training and not model.features[0].training
    assert all(layer.weight.dtype == torch.float64 for layer in mk_layers(model).values())


def test_convert_state_dict_keys_and_shapes():
    model = make_net()
    original = {k: v.shape for k, v in model.state_dict().items()}
    mk.convert(model, 3)
    converted = {k: v.shape for k, v in model.state_dict().items()}
    assert converted.keys() == original.keys()
    for key, shape in converted.items():
        layer_name, _, param = key.rpartition(".")
        if layer_name in CONVERTED and param == "weight" or key in EXPANDED_IN_PLACE:
            assert shape == (3, *original[key]), key
        else:
            assert shape == original[key], key


def test_convert_keeps_shared_layer_shared():
    """A layer used at two places (weight tying) stays one layer after convert."""
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared))
    mk.convert(model, 2)
    assert isinstance(model[0], mk.MKLinear)
    assert model[2][0] is model[0]


def test_convert_converts_every_alias_of_a_layer():
    """Two attribute names for one layer in the same parent: both must be converted (to the same MK layer)."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(3, 3)
            self.decoder = self.encoder

        def forward(self, x):
            return self.decoder(self.encoder(x))

    model = mk.convert(Tied(), 2)
    assert isinstance(model.encoder, mk.MKLinear)
    assert model.decoder is model.encoder


# ------------------------------------------------------------------------------------- convert then eval / collapse


@pytest.mark.parametrize("expansion", [1, 3, 4, 8])
def test_converted_eval_equals_original_float32(expansion, generator):
    model = make_net().eval()
    original = copy.deepcopy(model)
    mk.convert(model, expansion)
    x = net_input(generator)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("expansion", [1, 2, 3, 5])
def test_converted_eval_equals_original_float64(expansion, generator):
    model = make_net(torch.float64).eval()
    original = copy.deepcopy(model)
    mk.convert(model, expansion)
    x = net_input(generator, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-13, atol=1e-14)


def train_steps(model, generator, steps=3, dtype=torch.float32):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(net_input(generator, dtype)).square().mean().backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_collapse_after_training_matches_mk_eval(dtype, generator):
    model = mk.convert(make_net(dtype), 4, init="independent")
    train_steps(model, generator, dtype=dtype)
    x = net_input(generator, dtype)
    with torch.no_grad():
        expected = model(x)
    assert mk.collapse(model) is model
    assert not mk_layers(model)
    assert type(model.features[0]) is nn.Conv2d and type(model.mlp[2]) is nn.Linear
    assert type(model.attn.out_proj) is NonDynamicallyQuantizableLinear
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_collapsed_state_dict_loads_into_unconverted_model(generator):
    original_shapes = {k: v.shape for k, v in make_net().state_dict().items()}
    model = train_steps(mk.convert(make_net(), 3, init="independent"), generator)
    x = net_input(generator)
    with torch.no_grad():
        expected = model(x)
    state = mk.collapse(model).state_dict()
    assert {k: v.shape for k, v in state.items()} == original_shapes
    fresh = make_net(seed=1).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


def test_collapsed_weights_are_the_means(generator):
    model = train_steps(mk.convert(make_net(torch.float64), 5, init="independent"), generator, dtype=torch.float64)
    means = {name: layer.weight.detach().mean(0) for name, layer in mk_layers(model).items()}
    biases = {name: layer.bias for name, layer in mk_layers(model).items()}
    mk.collapse(model)
    modules = dict(model.named_modules())
    for name, mean in means.items():
        torch.testing.assert_close(modules[name].weight.detach(), mean, rtol=1e-13, atol=1e-15)
        if biases[name] is not None:
            torch.testing.assert_close(modules[name].bias, biases[name], rtol=0, atol=0)


def test_collapse_without_mk_layers_is_a_no_op(generator):
    model = make_net()
    state = copy.deepcopy(model.state_dict())
    children = list(model.modules())
    assert mk.collapse(model) is model
    assert list(model.modules()) == children
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    layer = nn.Linear(3, 2)
    assert mk.collapse(layer) is layer


@pytest.mark.parametrize("training", [True, False])
def test_collapse_root_mk_layer_returns_dense(training):
    layer = mk.MKConv1d(2, 3, 3, expansion=3, init="independent").train(training)
    dense = mk.collapse(layer)
    assert type(dense) is nn.Conv1d and dense.training == training
    torch.testing.assert_close(dense.weight.detach(), layer.weight.detach().mean(0), rtol=1e-6, atol=1e-7)


def test_convert_collapse_round_trip_float64(generator):
    model = make_net(torch.float64).eval()
    original = copy.deepcopy(model)
    mk.collapse(mk.convert(model, 4))
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    x = net_input(generator, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-13, atol=1e-14)


# --------------------------------------------------------------------------------- timm-style re-parameterisation


def reparameterize_model(model: nn.Module) -> nn.Module:
    """What timm.utils.model.reparameterize_model does: replace every child that has `fuse` by child.fuse()."""
    for name, child in list(model.named_children()):
        if hasattr(child, "fuse"):
            setattr(model, name, child.fuse())
        else:
            reparameterize_model(child)
    return model


def test_timm_style_reparameterisation_collapses_mk_layers(generator):
    model = train_steps(mk.convert(make_net(), 3, init="independent"), generator)
    x = net_input(generator)
    with torch.no_grad():
        expected = model(x)
    expected_state = {k: v.shape for k, v in make_net().state_dict().items()}
    reparameterize_model(model)
    assert not mk_layers(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == expected_state
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_collapse_keeps_shared_mk_layer_shared():
    shared = mk.MKLinear(4, 4, expansion=2)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared))
    mk.collapse(model)
    assert type(model[0]) is nn.Linear
    assert model[2][0] is model[0]
