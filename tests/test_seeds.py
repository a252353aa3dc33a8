"""Where the layers' mixing seeds come from (docs/design.md section 5): reproducible under torch.manual_seed, the same P
in forward, backward and checkpoint recomputation, fresh P per forward and per layer, data-parallel ranks seeded
alike draw alike, and a saved RNG state restores the stream exactly."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import majority_kernels as mk
from majority_kernels import reference

F64 = dict(rtol=1e-10, atol=1e-12)
# P as a float32-accurate quantity: a different P gives O(1) relative differences, so this still tells P apart.
P_TOL = dict(rtol=1e-5, atol=1e-9)


def exact_p(expansion: int, shape, seed) -> torch.Tensor:
    """P in float64 as the float64 layers use it (the spec's reference, not the float32 P of mixing_weights)."""
    shape = tuple(shape)
    return mk.reference.mixing_weights(expansion, math.prod(shape), seed).view(expansion, *shape)


def draw_seed_like_layer(device):
    """The layers' per-step seed draw: torch.randint(0, 2^63 - 1) from the device's torch generator."""
    return torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device=device)


def seeds_drawn_by(fn, count):
    """Run fn() and return (its result, the `count` seeds the layers drew during it), checking that it drew
    exactly those from the global generator."""
    before = torch.get_rng_state()
    result = fn()
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    seeds = [draw_seed_like_layer("cpu") for _ in range(count)]
    assert torch.equal(torch.get_rng_state(), after), f"expected exactly {count} seed draws"
    return result, seeds


def mlp(dtype=torch.float64, expansion=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        mk.MKLinear(6, 8, expansion=expansion, init="independent", dtype=dtype),
        nn.Tanh(),
        mk.MKLinear(8, 5, expansion=expansion, init="independent", dtype=dtype),
        nn.Tanh(),
        mk.MKLinear(5, 2, expansion=expansion, init="independent", dtype=dtype),
    )


def convnet(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        mk.MKConv2d(2, 4, 3, padding=1, expansion=4, init="independent", dtype=dtype),
        nn.ReLU(),
        mk.MKConv1d(4, 3, 3, expansion=2, init="independent", dtype=dtype),
        nn.Flatten(),
        mk.MKLinear(3 * 3, 2, expansion=5, init="independent", dtype=dtype),
    )


def convnet_input(step, dtype=torch.float64):
    return torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1000 + step), dtype=dtype)


class ConvNetWrapper(nn.Module):
    """convnet with the 2-D output flattened into the Conv1d's length dimension."""

    def __init__(self, dtype=torch.float64, seed=0):
        super().__init__()
        self.body = convnet(dtype, seed)

    def forward(self, x):
        x = self.body[1](self.body[0](x)).flatten(2)  # [B, 4, 25]
        x = self.body[2](x)[..., :3]  # [B, 3, 3]
        return self.body[4](self.body[3](x))


def mlp_input(step):
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(step), dtype=torch.float64)


MODELS = {"mlp": (mlp, mlp_input), "convnet": (ConvNetWrapper, convnet_input)}


def train(model, make_input, steps, first_step=0, optimizer=None):
    """`steps` SGD steps on deterministic per-step inputs; the mixing seeds come from the global generator."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(first_step, first_step + steps):
        optimizer.zero_grad()
        model(make_input(step)).square().sum().backward()
        optimizer.step()
    return optimizer


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------------------ torch.manual_seed


@pytest.mark.parametrize("name", MODELS)
def test_training_reproducible_under_manual_seed(name):
    runs = []
    for _ in range(2):
        model = MODELS[name][0]()
        torch.manual_seed(42)
        train(model, MODELS[name][1], 3)
        runs.append(model)
    assert_same_state(runs[0], runs[1])


@pytest.mark.parametrize("name", MODELS)
def test_training_differs_under_other_manual_seed(name):
    runs = []
    for seed in (42, 43):
        model = MODELS[name][0]()  # same init, same data: only the mixing seeds differ
        torch.manual_seed(seed)
        train(model, MODELS[name][1], 3)
        runs.append(model)
    weights = [[p.detach().clone() for p in m.parameters() if p.dim() > 1] for m in runs]
    assert all(not torch.allclose(a, b) for a, b in zip(*weights))


def test_train_forward_follows_manual_seed(generator):
    layer = mk.MKConv2d(2, 3, 3, expansion=4, init="independent")
    x = torch.randn(1, 2, 5, 5, generator=generator)
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    second = layer(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_fork_rng_isolates_the_stream(generator):
    model = mlp()
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    torch.manual_seed(5)
    with torch.random.fork_rng():
        model(x)
        model(x)
    inside_then_outside = model(x)
    torch.manual_seed(5)
    torch.testing.assert_close(model(x), inside_then_outside, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_gradients_equal_plain(use_reentrant, name):
    make_model, make_input = MODELS[name]
    plain, ckpt = make_model(), make_model()
    x = make_input(0)
    results = []
    for model, use_checkpoint in ((plain, False), (ckpt, True)):
        torch.manual_seed(11)
        xr = x.clone().requires_grad_()
        if use_checkpoint:
            out = checkpoint(model, xr, use_reentrant=use_reentrant)
        else:
            out = model(xr)
        out.square().sum().backward()
        results.append((out.detach(), xr.grad, [p.grad for p in model.parameters()], torch.get_rng_state()))
    (out_a, gx_a, grads_a, rng_a), (out_b, gx_b, grads_b, rng_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=0)
    torch.testing.assert_close(gx_b, gx_a, rtol=0, atol=0)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=0, atol=0)
    assert torch.equal(rng_a, rng_b), "checkpointing must leave the RNG stream where the plain run leaves it"


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_of_single_layer_matches_reference(use_reentrant, generator):
    torch.manual_seed(3)
    layer = mk.MKLinear(5, 4, expansion=3, init="independent", dtype=torch.float64)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    out, (seed,) = seeds_drawn_by(lambda: checkpoint(layer, x, use_reentrant=use_reentrant), 1)
    out.backward(grad_out)
    weight = layer.weight.detach().clone().requires_grad_()
    F.linear(x.detach(), reference.combine(weight, seed), layer.bias.detach()).backward(grad_out)
    torch.testing.assert_close(layer.weight.grad, weight.grad, **F64)


# --------------------------------------------------------------------------------- forward and backward share P


@pytest.mark.parametrize("expansion", [1, 2, 3, 4, 5, 8])
def test_weight_grad_is_p_times_mixed_grad_linear(expansion, generator):
    layer = mk.MKLinear(7, 5, expansion=expansion, init="independent", dtype=torch.float64)
    x = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    out, (seed,) = seeds_drawn_by(lambda: layer(x), 1)
    out.backward(grad_out)
    p = exact_p(expansion, (5, 7), seed)
    assert p.shape == (expansion, 5, 7)
    torch.testing.assert_close(layer.weight.grad, p * (grad_out.T @ x), **P_TOL)
    torch.testing.assert_close(layer.bias.grad, grad_out.sum(0), **F64)


@pytest.mark.parametrize("expansion", [2, 5])
def test_weight_grad_is_p_times_mixed_grad_conv(expansion, generator):
    layer = mk.MKConv2d(3, 4, (3, 2), stride=2, padding=1, expansion=expansion, init="independent", dtype=torch.float64)
    x = torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    out, (seed,) = seeds_drawn_by(lambda: layer(x), 1)
    grad_out = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(grad_out)
    w_eff = reference.combine(layer.weight.detach(), seed).requires_grad_()
    (d_w_eff,) = torch.autograd.grad(F.conv2d(x, w_eff, None, 2, 1), w_eff, grad_out)
    p = exact_p(expansion, w_eff.shape, seed)
    torch.testing.assert_close(layer.weight.grad, p * d_w_eff, **P_TOL)


def test_backward_uses_forward_p_after_rng_is_consumed(generator):
    layer = mk.MKLinear(6, 3, expansion=4, init="independent", dtype=torch.float64)
    other = mk.MKLinear(6, 3, expansion=4, dtype=torch.float64)
    x = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    out, (seed,) = seeds_drawn_by(lambda: layer(x), 1)
    # consume the global stream between forward and backward
    torch.rand(1000)
    other(x)
    torch.manual_seed(123)
    grad_out = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    out.backward(grad_out)
    p = exact_p(4, (3, 6), seed)
    torch.testing.assert_close(layer.weight.grad, p * (grad_out.T @ x), **P_TOL)


def test_two_forwards_one_backward_each_keeps_its_p(generator):
    layer = mk.MKLinear(4, 3, expansion=3, init="independent", dtype=torch.float64)
    x1, x2 = (torch.randn(2, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    (y1, y2), (s1, s2) = seeds_drawn_by(lambda: (layer(x1), layer(x2)), 2)
    g1, g2 = (torch.randn(2, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    # backward in the opposite order to the forwards
    torch.autograd.backward([y2, y1], [g2, g1])
    p1 = exact_p(3, (3, 4), s1)
    p2 = exact_p(3, (3, 4), s2)
    torch.testing.assert_close(layer.weight.grad, p1 * (g1.T @ x1) + p2 * (g2.T @ x2), **P_TOL)


# ----------------------------------------------------------------------------------- fresh P per forward / layer


def test_successive_forwards_draw_different_p(generator):
    layer = mk.MKLinear(8, 8, expansion=4, init="independent", dtype=torch.float64)
    x = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    (a, b), (s1, s2) = seeds_drawn_by(lambda: (layer(x), layer(x)), 2)
    assert s1 != s2
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, F.linear(x, reference.combine(layer.weight.detach(), s1), layer.bias.detach()), **F64)
    torch.testing.assert_close(b, F.linear(x, reference.combine(layer.weight.detach(), s2), layer.bias.detach()), **F64)


def test_two_layers_in_one_model_get_different_seeds(generator):
    first = mk.MKLinear(6, 6, expansion=4, init="independent", dtype=torch.float64)
    second = copy.deepcopy(first)  # same shapes, same weights: only the seed can tell them apart

    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = first, second

        def forward(self, x):
            return self.a(x), self.b(x)

    model = Parallel()
    x = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    (ya, yb), (sa, sb) = seeds_drawn_by(lambda: model(x), 2)
    assert sa != sb
    assert not torch.allclose(ya, yb)
    torch.testing.assert_close(
        yb, F.linear(x, reference.combine(second.weight.detach(), sb), second.bias.detach()), **F64
    )


def test_seed_stream_over_many_steps_has_no_repeats(generator):
    layer = mk.MKLinear(2, 2, expansion=2, init="independent")
    x = torch.randn(1, 2, generator=generator)
    _, seeds = seeds_drawn_by(lambda: [layer(x) for _ in range(200)], 200)
    values = [int(s) for s in seeds]
    assert len(set(values)) == 200
    assert all(0 <= v < 2**63 for v in values)


# ------------------------------------------------------------------------------------------------- data parallel


def test_ranks_seeded_alike_equal_full_batch(generator):
    """Two data-parallel replicas with the same torch RNG state draw the same P: their averaged gradients equal
    the gradient of the full batch on one replica (what DDP relies on)."""
    full = mlp()
    replicas = [copy.deepcopy(full) for _ in range(2)]
    x = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    torch.manual_seed(77)
    full(x).square().mean().backward()
    for replica, shard in zip(replicas, x.chunk(2)):
        torch.manual_seed(77)
        replica(shard).square().mean().backward()
    for p_full, p0, p1 in zip(full.parameters(), *(r.parameters() for r in replicas)):
        torch.testing.assert_close((p0.grad + p1.grad) / 2, p_full.grad, **F64)


# ----------------------------------------------------------------------------------------------- save / restore


@pytest.mark.parametrize("name", MODELS)
def test_save_and_restore_continues_identically(name):
    make_model, make_input = MODELS[name]
    k, n = 2, 3
    model = make_model()
    torch.manual_seed(9)
    optimizer = train(model, make_input, k)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state())
    train(model, make_input, n, first_step=k, optimizer=optimizer)

    torch.manual_seed(12345)  # scramble the stream: only the restored state may matter
    restored = make_model(seed=1)
    restored_optimizer = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(saved[0])
    restored_optimizer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    train(restored, make_input, n, first_step=k, optimizer=restored_optimizer)
    assert_same_state(model, restored)


def test_eval_forward_does_not_touch_the_stream(generator):
    model = mlp().eval()
    x = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    state = torch.get_rng_state()
    model(x).sum().backward()
    with torch.no_grad():
        model(x)
    assert torch.equal(torch.get_rng_state(), state)
