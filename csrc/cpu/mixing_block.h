// The CPU kernels proper, for one instruction set: included once by each of kernels_{avx512,avx2,portable}.cpp,
// after they choose the instruction set (see simd_word.h), and only there (see kernel_table.h for why).
//
// Work goes in blocks of kLanes consecutive elements: Philox for the block's counters with the vector Word, then
// loops over the lanes with no branches or calls, which the compiler vectorises for the chosen instruction set.
#pragma once

#include "kernel_table.h"
#include "simd_word.h"

namespace majority_kernels {
namespace cpu {
namespace MK_CPU_CAPABILITY {

static_assert(kLanes % kWordLanes == 0, "a block is a whole number of Words");

// Calls use(k, l, g) for every copy k and lane l of the block at `first`, where g is the Exp(1) draw g_k of
// element first + l (section 4, before the normalisation) in the math type T. Copies come in increasing k.
template <typename T, typename Use>
MK_CPU_INLINE void for_each_draw(const MixingArgs& args, int64_t first, const Use& use) {
  const int64_t groups = counters_per_element(args.expansion);
  const Word key0 = broadcast(static_cast<uint32_t>(args.seed));
  const Word key1 = broadcast(static_cast<uint32_t>(args.seed >> 32));
  alignas(64) uint32_t words[4][kLanes];
  for (int64_t group = 0; group < groups; ++group) {
    // Lane l's counter is base + l * groups (64-bit; `counters` carries into the high word where a block
    // crosses a multiple of 2^32).
    const uint64_t base = element_counter(args.offset, static_cast<uint64_t>(first), args.expansion, group);
    for (int64_t l = 0; l < kLanes; l += kWordLanes) {
      Word c0, c1, c2 = broadcast(0), c3 = broadcast(0);
      counters(base + static_cast<uint64_t>(l * groups), static_cast<uint32_t>(groups), c0, c1);
      philox4x32_10(c0, c1, c2, c3, key0, key1);
      store(words[0] + l, c0);
      store(words[1] + l, c1);
      store(words[2] + l, c2);
      store(words[3] + l, c3);
    }
    const int64_t copies = args.expansion - 4 * group < 4 ? args.expansion - 4 * group : 4;
    for (int64_t j = 0; j < copies; ++j)
      for (int64_t l = 0; l < kLanes; ++l)
        use(4 * group + j, l, exponential_from_uniform<T>(uniform_from_word(words[j][l])));
  }
}

// mix[k * kLanes + l] = P[k, first + l].
template <typename T>
MK_CPU_INLINE void mixing_block(const MixingArgs& args, int64_t first, T* __restrict mix) {
  alignas(64) T sum[kLanes] = {};
  for_each_draw<T>(args, first, [&](int64_t k, int64_t l, T g) {
    mix[k * kLanes + l] = g;
    sum[l] += g;
  });
  // A sum of exactly zero (every u == 0, probability 2^-31 per copy) gives the uniform 1/e.
  alignas(64) T inverse[kLanes], fallback[kLanes];
  const T uniform = T(1) / static_cast<T>(args.expansion);
  for (int64_t l = 0; l < kLanes; ++l) {
    const bool positive = sum[l] > T(0);
    fallback[l] = positive ? T(0) : uniform;
    inverse[l] = T(1) / (positive ? sum[l] : T(1));
  }
  for (int64_t k = 0; k < args.expansion; ++k)
    for (int64_t l = 0; l < kLanes; ++l) mix[k * kLanes + l] = mix[k * kLanes + l] * inverse[l] + fallback[l];
}

// out[i] = sum_k P[k, i] * weight[k * numel + i] for the block's elements i, as (sum_k g_k w_k) / (sum_k g_k):
// P is never stored.
MK_CPU_INLINE void combine_block(const MixingArgs& args, const float* __restrict weight, int64_t numel,
                                 float* __restrict out, int64_t first) {
  const float* __restrict w = weight + first;
  alignas(64) float sum[kLanes] = {}, acc[kLanes] = {};
  for_each_draw<float>(args, first, [&](int64_t k, int64_t l, float g) {
    sum[l] += g;
    acc[l] += g * w[k * numel + l];
  });
  int zero_sums = 0;  // an int, not a bool: the loop vectorises
  for (int64_t l = 0; l < kLanes; ++l) {
    out[first + l] = acc[l] / sum[l];
    zero_sums += sum[l] > 0.0f ? 0 : 1;
  }
  if (zero_sums != 0) {  // some lane drew u == 0 for every copy (probability 2^-31 per copy): P = 1/e there
    for (int64_t l = 0; l < kLanes; ++l) {
      if (sum[l] > 0.0f) continue;
      float total = 0.0f;
      for (int64_t k = 0; k < args.expansion; ++k) total += w[k * numel + l];
      out[first + l] = total / static_cast<float>(args.expansion);
    }
  }
}

// grad_weight[k * numel + i] (+)= P[k, i] * grad[i] for the block's elements i; `draws` holds expansion * kLanes.
template <bool kAccumulate>
MK_CPU_INLINE void scatter_block(const MixingArgs& args, const float* __restrict grad, int64_t numel,
                                 float* __restrict grad_weight, int64_t first, float* __restrict draws) {
  alignas(64) float sum[kLanes] = {};
  for_each_draw<float>(args, first, [&](int64_t k, int64_t l, float g) {
    draws[k * kLanes + l] = g;
    sum[l] += g;
  });
  // P[k] * grad = g_k * scale + fallback, with the uniform 1/e where the sum is zero (as in mixing_block).
  alignas(64) float scale[kLanes], fallback[kLanes];
  const float uniform = 1.0f / static_cast<float>(args.expansion);
  for (int64_t l = 0; l < kLanes; ++l) {
    const bool positive = sum[l] > 0.0f;
    scale[l] = grad[first + l] / (positive ? sum[l] : 1.0f);
    fallback[l] = positive ? 0.0f : grad[first + l] * uniform;
  }
  for (int64_t k = 0; k < args.expansion; ++k) {
    float* __restrict out = grad_weight + k * numel + first;
    const float* __restrict g = draws + k * kLanes;
    for (int64_t l = 0; l < kLanes; ++l) {
      const float value = g[l] * scale[l] + fallback[l];
      out[l] = kAccumulate ? out[l] + value : value;
    }
  }
}

// The exported kernels (KernelTable).

void mixing_f32(const MixingArgs& args, int64_t first, float* mix) { mixing_block<float>(args, first, mix); }

void mixing_f64(const MixingArgs& args, int64_t first, double* mix) { mixing_block<double>(args, first, mix); }

void combine_f32(const MixingArgs& args, const float* weight, int64_t numel, float* out, int64_t begin, int64_t end) {
  for (int64_t first = begin; first < end; first += kLanes) combine_block(args, weight, numel, out, first);
}

void scatter_f32(const MixingArgs& args, const float* grad, int64_t numel, float* grad_weight, bool accumulate,
                 int64_t begin, int64_t end, float* scratch) {
  for (int64_t first = begin; first < end; first += kLanes) {
    if (accumulate)
      scatter_block<true>(args, grad, numel, grad_weight, first, scratch);
    else
      scatter_block<false>(args, grad, numel, grad_weight, first, scratch);
  }
}

constexpr KernelTable kKernels = {&mixing_f32, &mixing_f64, &combine_f32, &scatter_f32};

}  // namespace MK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace majority_kernels
