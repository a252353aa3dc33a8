"""The mixing weights of docs/design.md section 4 (spec v2) in Triton: the only copy of the RNG math on this backend.

For flat element index i (int64) and `EXPANSION` = e copies: m = e - 1 uniforms per element, R = ceil(m / 4)
counters; uniform j is word j % 4 of Philox4x32-7 keyed by the 64-bit seed on the counter words
(c mod 2^32, c >> 32, 0, 0), c = offset + i * R + j // 4 (int64, wrapping), through Triton's
uint_to_uniform_float. P is the spacings of the sorted uniforms: P_0 = v_0, P_k = v_k - v_{k-1}, P_{e-1} =
1 - v_{m-1}. e = 1 draws nothing (P = 1). The gaps are taken in float32, float64 (`MATH64`) where a kernel reads or
writes float64 (there they are exact), so float64 results match the float64 reference to float64 rounding.

Two ways to apply P, each a single pass over the draws:

* `mix`: sum_k P_k * w_k, copy by copy. Combine, the fused GEMM's weight tile, the embedding gather.
* `spread`: out[k] = P_k * value for every copy (written, added, or added atomically). Scatter, mixing_weights,
  the fused dW epilogue, the embedding gradient.

Expansions up to MAX_FIXED_EXPANSION sort their m <= 8 uniforms in registers with an unrolled sorting network
(each uniform a tensor of its own: Triton 3.0 has no arrays of tensors). Larger ones take the generic form: each
uniform's rank among the element's uniforms and the largest one ranked below it give its gap and the copy it
belongs to, in loops over the counters; slower (O(m^2) compares, O(R^2) Philox calls per element), but exact and
for any e.
"""

import triton
import triton.language as tl

from . import INTERPRETING

# What spread does with P_k * value: write it, add it to what is there, or add it atomically (several programs
# may hit the same element: the embedding gradient of repeated indices).
STORE: tl.constexpr = tl.constexpr(0)
ADD: tl.constexpr = tl.constexpr(1)
ATOMIC_ADD: tl.constexpr = tl.constexpr(2)

PHILOX_ROUNDS: tl.constexpr = tl.constexpr(7)
# The largest expansion with the sorting network (as kMaxFixedExpansion in the C++ header).
MAX_FIXED_EXPANSION: tl.constexpr = tl.constexpr(9)


@triton.jit
def group_uniforms(seed, offset, index, group, EXPANSION: tl.constexpr):
    """The four uniforms of counter group `group` (uniforms 4 * group .. 4 * group + 3) at the flat element
    indices `index` (int64)."""
    COUNTERS: tl.constexpr = (EXPANSION + 2) // 4
    counter = offset + index * COUNTERS + group
    # The 64-bit counter's two halves go to Philox's first two words by hand: tl.randint4x does that only from
    # Triton 3.4 on (before, it ran a 64-bit-word Philox on int64 offsets: another stream).
    low = counter.to(tl.uint32)
    high = (counter >> 32).to(tl.uint32)
    zero = low * 0
    w0, w1, w2, w3 = tl.philox(seed, low, high, zero, zero, n_rounds=PHILOX_ROUNDS)
    return (tl.uint_to_uniform_float(w0), tl.uint_to_uniform_float(w1), tl.uint_to_uniform_float(w2),
            tl.uint_to_uniform_float(w3))


@triton.jit
def _exchange(a, b):
    return tl.minimum(a, b), tl.maximum(a, b)


@triton.jit
def _sorted_uniforms(seed, offset, index, M: tl.constexpr):
    """v0 <= ... <= v7: the element's M <= 8 uniforms sorted (the wires from M up hold 1.0 and are never read).
    Batcher's odd-even merge sort on M wires, as the C++ header's for_each_comparator(M) lists it: the network on 8
    wires, each comparator guarded by the condition under which that listing has it."""
    v0, v1, v2, v3 = group_uniforms(seed, offset, index, 0, M + 1)
    if M > 4:
        v4, v5, v6, v7 = group_uniforms(seed, offset, index, 1, M + 1)
    else:
        v4 = tl.full(v0.shape, 1.0, tl.float32)
        v5 = v4
        v6 = v4
        v7 = v4
    if M > 1:
        v0, v1 = _exchange(v0, v1)
    if M > 3:
        v2, v3 = _exchange(v2, v3)
    if M > 5:
        v4, v5 = _exchange(v4, v5)
    if M > 7:
        v6, v7 = _exchange(v6, v7)
    if M > 2:
        v0, v2 = _exchange(v0, v2)
    if M > 3:
        v1, v3 = _exchange(v1, v3)
    if M > 6:
        v4, v6 = _exchange(v4, v6)
    if M > 7:
        v5, v7 = _exchange(v5, v7)
    if M > 2:
        v1, v2 = _exchange(v1, v2)
    if M > 6:
        v5, v6 = _exchange(v5, v6)
    if M > 4:
        v0, v4 = _exchange(v0, v4)
    if M > 5:
        v1, v5 = _exchange(v1, v5)
    if M > 6:
        v2, v6 = _exchange(v2, v6)
    if M > 7:
        v3, v7 = _exchange(v3, v7)
    if M > 4:
        v2, v4 = _exchange(v2, v4)
    if M > 5:
        v3, v5 = _exchange(v3, v5)
    if M > 4:
        v1, v2 = _exchange(v1, v2)
    if M > 4:
        v3, v4 = _exchange(v3, v4)
    if M > 6:
        v5, v6 = _exchange(v5, v6)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _pick(a: tl.constexpr, x0, x1, x2, x3):
    if a == 0:
        x = x0
    elif a == 1:
        x = x1
    elif a == 2:
        x = x2
    else:
        x = x3
    return x


@triton.jit
def _wire(k: tl.constexpr, M: tl.constexpr, v0, v1, v2, v3, v4, v5, v6, v7):
    """v_k of the sorted uniforms, with v_m = 1 (k is a compile-time wire number in [0, M])."""
    if k == M:
        value = tl.full(v0.shape, 1.0, tl.float32)
    elif k < 4:
        value = _pick(k, v0, v1, v2, v3)
    else:
        value = _pick(k - 4, v4, v5, v6, v7)
    return value


@triton.jit
def _math(x, MATH64: tl.constexpr):
    if MATH64:
        x = x.to(tl.float64)
    return x


@triton.jit
def _fixed_gap(k: tl.constexpr, M: tl.constexpr, v0, v1, v2, v3, v4, v5, v6, v7, MATH64: tl.constexpr):
    """P_k = v_k - v_{k-1} (v_{-1} = 0, v_m = 1) in the math type."""
    upper = _math(_wire(k, M, v0, v1, v2, v3, v4, v5, v6, v7), MATH64)
    if k == 0:
        gap = upper
    else:
        gap = upper - _math(_wire(k - 1, M, v0, v1, v2, v3, v4, v5, v6, v7), MATH64)
    return gap


@triton.jit
def _rank_step(rank, below, uj, j, ui0, ui1, ui2, ui3, first_i, M: tl.constexpr):
    """Adds to the rank of uniform j (value uj) the uniforms first_i .. first_i + 3 ranked below it (smaller, or
    equal with a smaller number) and keeps the largest of them in `below`."""
    for b in tl.static_range(4):
        ui = _pick(b, ui0, ui1, ui2, ui3)
        i = first_i + b
        ranked_below = (i < M) & ((ui < uj) | ((ui == uj) & (i < j)))
        rank += ranked_below.to(tl.int32)
        below = tl.where(ranked_below & (ui > below), ui, below)
    return rank, below


@triton.jit
def _ranks(seed, offset, index, group_j, EXPANSION: tl.constexpr):
    """For the uniforms 4 * group_j + a (a < 4) of the generic form: their ranks and the largest uniform ranked
    below each (see the module docstring); uniforms past m get meaningless values, which callers mask."""
    M: tl.constexpr = EXPANSION - 1
    COUNTERS: tl.constexpr = (EXPANSION + 2) // 4
    uj0, uj1, uj2, uj3 = group_uniforms(seed, offset, index, group_j, EXPANSION)
    zero_rank = tl.zeros(index.shape, tl.int32)
    zero = tl.zeros(index.shape, tl.float32)
    r0, r1, r2, r3, b0, b1, b2, b3 = zero_rank, zero_rank, zero_rank, zero_rank, zero, zero, zero, zero
    j = group_j * 4
    for group_i in range(0, COUNTERS):
        ui0, ui1, ui2, ui3 = group_uniforms(seed, offset, index, group_i, EXPANSION)
        first_i = group_i * 4
        r0, b0 = _rank_step(r0, b0, uj0, j, ui0, ui1, ui2, ui3, first_i, M)
        r1, b1 = _rank_step(r1, b1, uj1, j + 1, ui0, ui1, ui2, ui3, first_i, M)
        r2, b2 = _rank_step(r2, b2, uj2, j + 2, ui0, ui1, ui2, ui3, first_i, M)
        r3, b3 = _rank_step(r3, b3, uj3, j + 3, ui0, ui1, ui2, ui3, first_i, M)
    return uj0, uj1, uj2, uj3, r0, r1, r2, r3, b0, b1, b2, b3


@triton.jit
def mix(weight_ptr, copy_stride, offsets, mask, seed, offset, index, EXPANSION: tl.constexpr,
        MATH64: tl.constexpr):
    """sum_k P_k * weight_ptr[k * copy_stride + offsets] (masked loads), P_k at the flat indices `index`; in
    float32 (float64 if MATH64). offsets and index have the same shape; copy_stride is an int64 scalar."""
    M: tl.constexpr = EXPANSION - 1
    MATH_DTYPE: tl.constexpr = tl.float64 if MATH64 else tl.float32
    if M == 0:
        acc = tl.load(weight_ptr + offsets, mask=mask, other=0.0).to(MATH_DTYPE)
    elif EXPANSION <= MAX_FIXED_EXPANSION:
        v0, v1, v2, v3, v4, v5, v6, v7 = _sorted_uniforms(seed, offset, index, M)
        acc = tl.zeros(index.shape, MATH_DTYPE)
        for k in tl.static_range(EXPANSION):
            w = tl.load(weight_ptr + k * copy_stride + offsets, mask=mask, other=0.0).to(MATH_DTYPE)
            acc += _fixed_gap(k, M, v0, v1, v2, v3, v4, v5, v6, v7, MATH64) * w
    else:
        COUNTERS: tl.constexpr = (EXPANSION + 2) // 4
        acc = tl.zeros(index.shape, MATH_DTYPE)
        largest = tl.zeros(index.shape, tl.float32)
        for group_j in range(0, COUNTERS):
            uj0, uj1, uj2, uj3, r0, r1, r2, r3, b0, b1, b2, b3 = _ranks(seed, offset, index, group_j, EXPANSION)
            for a in tl.static_range(4):
                real = group_j * 4 + a < M
                uj = _pick(a, uj0, uj1, uj2, uj3)
                w = tl.load(weight_ptr + _pick(a, r0, r1, r2, r3) * copy_stride + offsets, mask=mask & real,
                            other=0.0).to(MATH_DTYPE)
                acc += tl.where(real, (_math(uj, MATH64) - _math(_pick(a, b0, b1, b2, b3), MATH64)) * w, 0.0)
                largest = tl.where(real & (uj > largest), uj, largest)
        last = tl.load(weight_ptr + M * copy_stride + offsets, mask=mask, other=0.0).to(MATH_DTYPE)
        acc += (1.0 - _math(largest, MATH64)) * last
    return acc


# The interpreter narrows float32 to bfloat16 by truncation (and float64 to bfloat16 wrongly): there the
# kernels round in software instead, to nearest even as the GPU does.
_SOFTWARE_BF16: tl.constexpr = tl.constexpr(INTERPRETING)


@triton.jit
def _bfloat16_nearest_even(x):
    bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    value = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x == x, value, ((bits >> 16) | 0x40).to(tl.uint16).to(tl.bfloat16, bitcast=True))  # quiet NaN


@triton.jit
def cast_to(value, dtype: tl.constexpr):
    """value as dtype, rounded to nearest even (also under the interpreter)."""
    if _SOFTWARE_BF16 and dtype == tl.bfloat16:
        return _bfloat16_nearest_even(value)
    return value.to(dtype)


@triton.jit
def _put(ptr, value, mask, MODE: tl.constexpr):
    if MODE == ATOMIC_ADD:
        tl.atomic_add(ptr, value.to(ptr.dtype.element_ty), mask=mask, sem="relaxed")
    elif MODE == ADD:
        existing = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, cast_to(existing.to(value.dtype) + value, ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr, cast_to(value, ptr.dtype.element_ty), mask=mask)


@triton.jit
def spread(out_ptr, copy_stride, offsets, mask, value, seed, offset, index, EXPANSION: tl.constexpr,
           MATH64: tl.constexpr, MODE: tl.constexpr):
    """out_ptr[k * copy_stride + offsets] (=, += or atomic +=, per MODE) P_k * value for every copy k, P_k at the
    flat indices `index` (offsets, mask, value and index of one shape)."""
    M: tl.constexpr = EXPANSION - 1
    MATH_DTYPE: tl.constexpr = tl.float64 if MATH64 else tl.float32
    value = value.to(MATH_DTYPE)
    if M == 0:
        _put(out_ptr + offsets, value, mask, MODE)
    elif EXPANSION <= MAX_FIXED_EXPANSION:
        v0, v1, v2, v3, v4, v5, v6, v7 = _sorted_uniforms(seed, offset, index, M)
        for k in tl.static_range(EXPANSION):
            _put(out_ptr + k * copy_stride + offsets, _fixed_gap(k, M, v0, v1, v2, v3, v4, v5, v6, v7, MATH64) * value,
                 mask, MODE)
    else:
        COUNTERS: tl.constexpr = (EXPANSION + 2) // 4
        largest = tl.zeros(index.shape, tl.float32)
        for group_j in range(0, COUNTERS):
            uj0, uj1, uj2, uj3, r0, r1, r2, r3, b0, b1, b2, b3 = _ranks(seed, offset, index, group_j, EXPANSION)
            for a in tl.static_range(4):
                real = group_j * 4 + a < M
                uj = _pick(a, uj0, uj1, uj2, uj3)
                gap = _math(uj, MATH64) - _math(_pick(a, b0, b1, b2, b3), MATH64)
                _put(out_ptr + _pick(a, r0, r1, r2, r3) * copy_stride + offsets, gap * value, mask & real, MODE)
                largest = tl.where(real & (uj > largest), uj, largest)
        _put(out_ptr + M * copy_stride + offsets, (1.0 - _math(largest, MATH64)) * value, mask, MODE)
