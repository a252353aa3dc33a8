// The random mixing weights of docs/design.md section 4 (spec v2), once for every C++ backend.
//
// Framework-free: only <stdint.h> and <type_traits>, usable from host code (the CPU kernels) and from CUDA device
// code (the CUDA kernels include this same header). Every function is a small inline building block; the kernels
// decide how to lay them out over elements (blocks of lanes on the CPU, threads on the GPU).
//
// Per element: m = e - 1 uniforms u_j from Philox4x32-7, sorted ascending into v_0 <= ... <= v_{m-1}; the mixing
// weights are the gaps P_0 = v_0, P_k = v_k - v_{k-1}, P_{e-1} = 1 - v_{m-1}: a Dirichlet(1, ..., 1) draw.
#pragma once

#include <stdint.h>

#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MK_HOST_DEVICE __host__ __device__ __forceinline__
#define MK_UNROLL _Pragma("unroll")
#else
#define MK_HOST_DEVICE inline __attribute__((always_inline))
#define MK_UNROLL _Pragma("GCC unroll 16")
#endif

namespace majority_kernels {

// The (seed, offset, expansion) of one mixing: seed in [0, 2^63), a 64-bit counter offset, e >= 1 copies.
struct MixingArgs {
  uint64_t seed;
  uint64_t offset;
  int64_t expansion;
};

// Float64 data mixes in double; every other dtype in float.
template <typename scalar_t>
using math_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Philox4x32-7 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"): the constants of Philox4x32, seven
// rounds (what Triton's tl.philox(..., n_rounds=7) computes).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 7;

// u = float32(x) * kUniformScale lies in [0, 1): the largest x, 2^31 - 1, rounds to 0.99999994f.
constexpr float kUniformScale = 4.6566127342e-10f;

// The kernels are built for every expansion up to this one with their sorting network unrolled (8 uniforms, 19
// comparators); larger expansions take the generic forms, slower but exact.
constexpr int kMaxFixedExpansion = 9;

// Uniforms per element: e - 1 (none for e = 1, where P = 1).
MK_HOST_DEVICE int64_t uniforms_per_element(int64_t expansion) { return expansion - 1; }

// Counters per element: one Philox call yields four uniforms.
MK_HOST_DEVICE int64_t counters_per_element(int64_t expansion) { return (expansion + 2) / 4; }

// hi:lo = a * b, the full 64-bit product of two 32-bit words.
MK_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// kPhiloxRounds rounds on counter (c0, c1, c2, c3) with key (k0, k1); the result replaces the counter in place.
// Word is uint32_t, or a SIMD type holding one word per lane that provides ^, += uint32_t and
// mulhilo(Word, uint32_t, Word&, Word&) (the CPU kernels' vector lanes): the rounds are written once for both.
template <typename Word>
MK_HOST_DEVICE void philox4x32(Word& c0, Word& c1, Word& c2, Word& c3, Word k0, Word k1) {
  MK_UNROLL
  for (int round = 0; round < kPhiloxRounds; ++round) {
    Word hi0, lo0, hi1, lo1;
    mulhilo(c0, kPhiloxM0, hi0, lo0);
    mulhilo(c2, kPhiloxM1, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// Counter of uniforms 4 * group .. 4 * group + 3 of flat element `index`; wraps mod 2^64.
MK_HOST_DEVICE uint64_t element_counter(uint64_t offset, uint64_t index, int64_t expansion, int64_t group) {
  return offset + index * static_cast<uint64_t>(counters_per_element(expansion)) + static_cast<uint64_t>(group);
}

// Triton's uint_to_uniform_float: the word as int32, negatives folded with ~x, scaled into [0, 1).
MK_HOST_DEVICE float uniform_from_word(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// The four uniforms of counter group `group` of element `index`, one Philox call.
MK_HOST_DEVICE void group_uniforms(const MixingArgs& args, uint64_t index, int64_t group, float (&u)[4]) {
  const uint64_t counter = element_counter(args.offset, index, args.expansion, group);
  uint32_t w0 = static_cast<uint32_t>(counter), w1 = static_cast<uint32_t>(counter >> 32), w2 = 0, w3 = 0;
  philox4x32(w0, w1, w2, w3, static_cast<uint32_t>(args.seed), static_cast<uint32_t>(args.seed >> 32));
  u[0] = uniform_from_word(w0);
  u[1] = uniform_from_word(w1);
  u[2] = uniform_from_word(w2);
  u[3] = uniform_from_word(w3);
}

// The sorting network: Batcher's odd-even merge sort on n wires (comparators whose upper wire is >= n dropped,
// which leaves a sorting network for n: the dropped wires would hold +inf and never move). Calls
// exchange(low, high) for every comparator in order; it must leave the smaller value on `low`.
template <typename Exchange>
MK_HOST_DEVICE constexpr void for_each_comparator(int n, Exchange&& exchange) {
  for (int p = 1; p < n; p *= 2)
    for (int k = p; k >= 1; k /= 2)
      for (int j = k % p; j + k < n; j += 2 * k)
        for (int i = 0; i < k && i + j + k < n; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) exchange(i + j, i + j + k);
}

struct Comparator {
  int low, high;
};

MK_HOST_DEVICE constexpr int comparator_count(int n) {
  int count = 0;
  for_each_comparator(n, [&](int, int) { ++count; });
  return count;
}

// Comparator `index` of the network on n wires, as a constant expression.
MK_HOST_DEVICE constexpr Comparator comparator_at(int n, int index) {
  Comparator found{0, 0};
  int count = 0;
  for_each_comparator(n, [&](int low, int high) {
    if (count++ == index) found = Comparator{low, high};
  });
  return found;
}

// Sorts v[0, M) ascending in registers: the network for a compile-time M, every index a constant.
template <int M, int C = 0, typename T>
MK_HOST_DEVICE void sort_fixed(T (&v)[M]) {
  if constexpr (C < comparator_count(M)) {
    constexpr Comparator c = comparator_at(M, C);
    const T low = v[c.low] < v[c.high] ? v[c.low] : v[c.high];
    const T high = v[c.low] < v[c.high] ? v[c.high] : v[c.low];
    v[c.low] = low;
    v[c.high] = high;
    sort_fixed<M, C + 1>(v);
  }
}

// P of element `index` for a compile-time expansion E <= kMaxFixedExpansion: p[k] = P[k, index], in T.
template <int E, typename T>
MK_HOST_DEVICE void mixing_fixed(const MixingArgs& args, uint64_t index, T (&p)[E]) {
  if constexpr (E == 1) {
    p[0] = T(1);
  } else {
    constexpr int M = E - 1;
    float v[M];
    MK_UNROLL
    for (int group = 0; group * 4 < M; ++group) {
      float u[4];
      group_uniforms(args, index, group, u);
      MK_UNROLL
      for (int j = 0; j < 4; ++j)
        if (group * 4 + j < M) v[group * 4 + j] = u[j];
    }
    sort_fixed<M>(v);
    // The gaps, in T (exact in double): v_{-1} = 0, v_m = 1.
    p[0] = static_cast<T>(v[0]);
    MK_UNROLL
    for (int k = 1; k < M; ++k) p[k] = static_cast<T>(v[k]) - static_cast<T>(v[k - 1]);
    p[M] = T(1) - static_cast<T>(v[M - 1]);
  }
}

// The generic form, for any expansion and without storage: for each uniform u_j, its rank r_j among the element's
// uniforms (ties broken by j, so the ranks are a permutation of 0..m-1) and the largest uniform ranked below it
// (0 for rank 0). Then P[r_j] = u_j - below_j, and P[e-1] = 1 - max_j u_j: the gaps of the sorted uniforms,
// equal to the network's. Calls use(copy, P) once for every copy, in no particular order of copies. O(m^2)
// compares and O(R^2) Philox calls per element (R counters), against the network's O(m log^2 m) and R.
template <typename T, typename Use>
MK_HOST_DEVICE void for_each_mixing_generic(const MixingArgs& args, uint64_t index, const Use& use) {
  const int64_t m = uniforms_per_element(args.expansion);
  if (m == 0) {
    use(int64_t{0}, T(1));
    return;
  }
  const int64_t groups = counters_per_element(args.expansion);
  float largest = 0.0f;
  for (int64_t group_j = 0; group_j < groups; ++group_j) {
    float uj[4];
    group_uniforms(args, index, group_j, uj);
    int64_t rank[4] = {0, 0, 0, 0};
    float below[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t group_i = 0; group_i < groups; ++group_i) {
      float ui[4];
      group_uniforms(args, index, group_i, ui);
      MK_UNROLL
      for (int a = 0; a < 4; ++a) {
        const int64_t j = group_j * 4 + a;
        MK_UNROLL
        for (int b = 0; b < 4; ++b) {
          const int64_t i = group_i * 4 + b;
          const bool ranked_below = i < m && (ui[b] < uj[a] || (ui[b] == uj[a] && i < j));
          rank[a] += ranked_below ? 1 : 0;
          below[a] = ranked_below && ui[b] > below[a] ? ui[b] : below[a];
        }
      }
    }
    MK_UNROLL
    for (int a = 0; a < 4; ++a) {
      if (group_j * 4 + a >= m) break;
      use(rank[a], static_cast<T>(uj[a]) - static_cast<T>(below[a]));
      largest = uj[a] > largest ? uj[a] : largest;
    }
  }
  use(m, T(1) - static_cast<T>(largest));
}

}  // namespace majority_kernels
