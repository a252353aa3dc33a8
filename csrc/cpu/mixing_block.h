// CPU layout of the mixing weights: P for a block of kLanes consecutive elements at a time, so that every loop
// below runs over lanes with no branches or calls and the compiler turns it into SIMD code.
#pragma once

#include <algorithm>
#include <cstdint>

#include "majority_kernels/mixing.h"

namespace majority_kernels {
namespace cpu {

constexpr int64_t kLanes = 64;

// mix[k * kLanes + l] = P[k, first + l] for every lane, in the math type T (float, or double for float64); the
// callers ignore lanes past the end of the tensor. `words` is scratch of 4 * kLanes; `mix` holds
// expansion * kLanes values.
template <typename T>
__attribute__((always_inline)) inline void mixing_block(uint64_t seed, uint64_t offset, int64_t expansion, int64_t first, uint32_t* __restrict words, T* __restrict mix) {
  const int64_t groups = counters_per_element(expansion);
  const uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t group = 0; group < groups; ++group) {
    // The lane's 64-bit counter base + l * groups, in 32-bit halves with an explicit carry (32-bit lanes
    // vectorise; l * groups < 2^32, so at most one carry).
    const uint64_t base = element_counter(offset, static_cast<uint64_t>(first), expansion, group);
    const uint32_t base_lo = static_cast<uint32_t>(base), base_hi = static_cast<uint32_t>(base >> 32);
    const uint32_t stride = static_cast<uint32_t>(groups);
    for (int64_t l = 0; l < kLanes; ++l) {
      uint32_t c0 = base_lo + static_cast<uint32_t>(l) * stride;
      uint32_t c1 = base_hi + (c0 < base_lo ? 1u : 0u), c2 = 0, c3 = 0;
      philox4x32_10(c0, c1, c2, c3, key0, key1);
      words[l] = c0;
      words[kLanes + l] = c1;
      words[2 * kLanes + l] = c2;
      words[3 * kLanes + l] = c3;
    }
    const int64_t copies = std::min<int64_t>(4, expansion - 4 * group);
    for (int64_t j = 0; j < copies; ++j) {
      T* __restrict g = mix + (4 * group + j) * kLanes;
      const uint32_t* __restrict w = words + j * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) g[l] = exponential_from_uniform<T>(uniform_from_word(w[l]));
    }
  }
  // Normalise. A sum of exactly zero (every u == 0, probability 2^-31 per copy) gives the uniform 1/e.
  T inverse[kLanes], fallback[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) inverse[l] = mix[l];
  for (int64_t k = 1; k < expansion; ++k)
    for (int64_t l = 0; l < kLanes; ++l) inverse[l] += mix[k * kLanes + l];
  const T uniform = T(1) / static_cast<T>(expansion);
  for (int64_t l = 0; l < kLanes; ++l) {
    const bool positive = inverse[l] > T(0);
    fallback[l] = positive ? T(0) : uniform;
    inverse[l] = T(1) / (positive ? inverse[l] : T(1));
  }
  for (int64_t k = 0; k < expansion; ++k)
    for (int64_t l = 0; l < kLanes; ++l) mix[k * kLanes + l] = mix[k * kLanes + l] * inverse[l] + fallback[l];
}

}  // namespace cpu
}  // namespace majority_kernels
