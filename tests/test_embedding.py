"""Embeddings: the reference's semantics, the CPU ops' counter wrap and repeated rows (every backend against the
float64 reference is tests/test_conformance.py's), their registration (opcheck, gradcheck, torch.compile),
mk.functional.majority_embedding, MKEmbedding, convert / collapse of nn.Embedding with the tied-weight check, and
bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    CPU_BACKENDS,
    EXPANSIONS,
    FAST_CPU_BACKENDS,
    TOLERANCES,
    assert_matches_reference,
    random_indices,
    random_seed,
)
from torch import nn

import majority_kernels as mk
from majority_kernels import ops, reference

needs_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="the C++ extension is not built")
OPS = torch.ops.majority_kernels if ops.HAS_EXTENSION else None
F64 = TOLERANCES[torch.float64]

# (rows, dim, indices shape): 1, primes, dims around the kernels' 128-column blocks, 0-d and 3-d indices.
TABLE_CASES = [
    (1, 1, ()),
    (7, 3, (5,)),
    (13, 130, (2, 3)),
    (5, 257, (4,)),
    (31, 127, (3, 2, 2)),
    (3, 128, (6,)),
    (2, 129, (1, 1)),
]
TABLE_IDS = [f"{rows}x{dim}-idx{list(shape)}" for rows, dim, shape in TABLE_CASES]


def random_table(expansion, rows, dim, generator, dtype=torch.float64):
    return torch.randn(expansion, rows, dim, generator=generator, dtype=torch.float64).to(dtype)


def seed_and_offset(generator):
    return torch.tensor(random_seed(generator)), int(torch.randint(0, 2**40, (), generator=generator))


def looked_up_mask(indices, rows):
    mask = torch.zeros(rows, dtype=torch.bool)
    mask[indices.reshape(-1).long()] = True
    return mask


# ------------------------------------------------------------------------------------------- reference semantics


@pytest.mark.parametrize("expansion", [1, 3, 5])
@pytest.mark.parametrize("case", TABLE_CASES, ids=TABLE_IDS)
def test_reference_rows_equal_full_table_combine(case, expansion, generator):
    rows, dim, shape = case
    weight = random_table(expansion, rows, dim, generator).requires_grad_()
    indices = random_indices(rows, shape, generator)
    seed, offset = seed_and_offset(generator)
    full = reference.combine(weight, seed, offset)[indices]
    torch.testing.assert_close(reference.embedding_combine(weight, indices, seed, offset), full, **F64)
    grad = torch.randn(full.shape, generator=generator, dtype=torch.float64)
    (expected,) = torch.autograd.grad(full, weight, grad)
    actual = reference.embedding_scatter(grad, indices, seed, offset, expansion, rows)
    torch.testing.assert_close(actual, expected, **F64)


# ------------------------------------------------------------------- the CPU kernels: counter wrap, repeated rows


@needs_extension
def test_kernel_combine_non_contiguous_inputs_and_counter_wrap(generator):
    weight = torch.randn(3, 40, 9, generator=generator, dtype=torch.float64).transpose(1, 2)  # [3, 9, 40]
    indices = random_indices(9, (4, 6), generator)[:, ::2]
    seed = torch.tensor(2**63 - 1)
    offset = -5  # 2^64 - 5: the counters wrap past 2^64 within the table
    out = OPS.embedding_combine(weight, indices, seed, offset, None)
    assert_matches_reference(out, reference.embedding_combine(weight, indices, seed, 2**64 - 5))


@needs_extension
def test_kernel_scatter_add_repeated_indices_add_up(generator):
    """A row looked up n times gets the sum of its n gradients, each times the same P."""
    grad = torch.randn(1, 70, generator=generator, dtype=torch.float64)
    seed, offset = seed_and_offset(generator)
    once = torch.zeros(4, 5, 70, dtype=torch.float64)
    OPS.embedding_scatter_add_(once, grad, torch.tensor([3]), seed, offset)
    many = torch.zeros_like(once)
    OPS.embedding_scatter_add_(many, grad.expand(7, 70), torch.full((7,), 3), seed, offset)
    torch.testing.assert_close(many, 7 * once, **F64)
    assert torch.count_nonzero(many[:, [0, 1, 2, 4]]) == 0


# ---------------------------------------------------------------------------------- registration: opcheck, autograd


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_opcheck(dtype, index_dtype):
    weight = torch.randn(3, 6, 5, dtype=dtype, requires_grad=True)
    indices = torch.tensor([[1, 4, 1], [0, 1, 5]], dtype=index_dtype)
    seed = torch.tensor(12345)
    torch.library.opcheck(OPS.embedding_combine.default, (weight, indices, seed, 11, None))
    torch.library.opcheck(OPS.embedding_combine.default, (weight, indices, seed, 11, torch.bfloat16))
    torch.library.opcheck(
        OPS.embedding_scatter_add_.default,
        (torch.randn(3, 6, 5, dtype=dtype), torch.randn(2, 3, 5, dtype=dtype), indices, seed, 11),
    )


@needs_extension
@pytest.mark.parametrize("expansion", [1, 3, 5])
def test_gradcheck_float64(expansion):
    weight = torch.randn(expansion, 6, 5, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[1, 4, 1], [0, 1, 5]])
    seed = torch.tensor(99)
    assert torch.autograd.gradcheck(lambda w: OPS.embedding_combine(w, indices, seed, 3, None), (weight,))
    assert torch.autograd.gradgradcheck(lambda w: OPS.embedding_combine(w, indices, seed, 3, None), (weight,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("expansion", [1, 2, 4])
def test_functional_backward_matches_reference(backend, expansion, generator):
    """Through autograd: repeated indices accumulate, rows nobody looked up get exactly zero."""
    weight = random_table(expansion, 9, 33, generator).requires_grad_()
    indices = random_indices(9, (4, 5), generator)
    seed, offset = seed_and_offset(generator)
    with mk.use_backend(backend):
        out = mk.functional.majority_embedding(indices, weight, seed=seed, offset=offset)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(grad)
    assert_matches_reference(out, reference.embedding_combine(weight.detach(), indices, seed, offset))
    assert_matches_reference(weight.grad, reference.embedding_scatter(grad, indices, seed, offset, expansion, 9))
    assert torch.count_nonzero(weight.grad[:, ~looked_up_mask(indices, 9)]) == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_functional_padding_idx_row_gets_no_gradient(backend, generator):
    weight = random_table(3, 6, 4, generator).requires_grad_()
    indices = torch.tensor([[2, 5, 5], [1, 2, 0]])
    with mk.use_backend(backend):
        out = mk.functional.majority_embedding(indices, weight, padding_idx=-1, seed=7)
    out.sum().backward()
    torch.testing.assert_close(out, reference.embedding_combine(weight.detach(), indices, 7), **F64)
    assert torch.count_nonzero(weight.grad[:, 5]) == 0  # padding_idx -1 is row 5
    assert torch.count_nonzero(weight.grad[:, [0, 1, 2]]) == 3 * 3 * 4
    assert torch.count_nonzero(weight.grad[:, [3, 4]]) == 0


def test_functional_output_keeps_weight_dtype_under_autocast(generator):
    weight = random_table(2, 5, 4, generator, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mk.functional.majority_embedding(torch.tensor([0, 3]), weight, seed=1)
    assert out.dtype == torch.float32


def test_weight_modified_in_place_between_forward_and_backward_raises():
    layer = mk.MKEmbedding(5, 3, expansion=2)
    out = layer(torch.tensor([1, 2]))
    with torch.no_grad():
        layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# --------------------------------------------------------------------------------------------------- torch.compile


class TinyLM(nn.Module):
    """MKEmbedding (with a padding row) into an MKLinear and a dense head."""

    def __init__(self):
        super().__init__()
        self.embed = mk.MKEmbedding(11, 8, padding_idx=0, expansion=3)
        self.mix = mk.MKLinear(8, 8, expansion=2)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens):
        return self.head(torch.relu(self.mix(self.embed(tokens))))


def _train(model, tokens, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_compile_fullgraph_training_and_eval_match_eager(backend):
    torch._dynamo.reset()
    tokens = torch.tensor([[1, 4, 4, 0, 10], [3, 1, 0, 7, 2]])

    def make():
        torch.manual_seed(0)
        return TinyLM()

    with mk.use_backend(backend):
        eager_model, compiled_model = make(), make()
        compiled = torch.compile(compiled_model, fullgraph=True)
        torch.manual_seed(1)
        eager = _train(eager_model, tokens)
        torch.manual_seed(1)
        traced = _train(compiled, tokens)
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-6)
        for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        eager_model.eval(), compiled_model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(tokens), eager_model(tokens), rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(compiled_model.embed.weight[:, 0]) == 0  # the padding row never trained


# ------------------------------------------------------------------------------------------------------ the layer


def forward_with_seed(layer, indices):
    """layer(indices) in train mode and the seed it drew (exactly one, from the global generator)."""
    before = torch.get_rng_state()
    out = layer(indices)
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    seed = torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    assert torch.equal(torch.get_rng_state(), after), "the train forward must draw exactly one seed"
    return out, seed


def randomized_layer(expansion, rows, dim, generator, padding_idx=None, dtype=torch.float64):
    layer = mk.MKEmbedding(rows, dim, padding_idx, expansion=expansion, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(random_table(expansion, rows, dim, generator))
    return layer


def test_constructor_mirrors_dense():
    layer = mk.MKEmbedding(10, 4, padding_idx=-2, expansion=3, dtype=torch.float64)
    dense = nn.Embedding(10, 4, padding_idx=-2)
    assert (layer.num_embeddings, layer.embedding_dim, layer.padding_idx) == (10, 4, dense.padding_idx) == (10, 4, 8)
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.shape == (3, 10, 4)
    assert layer.weight.dtype == torch.float64 and layer.expansion == 3 and layer.training
    assert [name for name, _ in layer.named_parameters()] == ["weight"] and layer.bias is None
    assert all(torch.equal(layer.weight[k], layer.weight[0]) for k in range(3))  # "replicate"
    assert torch.count_nonzero(layer.weight[:, 8]) == 0  # the padding row starts at zero, as in nn.Embedding
    assert repr(layer) == "MKEmbedding(10, 4, padding_idx=8, expansion=3)"
    assert mk.MKEmbedding(5, 2).expansion == 4
    assert mk.MKEmbedding(5, 2, device="meta").weight.is_meta


@pytest.mark.parametrize("expansion", EXPANSIONS)
def test_independent_init(expansion):
    torch.manual_seed(0)
    layer = mk.MKEmbedding(4000, 16, padding_idx=3, expansion=expansion, init="independent")
    assert torch.count_nonzero(layer.weight[:, 3]) == 0
    if expansion > 1:
        assert not torch.equal(layer.weight[0], layer.weight[1])
    # N(0, 1) per copy, scaled by sqrt((e + 1) / 2): the mixed table keeps unit variance.
    mixed = reference.combine(layer.weight.detach().double(), 5)
    assert abs(mixed.var().item() - 1.0) < 0.05


@pytest.mark.parametrize("expansion", EXPANSIONS)
@pytest.mark.parametrize("shape", [(), (7,), (2, 3)], ids=str)
def test_train_forward_equals_functional_and_reference(expansion, shape, generator):
    layer = randomized_layer(expansion, 9, 6, generator)
    indices = random_indices(9, shape, generator)
    out, seed = forward_with_seed(layer, indices)
    assert out.shape == (*shape, 6)
    torch.testing.assert_close(out, mk.functional.majority_embedding(indices, layer.weight, seed=seed), rtol=0, atol=0)
    torch.testing.assert_close(out, reference.combine(layer.weight.detach(), seed)[indices], **F64)


def test_train_forwards_draw_fresh_mixing(generator):
    layer = randomized_layer(4, 5, 8, generator)
    indices = torch.tensor([1, 2])
    assert not torch.equal(layer(indices), layer(indices))


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_train_gradients_and_padding(padding_idx, generator):
    layer = randomized_layer(3, 6, 5, generator, padding_idx)
    dense = nn.Embedding(6, 5, padding_idx, dtype=torch.float64)
    indices = torch.tensor([[2, 1, 1], [4, 2, 0]])
    out, seed = forward_with_seed(layer, indices)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(grad)
    # nn.Embedding's gradient of the mixed table, spread over the copies with P.
    dense(indices).backward(grad)
    expected = reference.scatter(dense.weight.grad, seed, 0, 3)
    torch.testing.assert_close(layer.weight.grad, expected, **F64)


def test_eval_is_dense_lookup_in_mean_table(generator):
    layer = randomized_layer(3, 7, 4, generator, padding_idx=1).eval()
    indices = torch.tensor([[0, 1], [6, 6]])
    mean = layer.weight.detach().mean(0)
    with torch.no_grad():
        out = layer(indices)
        torch.testing.assert_close(out, F.embedding(indices, mean), **F64)
        torch.testing.assert_close(layer(indices), out, rtol=0, atol=0)  # eval draws nothing: deterministic
        layer.weight.add_(1.0)
        torch.testing.assert_close(layer(indices), out + 1.0, **F64)  # eval follows in-place updates


def test_eval_with_grad_flows_to_every_copy(generator):
    layer = randomized_layer(4, 5, 3, generator).eval()
    layer(torch.tensor([2])).sum().backward()
    expected = torch.zeros(4, 5, 3, dtype=torch.float64)
    expected[:, 2] = 0.25
    torch.testing.assert_close(layer.weight.grad, expected, **F64)


@pytest.mark.parametrize("method", ["to_dense", "fuse"])
@pytest.mark.parametrize("training", [True, False])
def test_to_dense_and_fuse(method, training, generator):
    layer = randomized_layer(3, 8, 5, generator, padding_idx=4).train(training)
    dense = getattr(layer, method)()
    assert type(dense) is nn.Embedding and dense.training == training
    assert (dense.num_embeddings, dense.embedding_dim, dense.padding_idx) == (8, 5, 4)
    torch.testing.assert_close(dense.weight, layer.weight.detach().mean(0), **F64)
    assert dense.weight.dtype == torch.float64


@pytest.mark.parametrize("expansion", [1, 3, 4])
def test_from_dense_replicate_eval_is_bit_exact(expansion, generator):
    dense = nn.Embedding(12, 7, padding_idx=3)
    layer = mk.MKEmbedding.from_dense(dense, expansion)
    assert layer.weight.shape == (expansion, 12, 7) and layer.padding_idx == 3 and layer.training
    indices = random_indices(12, (4, 4), generator)
    with torch.no_grad():
        assert torch.equal(layer.eval()(indices), dense(indices))
        assert torch.equal(layer.to_dense().weight, dense.weight)


def test_from_dense_expansion_1_train_equals_dense(generator):
    dense = nn.Embedding(6, 3)
    layer = mk.MKEmbedding.from_dense(dense, 1)
    indices = random_indices(6, (5,), generator)
    assert torch.equal(layer(indices), dense(indices))


REFUSED_OPTIONS = [dict(max_norm=1.0), dict(scale_grad_by_freq=True), dict(sparse=True)]


@pytest.mark.parametrize("options", REFUSED_OPTIONS, ids=lambda options: next(iter(options)))
def test_unsupported_options_are_refused(options):
    option = next(iter(options))
    with pytest.raises(ValueError, match=f"MKEmbedding does not support {option}="):
        mk.MKEmbedding(5, 3, **options)
    with pytest.raises(ValueError, match=f"MKEmbedding does not support {option}="):
        mk.MKEmbedding.from_dense(nn.Embedding(5, 3, **options))
    model = nn.Sequential(nn.Embedding(5, 3, **options))
    with pytest.raises(ValueError, match=option):
        mk.convert(model, layer_types=(nn.Embedding,))
    assert type(model[0]) is nn.Embedding


def test_from_dense_refuses_other_layer_types():
    with pytest.raises(TypeError, match="nn.modules.sparse.Embedding"):
        mk.MKEmbedding.from_dense(nn.Linear(3, 2))


# -------------------------------------------------------------------------------------------- convert / collapse


class LanguageModel(nn.Module):
    def __init__(self, tie=False):
        super().__init__()
        self.embed = nn.Embedding(13, 6, padding_idx=0)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 13, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.body(self.embed(tokens))))


TOKENS = torch.tensor([[3, 1, 0, 12], [5, 5, 2, 7]])


def test_convert_leaves_embeddings_alone_by_default():
    model = mk.convert(LanguageModel(), 2)
    assert type(model.embed) is nn.Embedding and isinstance(model.body, mk.MKLinear)


def test_convert_and_collapse_embeddings_when_asked():
    torch.manual_seed(0)
    model = LanguageModel().eval()
    original = copy.deepcopy(model)
    mk.convert(model, 3, layer_types=(nn.Embedding, nn.Linear))
    assert isinstance(model.embed, mk.MKEmbedding) and model.embed.padding_idx == 0
    assert model.embed.weight.shape == (3, 13, 6)
    with torch.no_grad():
        assert torch.equal(model(TOKENS), original(TOKENS))
    _train(model.train(), TOKENS, steps=2)
    model.eval()
    with torch.no_grad():
        trained = model(TOKENS)
    mk.collapse(model)
    assert type(model.embed) is nn.Embedding and model.embed.padding_idx == 0
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), trained)
    original.load_state_dict(model.state_dict())  # the collapsed state_dict fits the unconverted model


@pytest.mark.parametrize(
    "layer_types, expanded",
    [((nn.Linear,), False), ((nn.Embedding,), False), ((nn.Embedding, nn.Linear), True)],
    ids=["linear", "embedding", "both"],
)
@pytest.mark.filterwarnings("ignore:convert expanded no weight")  # layer_types=(nn.Embedding,) chooses nothing
def test_convert_expands_a_tied_embedding_and_head_only_together(layer_types, expanded):
    model = LanguageModel(tie=True)
    _, summary = mk.convert(model, 2, layer_types=layer_types, return_summary=True)
    assert model.head.weight is model.embed.weight
    assert isinstance(model.head, mk.MKLinear) == expanded and isinstance(model.embed, mk.MKEmbedding) == expanded
    assert isinstance(model.body, mk.MKLinear) == (nn.Linear in layer_types)
    tied = [w for w in summary.weights if "head.weight" in w.names][0]
    assert tied.converted == expanded
    if not expanded:
        assert "tied" in tied.detail or "embedding" in tied.detail


def test_convert_tied_model_with_the_tie_filtered_out():
    model = LanguageModel(tie=True)
    mk.convert(
        model, 2, layer_types=(nn.Embedding, nn.Linear), filter=lambda name, layer: name not in {"embed", "head"}
    )
    assert isinstance(model.body, mk.MKLinear) and model.head.weight is model.embed.weight


def test_convert_keeps_a_shared_embedding_module_shared():
    """One nn.Embedding module under two names is not a tie between layers: it becomes one MKEmbedding."""
    embed = nn.Embedding(5, 3)
    model = nn.ModuleDict({"encoder": embed, "decoder": embed})
    mk.convert(model, 2, layer_types=(nn.Embedding,))
    assert isinstance(model["encoder"], mk.MKEmbedding) and model["decoder"] is model["encoder"]


# ------------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [7, -1, 100])
def test_out_of_range_index(backend, bad):
    weight = torch.randn(2, 7, 3)
    with mk.use_backend(backend), pytest.raises(IndexError, match=f"index {bad}, out of range .* 7 rows"):
        mk.functional.majority_embedding(torch.tensor([[0, bad]]), weight, seed=1)
    layer = mk.MKEmbedding(7, 3, expansion=2)
    with mk.use_backend(backend), pytest.raises(IndexError, match=f"index {bad}"):
        layer(torch.tensor([bad]))


@needs_extension
def test_kernels_reject_out_of_range_index():
    seed = torch.tensor(1)
    with pytest.raises(
        IndexError,
        match=r"embedding_combine: index -3 \(at flat position 4 of indices\) is out of "
        r"range for a table of 5 rows",
    ):
        OPS.embedding_combine(torch.randn(2, 5, 3), torch.tensor([[0, 1], [2, 3], [-3, 4]]), seed, 0, None)
    with pytest.raises(IndexError, match="embedding_scatter_add_: index 5 .* 5 rows"):
        OPS.embedding_scatter_add_(torch.zeros(2, 5, 3), torch.ones(2, 3), torch.tensor([1, 5]), seed, 0)


@needs_extension
def test_kernels_reject_bad_arguments():
    seed, weight = torch.tensor(1), torch.randn(2, 5, 3)
    with pytest.raises(TypeError, match="indices must be int64 or int32, got Float"):
        OPS.embedding_combine(weight, torch.tensor([1.0]), seed, 0, None)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[expansion, rows, dim\]"):
        OPS.embedding_combine(weight[0], torch.tensor([1]), seed, 0, None)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[\*indices.shape, dim\] = \[2, 3\]"):
        OPS.embedding_scatter_add_(torch.zeros(2, 5, 3), torch.ones(2, 4), torch.tensor([1, 2]), seed, 0)
    with pytest.raises(RuntimeError, match="grad_weight must be contiguous"):
        OPS.embedding_scatter_add_(torch.zeros(2, 3, 5).transpose(1, 2), torch.ones(1, 3), torch.tensor([1]), seed, 0)
    with pytest.raises(RuntimeError, match="seed must be a one-element int64 tensor"):
        OPS.embedding_combine(weight, torch.tensor([1]), torch.tensor([1, 2]), 0, None)


def test_functional_rejects_bad_arguments():
    weight = torch.randn(2, 5, 3)
    with pytest.raises(TypeError, match="input must hold int64 or int32 indices, got torch.float32"):
        mk.functional.majority_embedding(torch.tensor([1.0]), weight, seed=1)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        mk.functional.majority_embedding([1, 2], weight, seed=1)
    with pytest.raises(ValueError, match="input and weight must be on the same device"):
        mk.functional.majority_embedding(torch.tensor([1], device="meta"), weight, seed=1)
    with pytest.raises(ValueError, match=r"weight must have shape \[expansion, num_embeddings, embedding_dim\]"):
        mk.functional.majority_embedding(torch.tensor([1]), weight[0], seed=1)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        mk.functional.majority_embedding(torch.tensor([1]), torch.ones(2, 5, 3, dtype=torch.int64), seed=1)
    with pytest.raises(ValueError, match=r"padding_idx must lie in \[-5, 5\)"):
        mk.functional.majority_embedding(torch.tensor([1]), weight, padding_idx=5, seed=1)
    with pytest.raises(TypeError, match="padding_idx must be an int"):
        mk.functional.majority_embedding(torch.tensor([1]), weight, padding_idx=1.0, seed=1)
    with pytest.raises(ValueError, match="seed must lie in"):
        mk.functional.majority_embedding(torch.tensor([1]), weight, seed=-1)
