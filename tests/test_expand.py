"""Weights expanded in place (mk.expand_parameters, and convert for modules that are not the fused types): the
module keeps its type and forward, sees one mixed weight per forward in train mode and the mean in eval mode;
tied weights, nn.TransformerEncoder's fast path, initialisation, checkpoints, channels_last, threads, compile."""

import copy
import io
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

import majority_kernels as mk
from majority_kernels import functional


class TwoReads(nn.Module):
    """A user's module whose forward reads its weight twice, and a kernel parameter by another name."""

    def __init__(self):
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(5, 4))

    def forward(self, x):
        return x @ self.kernel.t() - (x @ self.kernel.t()).detach()  # zero only if both reads see one tensor


class StandardisedConv(nn.Conv2d):
    """A Conv2d subclass whose forward transforms its weight first (as timm's StdConv2d)."""

    def forward(self, x):
        weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (
            self.weight.std((1, 2, 3), keepdim=True) + 1e-5
        )
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


def expected_mixed(copies, anchor):
    """The weight a train-mode forward mixes, given that the torch generator is where it was before it."""
    return functional.combine(copies.detach(), functional.draw_seed(copies, anchor))


@pytest.mark.parametrize(
    "module",
    [lambda: NonDynamicallyQuantizableLinear(4, 3), lambda: StandardisedConv(2, 3, 3)],
    ids=["linear-subclass", "conv-subclass"],
)
def test_convert_expands_subclasses_in_place(module, generator):
    layer = module()
    dense = copy.deepcopy(layer)
    result, summary = mk.convert(layer, 3, return_summary=True)
    assert result is layer and type(layer) is type(dense)
    assert layer.weight.shape == (3, *dense.weight.shape) and summary.share() == 1.0
    assert summary.weights[0].how == "expanded"
    x = (
        torch.randn(2, 4, generator=generator)
        if isinstance(dense, nn.Linear)
        else torch.randn(1, 2, 5, 5, generator=generator)
    )
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), dense(x))
    layer.train()
    state = torch.get_rng_state()
    out = layer(x)
    torch.set_rng_state(state)
    reference = copy.deepcopy(dense)
    reference.weight = nn.Parameter(expected_mixed(layer.weight, x))
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    out.square().sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape and torch.isfinite(layer.weight.grad).all()
    assert isinstance(layer.weight, nn.Parameter)  # the copies are back after the forward


def test_expand_parameters_by_name_draws_once_per_forward(generator):
    module = TwoReads()
    with pytest.raises(ValueError, match="init='independent' needs the module holding 'kernel'"):
        mk.expand_parameters(module, "kernel", 4, init="independent")
    assert mk.expand_parameters(module, "kernel", 4) is module
    assert module.kernel.shape == (4, 5, 4)
    with torch.no_grad():
        module.kernel.add_(torch.randn(module.kernel.shape, generator=generator))  # copies apart
    x = torch.randn(3, 4, generator=generator)
    out = module.train()(x)
    assert torch.equal(out, torch.zeros_like(out))  # both reads saw the same mixed weight
    out.sum().backward()
    assert module.kernel.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="already expanded"):
        mk.expand_parameters(module, ["kernel"])
    with pytest.raises(ValueError, match="no parameter 'bias'"):
        mk.expand_parameters(TwoReads(), ["bias"])


def test_each_forward_draws_afresh_and_follows_the_torch_seed(generator):
    layer = mk.convert(NonDynamicallyQuantizableLinear(6, 6), 4, init="independent").train()
    x = torch.randn(2, 6, generator=generator)
    torch.manual_seed(3)
    first, second = layer(x), layer(x)
    torch.manual_seed(3)
    again = layer(x)
    assert not torch.equal(first, second) and torch.equal(first, again)


def test_forward_that_raises_puts_the_copies_back():
    layer = mk.convert(NonDynamicallyQuantizableLinear(4, 3), 2)
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 5))
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.shape == (2, 3, 4)
    assert layer(torch.randn(2, 4)).shape == (2, 3)


def test_concurrent_forwards_of_one_module_each_see_their_weight(generator):
    layer = mk.convert(NonDynamicallyQuantizableLinear(64, 64), 4, init="independent").eval()
    x = torch.randn(8, 64, generator=generator)
    with torch.no_grad():
        expected = F.linear(x, layer.weight.mean(0), layer.bias)
    failures = []

    def worker():
        for _ in range(50):
            with torch.no_grad():
                if not torch.allclose(layer(x), expected, rtol=1e-5, atol=1e-6):
                    failures.append("wrong output")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and isinstance(layer.weight, nn.Parameter)


def test_checkpointed_forward_recomputes_the_same_mixture(generator):
    def build():
        torch.manual_seed(0)
        return mk.convert(
            nn.Sequential(NonDynamicallyQuantizableLinear(8, 8), nn.Tanh(), NonDynamicallyQuantizableLinear(8, 2)),
            3,
            init="independent",
        ).train()

    x = torch.randn(4, 8, generator=generator)
    plain, checkpointed = build(), build()
    torch.manual_seed(1)
    plain(x).square().sum().backward()
    torch.manual_seed(1)
    torch.utils.checkpoint.checkpoint(checkpointed, x, use_reentrant=False).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@pytest.mark.skipif(
    torch.__version__ < "2.5",
    reason="torch 2.4's compiler reads a module's parameters as they are "
    "at rest, not the mixed weight the forward binds (it fails on the copies' shape)",
)
def test_compiled_fullgraph_train_step_equals_eager(generator):
    torch.manual_seed(0)
    eager = mk.convert(
        nn.Sequential(StandardisedConv(2, 4, 3), nn.ReLU(), StandardisedConv(4, 2, 3)), 3, init="independent"
    ).train()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 2, 9, 9, generator=generator)
    for _ in range(2):
        torch.manual_seed(5)
        eager(x).square().sum().backward()
        torch.manual_seed(5)
        compiled(x).square().sum().backward()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_deepcopy_and_save_keep_the_expansion(generator):
    layer = mk.convert(StandardisedConv(2, 3, 3), 2, init="independent").eval()
    x = torch.randn(1, 2, 6, 6, generator=generator)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        with torch.no_grad():
            assert torch.equal(other(x), layer(x))
        assert other.weight is not layer.weight
        other.train()(x).sum().backward()


# ------------------------------------------------------------------------------------------ nn.TransformerEncoder


def encoder(seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_transformer_encoder_eval_takes_the_fast_path_and_equals_the_original(context, generator, monkeypatch):
    model, original = encoder(), encoder().eval()
    _, summary = mk.convert(model, 4, return_summary=True)
    assert summary.share() == 1.0 and {w.how for w in summary.weights} == {"expanded"}
    assert model.layers[0].self_attn.in_proj_weight.shape == (4, 48, 16)
    fast_path = torch._transformer_encoder_layer_fwd
    calls = []
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", lambda *a, **k: calls.append(1) or fast_path(*a, **k))
    x = torch.randn(2, 5, 16, generator=generator)
    with context():
        out = model.eval()(x)
        assert len(calls) == 2
        assert torch.equal(out, original(x))


def test_transformer_encoder_trains_converted(generator):
    model = mk.convert(encoder(), 3, init="independent").train()
    x = torch.randn(2, 5, 16, generator=generator)
    model(x).square().mean().backward()
    for name in ("self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
        grad = model.layers[1].get_parameter(name).grad
        assert grad is not None and grad.shape[0] == 3 and grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------ tied weights


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.body(self.embed(ids))))


def test_weight_tied_to_an_embedding_stays_dense_unless_asked():
    model = TiedLM()
    _, summary = mk.convert(model, 2, return_summary=True)
    assert isinstance(model.body, mk.MKLinear) and type(model.head) is nn.Linear
    tied = [w for w in summary.weights if "head.weight" in w.names][0]
    assert tied.how == "dense" and tied.embedding and "embeddings=True" in tied.detail
    assert set(tied.names) == {"embed.weight", "head.weight"}
    assert model.head.weight is model.embed.weight


def test_tied_weight_is_expanded_once_and_collapse_restores_the_tie(generator):
    model = TiedLM()
    dense = copy.deepcopy(model).eval()
    mk.convert(model, 3, embeddings=True)
    assert isinstance(model.embed, mk.MKEmbedding) and isinstance(model.head, mk.MKLinear)
    assert model.head.weight is model.embed.weight and model.head.weight.shape == (3, 11, 6)
    assert len(list(model.parameters())) == 3  # the shared copies once, body's weight and bias
    ids = torch.randint(0, 11, (2, 7), generator=generator)
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), dense(ids))
    model.train()(ids).logsumexp(-1).sum().backward()
    grad = model.embed.weight.grad
    assert grad is not None and grad[:, ids.unique()].abs().sum() > 0
    mk.collapse(model)
    assert type(model.head) is nn.Linear and model.head.weight is model.embed.weight
    dense.load_state_dict(model.state_dict(), strict=True)


def test_tied_weight_in_place_mixes_per_use(generator):
    """Two modules sharing one weight (expanded in place): one Parameter of copies; each use draws its own P."""
    first, second = NonDynamicallyQuantizableLinear(5, 5), NonDynamicallyQuantizableLinear(5, 5)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    mk.convert(model, 4, init="independent")
    assert model[0].weight is model[1].weight and model[0].weight.shape == (4, 5, 5)
    x = torch.randn(2, 5, generator=generator)
    state = torch.get_rng_state()
    model.train()(x)
    torch.set_rng_state(state)
    first_mix = expected_mixed(model[0].weight, x)
    second_mix = expected_mixed(model[1].weight, x)
    assert not torch.equal(first_mix, second_mix)
    mk.collapse(model)
    assert model[0].weight is model[1].weight and model[0].weight.dim() == 2


# ------------------------------------------------------------------------------------------------ initialisation


@pytest.mark.parametrize("init", ["replicate", "independent"])
def test_meta_convert_to_empty_reset_parameters(init):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 32), StandardisedConv(4, 8, 3))
    mk.convert(model, 4, init=init)
    model.to_empty(device="cpu")
    for module in model:
        module.reset_parameters()
    scale = 1.0 if init == "replicate" else math.sqrt((4 + 1) / 2)
    for module, fan_in in ((model[0], 64), (model[1], 4 * 9)):
        bound = scale / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) of the dense shape
        copies = module.weight.detach()
        assert copies.abs().max() <= bound * (1 + 1e-6) and copies.abs().max() > 0.8 * bound
        assert torch.equal(copies[0], copies[1]) == (init == "replicate")
        assert module.bias.abs().max() <= 1 / math.sqrt(fan_in)


# ----------------------------------------------------------------------------------------------- checkpoints


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        StandardisedConv(4, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def test_dense_state_dict_loads_into_a_converted_model(generator):
    dense, converted = small_cnn(0).eval(), mk.convert(small_cnn(1), 3, init="independent").eval()
    converted.load_state_dict(dense.state_dict(), strict=True)
    x = torch.randn(2, 3, 6, 6, generator=generator)
    with torch.no_grad():
        assert torch.equal(converted(x), dense(x))
    for copies in (converted[0].weight, converted[2].weight, converted[4].weight):
        assert copies.shape[0] == 3 and all(torch.equal(copies[0], c) for c in copies)


def test_dense_state_dict_of_a_converted_model_loads_strictly(generator):
    model = mk.convert(small_cnn(), 3, init="independent")
    x = torch.randn(2, 3, 6, 6, generator=generator)
    with torch.no_grad():
        expected = model.eval()(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    for state in (model.state_dict(), torch.load(buffer)):
        dense = mk.dense_state_dict(state)
        fresh = small_cnn(2).eval()
        fresh.load_state_dict(dense, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), expected, rtol=1e-6, atol=1e-6)
    assert model[0].weight.dim() == 5  # the model itself is unchanged
    with pytest.raises(ValueError, match="_metadata"):
        mk.dense_state_dict(dict(model.state_dict()))


def test_huggingface_save_pretrained_of_a_converted_model_reads_back_dense(tmp_path, generator):
    transformers = pytest.importorskip("transformers")
    if not transformers.is_torch_available():
        pytest.skip(f"transformers {transformers.__version__} does not support torch {torch.__version__}")
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    torch.manual_seed(0)
    model = mk.convert(transformers.GPT2LMHeadModel(config), 3)
    ids = torch.randint(0, 50, (2, 8), generator=generator)
    model.train()(ids, labels=ids).loss.backward()  # a step, so that the copies differ
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path, state_dict=mk.dense_state_dict(model.state_dict()))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- memory format, grad norm


def test_channels_last_on_a_converted_cnn(generator):
    model = mk.convert(small_cnn(), 2).eval()
    reference = small_cnn().eval().to(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    assert model[0].weight.shape == (2, 4, 3, 3, 3) and model[2].weight.is_contiguous()
    x = torch.randn(2, 3, 6, 6, generator=generator).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)
    model.train()(x).sum().backward()
    model.to(torch.float64)
    assert model[2].weight.dtype == torch.float64 and model[2].weight.grad.dtype == torch.float64


@pytest.mark.parametrize("expansion", [2, 4, 8])
def test_gradient_norm_at_replicate_init_scales_by_sqrt_2_over_e_plus_1(expansion, generator):
    dense = nn.Linear(256, 256)
    x = torch.randn(64, 256, generator=generator)
    dense(x).square().sum().backward()
    converted = mk.convert(copy.deepcopy(dense), expansion)
    converted.weight.grad = None
    converted(x).square().sum().backward()
    ratio = converted.weight.grad.norm() / dense.weight.grad.norm()
    assert ratio == pytest.approx(math.sqrt(2 / (expansion + 1)), rel=0.03)


@pytest.mark.parametrize(
    "make, shape",
    [(lambda: nn.Bilinear(3, 4, 5), None), (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2), (2, 3, 5, 5))],
    ids=["bilinear", "conv-transpose"],
)
def test_other_torch_layers_expand_in_place(make, shape, generator):
    layer = make()
    dense = copy.deepcopy(layer).eval()
    mk.convert(layer, 3, init="independent" if shape else "replicate")
    inputs = (
        (torch.randn(2, 3, generator=generator), torch.randn(2, 4, generator=generator))
        if shape is None
        else (torch.randn(shape, generator=generator),)
    )
    if shape is None:
        with torch.no_grad():
            assert torch.equal(layer.eval()(*inputs), dense(*inputs))
    layer.train()(*inputs).sum().backward()
    assert layer.weight.grad.shape == (3, *dense.weight.shape)


@pytest.mark.parametrize("layer", ["StdConv2d", "Conv2dSame", "Linear"])
def test_timm_layers_expand_in_place(layer, generator):
    timm_layers = pytest.importorskip("timm.layers", exc_type=ImportError)
    module = getattr(timm_layers, layer)(4, 6) if layer == "Linear" else getattr(timm_layers, layer)(3, 4, 3)
    dense = copy.deepcopy(module).eval()
    _, summary = mk.convert(module, 2, return_summary=True)
    assert type(module) is type(dense) and summary.weights[0].how == "expanded"
    x = torch.randn(2, 4, generator=generator) if layer == "Linear" else torch.randn(1, 3, 7, 7, generator=generator)
    with torch.no_grad():
        assert torch.equal(module.eval()(x), dense(x))
    module.train()(x).sum().backward()
    assert module.weight.grad.shape[0] == 2


def test_expand_parameters_refuses_another_expansion_on_one_owner():
    module = nn.Bilinear(2, 3, 4)
    mk.expand_parameters(module, ["weight"], 2)
    with pytest.raises(ValueError, match="already has weights expanded with expansion 2, not 3"):
        mk.expand_parameters(module, ["bias"], 3)
    assert module.bias.dim() == 1
    mk.expand_parameters(module, ["bias"], 2)
    assert module.bias.shape == (2, 4)
    module(torch.randn(5, 2), torch.randn(5, 3)).sum().backward()
    mk.collapse(module)
    assert module.weight.shape == (4, 2, 3) and module.bias.shape == (4,) and "forward" not in module.__dict__
