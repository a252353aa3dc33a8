"""Plain-PyTorch versions of the mixing: the test oracle and the benchmark baseline.

* The spec of docs/design.md section 4 (v2: uniform spacings on Philox4x32-7) materialised in float64
  (`philox4x32`, `uniforms`, `mixing_weights`, `combine`, `scatter`): the oracle every backend is checked against,
  and the `reference` backend. Written with int64 tensor arithmetic and a sort, so it runs on any device and under
  torch.compile.
* `naive_combine`: what a user would write by hand (``exponential_()``, materialised P, autograd keeps it for the
  backward). It does not follow the spec's RNG; it is the baseline the benchmarks compare against.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPEC_VERSION = "v2"
PHILOX_ROUNDS = 7

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10


def uniforms_per_element(expansion: int) -> int:
    """m = e - 1: the spacings of e - 1 sorted uniforms are the e mixing weights."""
    return expansion - 1


def counters_per_element(expansion: int) -> int:
    """R = ceil((e - 1) / 4): one Philox call yields four uniforms."""
    return (expansion + 2) // 4


def _mulhilo(a: Tensor, b: int) -> tuple[Tensor, Tensor]:
    # a < 2^32 and b < 2^32: the int64 product wraps, but its low 64 bits (two's complement) are exact.
    product = a * b
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[Tensor, Tensor]) -> list[Tensor]:
    """Philox4x32-7 on int64 tensors holding 32-bit words; broadcasts over the counter and key tensors."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _MASK32
        k1 = (k1 + _PHILOX_W1) & _MASK32
    return [c0, c1, c2, c3]


def uniform_from_words(words: Tensor) -> Tensor:
    """Triton's uint_to_uniform_float: word as int32, negatives folded with ~x, times 4.6566127342e-10."""
    signed = torch.where(words >= 2**31, words - 2**32, words)
    folded = torch.where(signed < 0, -signed - 1, signed)
    return folded.to(torch.float32) * _UNIFORM_SCALE


def _seed_key(seed: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    return seed & _MASK32, (seed >> 32) & _MASK32


def uniforms_at(expansion: int, index: Tensor, seed: int | Tensor, offset: int = 0) -> Tensor:
    """u[j, i] of section 4 as float32 for the flat element indices `index` (int64, any shape), in draw order (not
    sorted): shape [e - 1, *index.shape]."""
    groups = counters_per_element(expansion)
    group = torch.arange(groups, dtype=torch.int64, device=index.device).view(groups, *([1] * index.dim()))
    # c = offset + i * R + j // 4 (mod 2^64), as signed int64 with wrapping adds.
    signed_offset = offset - 2**64 if offset >= 2**63 else offset
    counter = (index.to(torch.int64)[None] * groups + group) + signed_offset
    zero = torch.zeros_like(counter)
    words = philox4x32((counter & _MASK32, (counter >> 32) & _MASK32, zero, zero), _seed_key(seed, index.device))
    # words[w][g, ...] is uniform 4g + w of the element.
    stacked = torch.stack(words, dim=1).reshape(groups * 4, *index.shape)[: uniforms_per_element(expansion)]
    return uniform_from_words(stacked)


def _device_of(seed: int | Tensor, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return seed.device if isinstance(seed, Tensor) else torch.device("cpu")


def uniforms(expansion: int, numel: int, seed: int | Tensor, offset: int = 0, *, device=None) -> Tensor:
    """u[j, i] of section 4 as float32, shape [e - 1, numel]."""
    index = torch.arange(numel, dtype=torch.int64, device=_device_of(seed, device))
    return uniforms_at(expansion, index, seed, offset)


def _spacings(u: Tensor) -> Tensor:
    """The gaps of the sorted uniforms (and of 0 and 1) along dim 0, in float64, where they are exact."""
    v = torch.sort(u.to(torch.float64), dim=0).values
    edge = v.new_ones((1, *v.shape[1:]))
    return torch.diff(v, dim=0, prepend=torch.zeros_like(edge), append=edge)


def mixing_weights_at(expansion: int, index: Tensor, seed: int | Tensor, offset: int = 0) -> Tensor:
    """P[k, i] of section 4 in float64 for the flat element indices `index`: shape [expansion, *index.shape]."""
    return _spacings(uniforms_at(expansion, index, seed, offset))


def mixing_weights(expansion: int, numel: int, seed: int | Tensor, offset: int = 0, *, device=None) -> Tensor:
    """P[k, i] of section 4 in float64 (from the float32 uniforms), shape [expansion, numel]."""
    return _spacings(uniforms(expansion, numel, seed, offset, device=device))


def combine(weight: Tensor, seed: int | Tensor, offset: int = 0, out_dtype: torch.dtype | None = None) -> Tensor:
    """W_eff = sum_k P_k * W_k computed in float64 with P materialised; differentiable through autograd."""
    expansion = weight.shape[0]
    p = mixing_weights(expansion, weight[0].numel(), seed, offset, device=weight.device).view(weight.shape)
    return (p * weight.to(torch.float64)).sum(0).to(out_dtype or weight.dtype)


def scatter(
    grad: Tensor, seed: int | Tensor, offset: int, expansion: int, out_dtype: torch.dtype | None = None
) -> Tensor:
    """grad_weight[k] = P_k * grad, in float64 with P materialised."""
    p = mixing_weights(expansion, grad.numel(), seed, offset, device=grad.device)
    p = p.view(expansion, *grad.shape)
    return (p * grad.to(torch.float64)).to(out_dtype or grad.dtype)


def _row_elements(indices: Tensor, dim: int) -> Tensor:
    """The flat indices r * dim + d of the looked-up rows' elements: shape [*indices.shape, dim]."""
    columns = torch.arange(dim, dtype=torch.int64, device=indices.device)
    return indices.to(torch.int64)[..., None] * dim + columns


def embedding_combine(
    weight: Tensor, indices: Tensor, seed: int | Tensor, offset: int = 0, out_dtype: torch.dtype | None = None
) -> Tensor:
    """combine(weight)[indices] for a table weight [e, rows, dim], mixing only the looked-up rows, in float64
    with P materialised: shape [*indices.shape, dim]. Each element uses its flat index in the full table."""
    expansion, dim = weight.shape[0], weight.shape[2]
    p = mixing_weights_at(expansion, _row_elements(indices, dim), seed, offset)
    rows = weight[:, indices.to(torch.int64)].to(torch.float64)
    return (p * rows).sum(0).to(out_dtype or weight.dtype)


def embedding_scatter(
    grad: Tensor,
    indices: Tensor,
    seed: int | Tensor,
    offset: int,
    expansion: int,
    num_rows: int,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """The table gradient [e, num_rows, dim] of embedding_combine: P_k * grad added to the looked-up rows
    (repeated indices add up), zero elsewhere; float64 with P materialised."""
    dim = grad.shape[-1]
    p = mixing_weights_at(expansion, _row_elements(indices, dim), seed, offset)
    table = torch.zeros(expansion, num_rows, dim, dtype=torch.float64, device=grad.device)
    flat_rows = indices.to(torch.int64).reshape(-1)
    table.index_add_(1, flat_rows, (p * grad.to(torch.float64)).reshape(expansion, -1, dim))
    return table.to(out_dtype or grad.dtype)


def naive_combine(weight: Tensor) -> Tensor:
    """The hand-written version: P drawn with exponential_() and materialised, kept by autograd for backward."""
    g = torch.empty_like(weight).exponential_()
    p = g / g.sum(0, keepdim=True)
    return (p * weight).sum(0)
