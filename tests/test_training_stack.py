"""MK layers inside the training tools users already have: torch.compile, autocast + GradScaler, gradient
accumulation, activation checkpointing, checkpoint/resume, CUDA graphs, and faults (NaN/Inf, in-place changes).

Data-parallel runs are in test_distributed.py, real third-party models in test_real_models.py."""

import copy

import pytest
import torch
from helpers import FAST_CPU_BACKENDS, ParameterSizedAllocations
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import majority_kernels as mk

CUDA = torch.device("cuda")


def small_model(expansion: int = 3, device: str = "cpu") -> nn.Module:
    """A conv + linear model, converted: every MK layer type a training step meets."""
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 3)
    )
    return mk.convert(dense, expansion=expansion, init="independent").to(device)


def batch(n: int = 8, device: str = "cpu", seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return x.to(device), y.to(device)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, first: int = 0) -> list[float]:
    losses = []
    for step in range(first, first + steps):
        x, y = batch(seed=step)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_same_parameters(a: nn.Module, b: nn.Module, **tolerance) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}", **(tolerance or dict(rtol=0, atol=0)))


# ------------------------------------------------------------------------------------------------ torch.compile


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_compiled_model_trains_and_evaluates_like_eager(backend):
    torch._dynamo.reset()
    with mk.use_backend(backend):
        eager, compiled_model = small_model(), small_model()
        compiled = torch.compile(compiled_model, fullgraph=True)  # fullgraph: a graph break is an error
        opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
        opt_compiled = torch.optim.SGD(compiled_model.parameters(), lr=0.1)
        torch.manual_seed(5)
        eager_losses = train_steps(eager, opt_eager, 3)
        torch.manual_seed(5)
        compiled_losses = train_steps(compiled, opt_compiled, 3)
        x, _ = batch(seed=99)
        eager.eval(), compiled.eval()
        with torch.no_grad():
            eager_out, compiled_out = eager(x), compiled(x)
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    assert_same_parameters(eager, compiled_model, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- mixed precision


class OpLog(TorchDispatchMode):
    """Records (op, output dtypes, output sizes) of every op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[torch.dtype], list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        self.calls.append((str(func.overloadpacket), [t.dtype for t in outs], [t.numel() for t in outs]))
        return out


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_autocast_bfloat16_mixes_straight_into_bfloat16(backend):
    layer = mk.MKLinear(16, 8, expansion=4).train()
    x = torch.randn(5, 16)
    log = OpLog()
    with mk.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16), log:
        out = layer(x)
    # The op that mixes: combine, or the Triton GEMM that mixes while it loads the weight (small M).
    mixing = [call for call in log.calls if call[0].endswith(("::combine", ".combine", "mixed_matmul"))]
    assert mixing and all(dtypes == [torch.bfloat16] for _, dtypes, _ in mixing), log.calls
    # W_eff is made once, in bfloat16: no float32 W_eff cast afterwards.
    assert not [
        c
        for c in log.calls
        if c[0] == "aten._to_copy" and c[2] == [layer.weight[0].numel()] and c[1] == [torch.bfloat16]
    ]
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()


def test_autocast_bfloat16_gradients_match_float32(generator):
    model = small_model()
    x, y = batch()
    reference = copy.deepcopy(model)
    torch.manual_seed(3)
    nn.functional.cross_entropy(reference(x), y).backward()
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=0.1, atol=2e-2)


def _scaler_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, dtype: torch.dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    with torch.autocast(device, dtype=dtype):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale()


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_grad_scaler_skips_a_step_with_non_finite_gradients_like_dense(poison):
    x, y = batch()
    x[0, 0, 0, 0] = poison
    for model in (small_model(), mk.collapse(small_model())):  # MK and its dense twin behave alike
        before = copy.deepcopy(model)
        scale = _scaler_step(model, x, y, "cpu", torch.bfloat16)
        assert scale == 2.0**9  # the scale backs off
        assert_same_parameters(model, before)  # and the step is skipped


def test_grad_scaler_steps_with_finite_gradients():
    model = small_model()
    before = copy.deepcopy(model)
    scale = _scaler_step(model, *batch(), "cpu", torch.bfloat16)
    assert scale == 2.0**10
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_and_grad_scaler_on_gpu(dtype):
    model = small_model(device="cuda")
    x, y = batch(device="cuda")
    assert _scaler_step(model, x, y, "cuda", dtype) == 2.0**10
    x[0, 0, 0, 0] = float("inf")
    before = copy.deepcopy(model)
    assert _scaler_step(model, x, y, "cuda", dtype) == 2.0**9
    assert_same_parameters(model, before)


# --------------------------------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize(
    "make_layer, make_input",
    [
        (lambda: mk.MKLinear(7, 5, expansion=3), lambda: torch.randn(4, 7)),
        (lambda: mk.MKConv2d(2, 3, 3, expansion=5), lambda: torch.randn(2, 2, 6, 6)),
        # Repeated rows: the looked-up rows only are added into .grad.
        (lambda: mk.MKEmbedding(40, 6, expansion=3), lambda: torch.randint(0, 40, (3, 4))),
    ],
    ids=["linear", "conv2d", "embedding"],
)
def test_gradient_accumulation_in_place_equals_sum_of_steps(backend, make_layer, make_input):
    layer = make_layer()
    inputs = [make_input() for _ in range(3)]
    with mk.use_backend(backend):
        state = torch.get_rng_state()
        separate = []
        for x in inputs:
            layer.zero_grad(set_to_none=True)
            layer(x).square().sum().backward()
            separate.append(layer.weight.grad.clone())
        torch.set_rng_state(state)
        layer.zero_grad(set_to_none=True)
        grad_storage = None
        for i, x in enumerate(inputs):
            allocations = ParameterSizedAllocations(layer.weight.numel())
            with allocations:
                layer(x).square().sum().backward()
            if i == 0:
                grad_storage = layer.weight.grad.data_ptr()
            else:  # every later backward adds into the same .grad, with no e x |W| temporary
                assert allocations.ops == [], allocations.ops
                assert layer.weight.grad.data_ptr() == grad_storage
    torch.testing.assert_close(layer.weight.grad, sum(separate))


def test_gradient_accumulation_leaves_autograd_grad_alone():
    """torch.autograd.grad returns the gradient and must not touch an existing .grad."""
    layer = mk.MKLinear(6, 4, expansion=2)
    x = torch.randn(3, 6)
    layer(x).sum().backward()
    kept = layer.weight.grad.clone()
    torch.manual_seed(4)
    (grad,) = torch.autograd.grad(layer(x).sum(), layer.weight)
    assert torch.equal(layer.weight.grad, kept)
    torch.manual_seed(4)
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()
    torch.testing.assert_close(grad, layer.weight.grad)


def test_gradient_accumulation_runs_post_accumulate_hooks_with_the_total():
    layer = mk.MKLinear(6, 4, expansion=2)
    seen = []
    layer.weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    for _ in range(2):
        layer(torch.randn(3, 6)).sum().backward()
    assert len(seen) == 2 and torch.equal(seen[1], layer.weight.grad)


# ----------------------------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointed_model_gradients_equal_plain(use_reentrant):
    plain, checkpointed = small_model(), small_model()
    x, y = batch()
    x.requires_grad_()
    torch.manual_seed(8)
    nn.functional.cross_entropy(plain(x), y).backward()
    torch.manual_seed(8)
    out = checkpoint(checkpointed, x, use_reentrant=use_reentrant)
    nn.functional.cross_entropy(out, y).backward()
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- state and resume


def test_state_dict_round_trip():
    model = small_model()
    other = small_model(expansion=3)
    for p in other.parameters():
        nn.init.normal_(p)
    other.load_state_dict(model.state_dict())
    assert_same_parameters(model, other)
    assert set(model.state_dict()) == set(other.state_dict())


def test_resume_from_a_saved_checkpoint_equals_uninterrupted_run(tmp_path):
    k, n = 3, 4
    torch.manual_seed(21)
    uninterrupted = small_model()
    optimizer = torch.optim.Adam(uninterrupted.parameters(), lr=1e-2)
    torch.manual_seed(21)
    expected = train_steps(uninterrupted, optimizer, k + n)

    torch.manual_seed(21)
    stopped = small_model()
    stopped_optimizer = torch.optim.Adam(stopped.parameters(), lr=1e-2)
    torch.manual_seed(21)
    first = train_steps(stopped, stopped_optimizer, k)
    torch.save(
        {"model": stopped.state_dict(), "optimizer": stopped_optimizer.state_dict(), "rng": torch.get_rng_state()},
        tmp_path / "checkpoint.pt",
    )
    del stopped, stopped_optimizer

    torch.manual_seed(999)  # a new process: only the checkpoint may matter
    saved = torch.load(tmp_path / "checkpoint.pt")
    resumed = small_model()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    rest = train_steps(resumed, resumed_optimizer, n, first=k)
    assert first + rest == expected
    assert_same_parameters(resumed, uninterrupted)


# -------------------------------------------------------------------------------------------------- CUDA graphs


@pytest.mark.gpu
def test_cuda_graph_training_step_draws_fresh_mixing_and_matches_eager():
    """A whole step (forward, backward, optimizer) captured once and replayed: each replay draws new seeds from
    the CUDA generator's graph-safe state, and equals the eager step that uses the same seeds."""
    model = small_model(device="cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    static_x, static_y = batch(device="cuda")
    states = []

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = nn.functional.cross_entropy(model(static_x), static_y)
        loss.backward()
        optimizer.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up outside the graph (lazy init, autotuning)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    eager_model = copy.deepcopy(model)
    eager_optimizer = torch.optim.SGD(eager_model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        state = torch.cuda.get_rng_state()
        graph.replay()
        losses.append(static_loss.item())
        torch.cuda.set_rng_state(state)  # the eager step draws the seeds the replay drew
        eager_optimizer.zero_grad()
        eager_loss = nn.functional.cross_entropy(eager_model(static_x), static_y)
        eager_loss.backward()
        eager_optimizer.step()
        torch.testing.assert_close(static_loss, eager_loss, rtol=1e-5, atol=1e-6)
        assert_same_parameters(model, eager_model, rtol=1e-5, atol=1e-6)
        states.append(torch.cuda.get_rng_state())
    assert len({tuple(s.tolist()) for s in states}) == 3  # every replay consumed fresh random numbers


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_inputs_propagate_like_dense(poison):
    dense = nn.Linear(6, 4)
    layer = mk.MKLinear.from_dense(dense, expansion=3)
    x = torch.randn(5, 6)
    x[2, 1] = poison
    for training in (True, False):
        layer.train(training)
        out, expected = layer(x), dense(x)
        assert torch.equal(torch.isfinite(out), torch.isfinite(expected))
        out.sum().backward()
        assert not torch.isfinite(layer.weight.grad).all()  # the poisoned column's gradient is not masked
        layer.zero_grad()


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_weight_copy_propagates(poison):
    layer = mk.MKLinear(6, 4, expansion=3)
    with torch.no_grad():
        layer.weight[1, 2, 3] = poison
    x = torch.randn(5, 6)
    for training in (True, False):
        layer.train(training)
        out = layer(x)
        assert not torch.isfinite(out[:, 2]).any()  # the poisoned output unit, for every row
        assert torch.isfinite(out[:, [0, 1, 3]]).all()


def test_weight_modified_in_place_between_forward_and_backward_raises():
    layer = mk.MKLinear(6, 4, expansion=3)
    out = layer(torch.randn(5, 6))
    with torch.no_grad():
        layer.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_index_math_beyond_two_to_the_31_elements():
    """The spec's counters for flat indices past 2^31: P of element i equals P of element 0 with the offset moved by
    i * R counters (the kernels' own 64-bit indexing at that scale is the GPU test below)."""
    expansion = 6  # 5 uniforms: R = 2 counters per element
    index = torch.tensor([2**31 - 1, 2**31, 2**32 + 7, 2**40 + 3], dtype=torch.int64)
    by_index = mk.reference.uniforms_at(expansion, index, 123, offset=11)
    by_offset = torch.stack(
        [mk.reference.uniforms(expansion, 1, 123, offset=11 + int(i) * 2)[:, 0] for i in index], dim=1
    )
    assert torch.equal(by_index, by_offset)


@pytest.mark.gpu
def test_combine_and_scatter_beyond_two_to_the_31_elements_on_gpu():
    numel = 2**31 + 257
    weight = torch.randn(2, numel, device=CUDA, dtype=torch.bfloat16)  # 8.6 GB
    seed = torch.tensor(5, device=CUDA)
    index = torch.tensor([0, 2**31 - 1, 2**31, 2**31 + 1, numel - 1], device=CUDA)
    p = mk.reference.mixing_weights_at(2, index, seed, 3)
    mixed = mk.functional.combine(weight, seed, offset=3)
    expected = (p * weight[:, index].double()).sum(0)
    torch.testing.assert_close(mixed[index].double(), expected, rtol=1.6e-2, atol=1e-2)
    del weight
    copies = mk.functional.scatter(mixed, seed, 3, 2)
    torch.testing.assert_close(copies[:, index].double(), p * mixed[index].double(), rtol=1.6e-2, atol=1e-2)
