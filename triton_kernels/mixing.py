"""The mixing weights of DESIGN.md section 4 in Triton: the only copy of the RNG math on this backend.

For flat element index i (int64) and copy k of `EXPANSION` copies, with GROUPS = ceil(EXPANSION / 4):
counter c = offset + i * GROUPS + k // 4 (int64, wrapping), u = word k % 4 of Philox4x32-10 keyed by the 64-bit
seed on the counter words (c mod 2^32, c >> 32, 0, 0) through Triton's uint_to_uniform_float (what tl.rand4x(seed,
c) gives from Triton 3.4 on), g = -log(1 - u), P = g / sum g (1 / EXPANSION where the sum is 0). Float32 math;
float64 (`MATH64`) where a kernel reads or writes float64, so that float64 results match the float64 reference (and
the CPU backend) to float64 rounding.

Two ways to apply P, both single-pass over the Philox calls: no draw is computed twice, since on large GPUs the
draws rather than the memory traffic may well bound these kernels (sm_90 builds of combine and scatter run about
200 instructions per element at e = 4).

* `mix`: sum_k P_k * w_k, evaluated as (sum_k g_k * w_k) / sum_k g_k, copy by copy in unrolled loops: no P is
  held, copies >= EXPANSION are skipped at compile time. Combine, the fused GEMM's weight tile, the embedding
  gather.
* `spread`: out[k] = P_k * value for every copy, which needs the sum before the first store. The draws of all
  copies are held at once: one row per copy group ("group rows", a leading axis of next_power_of_2(GROUPS)) and
  one tensor per Philox word. Scatter, mixing_weights, the fused dW epilogue, the embedding gradient.
"""

import triton
import triton.language as tl

from . import INTERPRETING

# What spread does with P_k * value: write it, add it to what is there, or add it atomically (several programs
# may hit the same element: the embedding gradient of repeated indices).
STORE: tl.constexpr = tl.constexpr(0)
ADD: tl.constexpr = tl.constexpr(1)
ATOMIC_ADD: tl.constexpr = tl.constexpr(2)


@triton.jit
def _log1p_nonpositive(y):
    """log1p(y) for float32 y in (-1, 0], within ~1 ulp, by the same reduction as the C++ backends
    (csrc/include/majority_kernels/mixing.h): 1 + y = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), f computed
    exactly as y * 2^-k + (2^-k - 1), and log(1 + f) = f - f^2 / 2 + f^3 p(f). Neither libdevice (absent from the
    interpreter) nor log(1 - u) (inaccurate for small u, which would bias small P) is needed."""
    z = 1.0 + y  # rounded: it only picks k
    # Adding 1 - sqrt(1/2) to the mantissa bits moves the split of the exponent from 1 to sqrt(1/2).
    z_bits = z.to(tl.uint32, bitcast=True) + (0x3F800000 - 0x3F3504F3)
    k_field = (z_bits & 0x7F800000).to(tl.int32) - (127 << 23)  # k * 2^23, k <= 0
    s = ((127 << 23) - k_field).to(tl.float32, bitcast=True)  # 2^-k
    f = y * s + (s - 1.0)
    p = 8.7003216147e-02
    p = p * f - 1.4267301559e-01
    p = p * f + 1.4914725721e-01
    p = p * f - 1.6577604413e-01
    p = p * f + 1.9963069260e-01
    p = p * f - 2.5001335144e-01
    p = p * f + 3.3333909512e-01
    log_m = f + (f * f) * (f * p - 0.5)
    return k_field.to(tl.float32) * (0.69314718056 / 8388608.0) + log_m


@triton.jit
def exponential(u, MATH64: tl.constexpr):
    """g = -log(1 - u): an Exp(1) draw from the uniform u in [0, 1), float32 (float64 if MATH64)."""
    if MATH64:
        u64 = u.to(tl.float64)
        w = 1.0 - u64
        # log1p(-u) = log(w) * -u / (w - 1) recovers what rounding w lost; w == 1 only where u == 0.
        g = tl.where(w == 1.0, u64, -tl.log(w) * (u64 / (1.0 - w)))
    else:
        g = -_log1p_nonpositive(-u)
    return g


@triton.jit
def uniforms(seed, offset, index, group, EXPANSION: tl.constexpr):
    """The four uniforms of copies 4 * group .. 4 * group + 3 at the flat element indices `index` (int64);
    `group` is an int or a tensor broadcasting against index."""
    GROUPS: tl.constexpr = (EXPANSION + 3) // 4
    counter = offset + index * GROUPS + group
    # The 64-bit counter's two halves go to Philox's first two words by hand: tl.randint4x does that only from
    # Triton 3.4 on (before, it ran a 64-bit-word Philox on int64 offsets: another stream).
    low = counter.to(tl.uint32)
    high = (counter >> 32).to(tl.uint32)
    zero = low * 0
    w0, w1, w2, w3 = tl.philox(seed, low, high, zero, zero)
    return (tl.uint_to_uniform_float(w0), tl.uint_to_uniform_float(w1), tl.uint_to_uniform_float(w2),
            tl.uint_to_uniform_float(w3))


@triton.jit
def _mix_copy(weighted, total, plain, u, copy_ptr, mask, MATH64: tl.constexpr):
    g = exponential(u, MATH64)
    w = tl.load(copy_ptr, mask=mask, other=0.0).to(total.dtype)
    return weighted + g * w, total + g, plain + w


@triton.jit
def mix(weight_ptr, copy_stride, offsets, mask, seed, offset, index, EXPANSION: tl.constexpr,
        MATH64: tl.constexpr):
    """sum_k P_k * weight_ptr[k * copy_stride + offsets] (masked loads), P_k at the flat indices `index`; in
    float32 (float64 if MATH64). offsets and index have the same shape; copy_stride is an int64 scalar."""
    GROUPS: tl.constexpr = (EXPANSION + 3) // 4
    MATH_DTYPE: tl.constexpr = tl.float64 if MATH64 else tl.float32
    weighted = tl.zeros(index.shape, MATH_DTYPE)
    total = tl.zeros(index.shape, MATH_DTYPE)
    plain = tl.zeros(index.shape, MATH_DTYPE)  # sum_k w_k, for the uniform P of a zero sum
    for group in tl.static_range(GROUPS):
        u0, u1, u2, u3 = uniforms(seed, offset, index, group, EXPANSION)
        copy_ptr = weight_ptr + (4 * group) * copy_stride + offsets
        weighted, total, plain = _mix_copy(weighted, total, plain, u0, copy_ptr, mask, MATH64)
        if 4 * group + 1 < EXPANSION:
            weighted, total, plain = _mix_copy(weighted, total, plain, u1, copy_ptr + copy_stride, mask, MATH64)
        if 4 * group + 2 < EXPANSION:
            weighted, total, plain = _mix_copy(weighted, total, plain, u2, copy_ptr + 2 * copy_stride, mask,
                                               MATH64)
        if 4 * group + 3 < EXPANSION:
            weighted, total, plain = _mix_copy(weighted, total, plain, u3, copy_ptr + 3 * copy_stride, mask,
                                               MATH64)
    return tl.where(total > 0, weighted / total, plain / EXPANSION)


@triton.jit
def _group_word(u, copy, EXPANSION: tl.constexpr, MATH64: tl.constexpr):
    return tl.where(copy < EXPANSION, exponential(u, MATH64), 0.0)


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
    flat indices `index`. offsets, mask, value and index carry a leading axis of size 1, the group-row axis."""
    GROUPS: tl.constexpr = (EXPANSION + 3) // 4
    GROUP_ROWS: tl.constexpr = triton.next_power_of_2(GROUPS)
    group = tl.arange(0, GROUP_ROWS)
    for _ in tl.static_range(len(index.shape) - 1):
        group = tl.expand_dims(group, 1)
    u0, u1, u2, u3 = uniforms(seed, offset, index, group, EXPANSION)
    # Padding rows (GROUP_ROWS > GROUPS) get copy numbers >= EXPANSION: no draws, no stores.
    first = tl.where(group < GROUPS, 4 * group, EXPANSION)
    g0 = _group_word(u0, first, EXPANSION, MATH64)
    g1 = _group_word(u1, first + 1, EXPANSION, MATH64)
    g2 = _group_word(u2, first + 2, EXPANSION, MATH64)
    g3 = _group_word(u3, first + 3, EXPANSION, MATH64)
    total = tl.expand_dims(tl.sum(g0 + g1 + g2 + g3, axis=0), 0)
    value = value.to(total.dtype)
    # P_k * value = g_k * (value / total); a zero sum (every g_k = 0) gives value / EXPANSION instead.
    ratio = tl.where(total > 0, value / total, 0.0)
    uniform = tl.where(total > 0, 0.0, value / EXPANSION)
    ptr = out_ptr + first * copy_stride + offsets
    _put(ptr, g0 * ratio + uniform, mask & (first < EXPANSION), MODE)
    _put(ptr + copy_stride, g1 * ratio + uniform, mask & (first + 1 < EXPANSION), MODE)
    _put(ptr + 2 * copy_stride, g2 * ratio + uniform, mask & (first + 2 < EXPANSION), MODE)
    _put(ptr + 3 * copy_stride, g3 * ratio + uniform, mask & (first + 3 < EXPANSION), MODE)
