// The CPU kernels proper, for one instruction set: included once by each of kernels_{avx512,avx2,portable}.cpp,
// after they choose the instruction set (see simd_word.h), and only there (see kernel_table.h for why).
//
// Two forms. For expansions up to kMaxFixedExpansion, combine and scatter go a Word of lanes at a time with P in
// registers: Philox, the sorting network unrolled, the gaps and the products, nothing stored but the result. The
// rest (larger expansions, the materialised P of the other dtypes, and the rare block whose counters carry into
// their high word) goes in blocks of kLanes consecutive elements: Philox for the block's counters with the vector
// Word, then loops over the lanes with no branches or calls (the sorting network, the gaps, the products), which
// the compiler vectorises for the chosen instruction set.
#pragma once

#include "kernel_table.h"
#include "simd_word.h"

namespace majority_kernels {
namespace cpu {
namespace MK_CPU_CAPABILITY {

static_assert(kLanes % kWordLanes == 0, "a block is a whole number of Words");

// v[j * lanes + l] = v_j of element first + l, the sorted uniforms (j < m = e - 1), in the math type T, for the
// block's `lanes` <= kLanes elements: Philox for the block's counters with the vector Word, then the sorting
// network applied to all lanes at once (each comparator a branch-free min/max loop over the lanes).
template <typename T>
MK_CPU_INLINE void sorted_uniforms(const MixingArgs& args, int64_t first, int64_t lanes, T* __restrict v) {
  const int64_t m = uniforms_per_element(args.expansion);
  const int64_t groups = counters_per_element(args.expansion);
  const Word key0 = broadcast(static_cast<uint32_t>(args.seed));
  const Word key1 = broadcast(static_cast<uint32_t>(args.seed >> 32));
  alignas(64) float staged[4][kLanes];
  for (int64_t group = 0; group < groups; ++group) {
    // Lane l's counter is base + l * groups (64-bit; `counters` carries into the high word where a block
    // crosses a multiple of 2^32).
    const uint64_t base = element_counter(args.offset, static_cast<uint64_t>(first), args.expansion, group);
    for (int64_t l = 0; l < lanes; l += kWordLanes) {
      Word c0, c1, c2 = broadcast(0), c3 = broadcast(0);
      counters(base + static_cast<uint64_t>(l * groups), static_cast<uint32_t>(groups), c0, c1);
      philox4x32(c0, c1, c2, c3, key0, key1);
      store(staged[0] + l, uniforms(c0));
      store(staged[1] + l, uniforms(c1));
      store(staged[2] + l, uniforms(c2));
      store(staged[3] + l, uniforms(c3));
    }
    const int64_t count = m - 4 * group < 4 ? m - 4 * group : 4;
    for (int64_t j = 0; j < count; ++j) {
      T* __restrict row = v + (4 * group + j) * lanes;
      for (int64_t l = 0; l < lanes; ++l) row[l] = static_cast<T>(staged[j][l]);
    }
  }
  for_each_comparator(static_cast<int>(m), [&](int low, int high) {
    T* __restrict a = v + low * lanes;
    T* __restrict b = v + high * lanes;
    for (int64_t l = 0; l < lanes; ++l) {
      const T x = a[l], y = b[l];
      a[l] = x < y ? x : y;
      b[l] = x < y ? y : x;
    }
  });
}

// mix[k * lanes + l] = P[k, first + l] in the math type T, for the block's `lanes` <= kLanes elements.
template <typename T>
MK_CPU_INLINE void mixing_block(const MixingArgs& args, int64_t first, int64_t lanes, T* __restrict mix) {
  const int64_t m = uniforms_per_element(args.expansion);
  if (m == 0) {  // e = 1: P = 1 exactly, no draw
    for (int64_t l = 0; l < lanes; ++l) mix[l] = T(1);
    return;
  }
  sorted_uniforms(args, first, lanes, mix);
  // The gaps in place, from the top row down: P_m = 1 - v_{m-1}, P_k = v_k - v_{k-1}, P_0 = v_0.
  for (int64_t l = 0; l < lanes; ++l) mix[m * lanes + l] = T(1) - mix[(m - 1) * lanes + l];
  for (int64_t k = m - 1; k >= 1; --k) {
    T* __restrict upper = mix + k * lanes;
    const T* __restrict lower = mix + (k - 1) * lanes;
    for (int64_t l = 0; l < lanes; ++l) upper[l] -= lower[l];
  }
}

// out[i] = sum_k P[k, i] * weight[k * numel + i] for the block's kLanes elements i; `mix` holds e * kLanes.
MK_CPU_INLINE void combine_block(const MixingArgs& args, const float* __restrict weight, int64_t numel,
                                 float* __restrict out, int64_t first, float* __restrict mix) {
  mixing_block(args, first, kLanes, mix);
  const float* __restrict w = weight + first;
  alignas(64) float acc[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) acc[l] = mix[l] * w[l];
  for (int64_t k = 1; k < args.expansion; ++k) {
    const float* __restrict wk = w + k * numel;
    const float* __restrict pk = mix + k * kLanes;
    for (int64_t l = 0; l < kLanes; ++l) acc[l] += pk[l] * wk[l];
  }
  for (int64_t l = 0; l < kLanes; ++l) out[first + l] = acc[l];
}

// grad_weight[k * numel + i] (+)= P[k, i] * grad[i] for the block's kLanes elements i, one copy's row after the
// other (writing all e rows in one lane loop thrashes the L1 cache for large e); `mix` holds e * kLanes.
template <bool kAccumulate>
MK_CPU_INLINE void scatter_block(const MixingArgs& args, const float* __restrict grad, int64_t numel,
                                 float* __restrict grad_weight, int64_t first, float* __restrict mix) {
  mixing_block(args, first, kLanes, mix);
  const float* __restrict g = grad + first;
  for (int64_t k = 0; k < args.expansion; ++k) {
    float* __restrict out = grad_weight + k * numel + first;
    const float* __restrict pk = mix + k * kLanes;
    for (int64_t l = 0; l < kLanes; ++l) {
      const float value = pk[l] * g[l];
      out[l] = kAccumulate ? out[l] + value : value;
    }
  }
}

// Whether the counters of the kLanes elements from `first` all share one high word: all but one block in
// 2^32 / (kLanes R) (R counters per element), which takes the block form.
MK_CPU_INLINE bool same_high_word(const MixingArgs& args, int64_t first) {
  const uint64_t counter = element_counter(args.offset, static_cast<uint64_t>(first), args.expansion, 0);
  const uint64_t counters = static_cast<uint64_t>(kLanes * counters_per_element(args.expansion));
  return static_cast<uint32_t>(counter) + counters <= (uint64_t{1} << 32);
}

// sort_fixed (mixing.h) on a Word's uniforms, each exchange a lesser and a greater.
template <int M, int C = 0>
MK_CPU_INLINE void sort_word(Floats (&v)[M]) {
  if constexpr (C < comparator_count(M)) {
    constexpr Comparator c = comparator_at(M, C);
    const Floats low = lesser(v[c.low], v[c.high]);
    v[c.high] = greater(v[c.low], v[c.high]);
    v[c.low] = low;
    sort_word<M, C + 1>(v);
  }
}

// p[k] = P[k, first + lane] for the kWordLanes lanes of a Word, a compile-time E <= kMaxFixedExpansion, in
// registers. The lanes' counters of group 0 have the low words `low` and the high word `high` in every lane: a
// broadcast, so the compiler folds Philox's first rounds, where the counter's words 1 to 3 are the same in every
// lane.
template <int E>
MK_CPU_INLINE void mixing_word(const MixingArgs& args, const Word& low, uint32_t high, Floats (&p)[E]) {
  if constexpr (E == 1) {
    p[0] = Floats{} + 1.0f;
  } else {
    constexpr int M = E - 1;
    const Word key0 = broadcast(static_cast<uint32_t>(args.seed));
    const Word key1 = broadcast(static_cast<uint32_t>(args.seed >> 32));
    Floats v[M];
    MK_UNROLL
    for (int group = 0; group * 4 < M; ++group) {
      Word c0 = low, c1 = broadcast(high), c2 = broadcast(0), c3 = broadcast(0);
      c0 += static_cast<uint32_t>(group);
      philox4x32(c0, c1, c2, c3, key0, key1);
      const Word* words[4] = {&c0, &c1, &c2, &c3};
      MK_UNROLL
      for (int j = 0; j < 4; ++j)
        if (group * 4 + j < M) v[group * 4 + j] = uniforms(*words[j]);
    }
    sort_word<M>(v);
    p[0] = v[0];
    MK_UNROLL
    for (int k = 1; k < M; ++k) p[k] = v[k] - v[k - 1];
    p[M] = 1.0f - v[M - 1];
  }
}

// Calls body(lane, p) for each Word of the kLanes elements from `first` (lane: its first lane), with its P.
template <int E, typename Body>
MK_CPU_INLINE void for_each_word(const MixingArgs& args, int64_t first, const Body& body) {
  const uint64_t base = element_counter(args.offset, static_cast<uint64_t>(first), E, 0);
  Word low;
  counters_low(static_cast<uint32_t>(base), static_cast<uint32_t>(counters_per_element(E)), low);
  for (int64_t lane = 0; lane < kLanes; lane += kWordLanes) {
    Floats p[E];
    mixing_word<E>(args, low, static_cast<uint32_t>(base >> 32), p);
    body(lane, p);
    low += static_cast<uint32_t>(kWordLanes * counters_per_element(E));
  }
}

// Calls fixed(std::integral_constant<int, E>{}) where the expansion is a compile-time E <= kMaxFixedExpansion and
// returns true; false for larger expansions.
template <int E = 1, typename Fixed>
MK_CPU_INLINE bool with_fixed_expansion(int64_t expansion, const Fixed& fixed) {
  if constexpr (E <= kMaxFixedExpansion) {
    if (expansion == E) {
      fixed(std::integral_constant<int, E>{});
      return true;
    }
    return with_fixed_expansion<E + 1>(expansion, fixed);
  } else {
    return false;
  }
}

// The exported kernels (KernelTable).

void mixing_f32(const MixingArgs& args, int64_t first, int64_t lanes, float* mix) {
  mixing_block(args, first, lanes, mix);
}

void mixing_f64(const MixingArgs& args, int64_t first, int64_t lanes, double* mix) {
  mixing_block(args, first, lanes, mix);
}

// combine_f32 for a compile-time E <= kMaxFixedExpansion. (Arguments by value: were they references, the stores
// to `out` could alias them, and they would be read again for every Word.)
template <int E>
MK_CPU_INLINE void combine_fixed(const MixingArgs args, const float* weight, int64_t numel, float* out, int64_t begin,
                                 int64_t end, float* scratch) {
  for (int64_t first = begin; first < end; first += kLanes) {
    if (!same_high_word(args, first)) {
      combine_block(args, weight, numel, out, first, scratch);
      continue;
    }
    for_each_word<E>(args, first, [&](int64_t lane, const Floats(&p)[E]) {
      const float* __restrict w = weight + first + lane;
      Floats acc = p[0] * load(w);
      MK_UNROLL
      for (int k = 1; k < E; ++k) acc += p[k] * load(w + k * numel);
      store(out + first + lane, acc);
    });
  }
}

// scatter_f32 for a compile-time E <= kMaxFixedExpansion, written or accumulated.
template <int E, bool kAccumulate>
MK_CPU_INLINE void scatter_fixed(const MixingArgs args, const float* grad, int64_t numel, float* grad_weight,
                                 int64_t begin, int64_t end, float* scratch) {
  for (int64_t first = begin; first < end; first += kLanes) {
    if (!same_high_word(args, first)) {
      scatter_block<kAccumulate>(args, grad, numel, grad_weight, first, scratch);
      continue;
    }
    for_each_word<E>(args, first, [&](int64_t lane, const Floats(&p)[E]) {
      const Floats g = load(grad + first + lane);
      float* __restrict out = grad_weight + first + lane;
      MK_UNROLL
      for (int k = 0; k < E; ++k) store(out + k * numel, kAccumulate ? load(out + k * numel) + p[k] * g : p[k] * g);
    });
  }
}

void combine_f32(const MixingArgs& args, const float* weight, int64_t numel, float* out, int64_t begin, int64_t end,
                 float* scratch) {
  const bool fixed = with_fixed_expansion(args.expansion, [&](auto expansion) {
    combine_fixed<decltype(expansion)::value>(args, weight, numel, out, begin, end, scratch);
  });
  if (!fixed)
    for (int64_t first = begin; first < end; first += kLanes) combine_block(args, weight, numel, out, first, scratch);
}

void scatter_f32(const MixingArgs& args, const float* grad, int64_t numel, float* grad_weight, bool accumulate,
                 int64_t begin, int64_t end, float* scratch) {
  const bool fixed = with_fixed_expansion(args.expansion, [&](auto expansion) {
    constexpr int E = decltype(expansion)::value;
    if (accumulate)
      scatter_fixed<E, true>(args, grad, numel, grad_weight, begin, end, scratch);
    else
      scatter_fixed<E, false>(args, grad, numel, grad_weight, begin, end, scratch);
  });
  if (fixed) return;
  for (int64_t first = begin; first < end; first += kLanes) {
    if (accumulate)
      scatter_block<true>(args, grad, numel, grad_weight, first, scratch);
    else
      scatter_block<false>(args, grad, numel, grad_weight, first, scratch);
  }
}

#define MK_STRINGIFY(x) #x
#define MK_NAME(x) MK_STRINGIFY(x)
constexpr KernelTable kKernels = {MK_NAME(MK_CPU_CAPABILITY), &mixing_f32, &mixing_f64, &combine_f32, &scatter_f32};
#undef MK_NAME
#undef MK_STRINGIFY

}  // namespace MK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace majority_kernels
