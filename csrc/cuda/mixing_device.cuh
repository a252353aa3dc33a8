// Building blocks of the CUDA kernels: the mixing of DESIGN.md section 4 over packs of consecutive elements.
//
// The RNG and the Exp(1) draws come from the shared header (majority_kernels/mixing.h, also compiled into the CPU
// kernels); this file only lays them out over threads. A thread owns a pack of N consecutive elements (N * element
// size = 16 bytes on the hot paths) and handles the copies in groups of four, the four words of one Philox call:
// a group's copies are loaded together (several loads in flight) and its draws stay in registers, so e <= 4 (the
// default expansion) takes one Philox pass everywhere. A larger chunk of copies would spare the scatter's second
// pass for e in 5..8 but hold N x 8 draws per thread: twice the registers, half the occupancy, for every e.
//
// Host and device code, free of torch: tests/test_cuda.py also compiles it for the CPU (tests/cuda_pack_host.cpp)
// and checks the kernels' per-pack bodies against the reference where there is no GPU.
#pragma once

#include <stdint.h>

#include <type_traits>

#include "majority_kernels/mixing.h"

namespace majority_kernels {
namespace cuda {

// Bytes per vector load or store.
constexpr int kVectorBytes = 16;
// Copies per group: the four words of one Philox call.
constexpr int kGroup = 4;

// Float64 data mixes in double; every other dtype in float (as on the CPU).
template <typename scalar_t>
using math_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// N elements read or written as one vector access when aligned.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// The (seed, offset, expansion) of section 4. The seed is read inside the kernel from its device tensor, so no
// launch waits on the host and a CUDA graph replays whatever seed the tensor holds then.
struct Mixing {
  uint64_t seed;
  uint64_t offset;
  int64_t expansion;
};

#if defined(__CUDACC__)
__device__ __forceinline__ Mixing load_mixing(const int64_t* seed, uint64_t offset, int64_t expansion) {
  return Mixing{static_cast<uint64_t>(__ldg(seed)), offset, expansion};
}
#endif

// Elements [0, N) at p, as one vector load when `vector` (p aligned, all N valid), else element by element with
// those from `valid` on read as zero.
template <int N, typename T>
MK_HOST_DEVICE Pack<T, N> load_pack(const T* p, int valid, bool vector) {
  if (vector) return *reinterpret_cast<const Pack<T, N>*>(p);
  Pack<T, N> pack;
  MK_UNROLL
  for (int j = 0; j < N; ++j) pack.v[j] = j < valid ? p[j] : T(0);
  return pack;
}

// values[0, valid) converted and stored at p, as one vector store when `vector`.
template <int N, typename T, typename V>
MK_HOST_DEVICE void store_pack(T* p, const V (&values)[N], int valid, bool vector) {
  if (vector) {
    Pack<T, N> pack;
    MK_UNROLL
    for (int j = 0; j < N; ++j) pack.v[j] = static_cast<T>(values[j]);
    *reinterpret_cast<Pack<T, N>*>(p) = pack;
    return;
  }
  MK_UNROLL
  for (int j = 0; j < N; ++j)
    if (j < valid) p[j] = static_cast<T>(values[j]);
}

// g[c] = the Exp(1) draw of copy first + c of element `index` (before the normalisation), zero for copies past the
// expansion; `first` is a multiple of kGroup.
template <typename T>
MK_HOST_DEVICE void draw_group(const Mixing& m, uint64_t index, int64_t first, T (&g)[kGroup]) {
  const uint64_t counter = element_counter(m.offset, index, m.expansion, first / kGroup);
  uint32_t w0 = static_cast<uint32_t>(counter), w1 = static_cast<uint32_t>(counter >> 32), w2 = 0, w3 = 0;
  philox4x32_10(w0, w1, w2, w3, static_cast<uint32_t>(m.seed), static_cast<uint32_t>(m.seed >> 32));
  const uint32_t words[kGroup] = {w0, w1, w2, w3};
  MK_UNROLL
  for (int c = 0; c < kGroup; ++c)
    g[c] = first + c < m.expansion ? exponential_from_uniform<T>(uniform_from_word(words[c])) : T(0);
}

// mixed[j] = sum_k P[k, index + j] * w[k * stride + j] for the pack's elements j < valid (the others: zero), as
// (sum_k g_k w_k) / (sum_k g_k), so P is never formed. `vector`: every copy's pack is one aligned vector load.
template <int N, typename in_t, typename T>
MK_HOST_DEVICE void mix_pack(const Mixing& m, const in_t* w, int64_t stride, uint64_t index, int valid,
                             bool vector, T (&mixed)[N]) {
  T acc[N], sum[N];
  MK_UNROLL
  for (int j = 0; j < N; ++j) acc[j] = sum[j] = T(0);
  for (int64_t first = 0; first < m.expansion; first += kGroup) {
    Pack<in_t, N> copies[kGroup] = {};  // copies past the expansion stay zero, never loaded
    MK_UNROLL
    for (int c = 0; c < kGroup; ++c)
      if (first + c < m.expansion) copies[c] = load_pack<N>(w + (first + c) * stride, valid, vector);
    MK_UNROLL
    for (int j = 0; j < N; ++j) {
      T g[kGroup];
      draw_group(m, index + j, first, g);
      MK_UNROLL
      for (int c = 0; c < kGroup; ++c) {
        if (first + c < m.expansion) {
          sum[j] += g[c];
          acc[j] += g[c] * static_cast<T>(copies[c].v[j]);
        }
      }
    }
  }
  MK_UNROLL
  for (int j = 0; j < N; ++j) {
    if (sum[j] > T(0)) {
      mixed[j] = acc[j] / sum[j];
    } else {  // every u == 0 (probability 2^-31 per copy): P = 1/e, the plain mean
      T total = T(0);
      if (j < valid)
        for (int64_t k = 0; k < m.expansion; ++k) total += static_cast<T>(w[k * stride + j]);
      mixed[j] = total / static_cast<T>(m.expansion);
    }
  }
}

// Calls emit(first, values) for each group of copies, first = 0, kGroup, ... < expansion, with
// values[j][c] = P[first + c, index + j] * grad[j] for the copies first + c < expansion (emit ignores the rest). For
// e <= kGroup, one Philox pass; beyond, a first pass for the sums and a second for the groups after the first.
template <int N, typename T, typename Emit>
MK_HOST_DEVICE void scatter_pack(const Mixing& m, uint64_t index, const T (&grad)[N], const Emit& emit) {
  T values[N][kGroup], scale[N], fallback[N];
  MK_UNROLL
  for (int j = 0; j < N; ++j) {
    T sum = T(0);
    for (int64_t first = 0; first < m.expansion; first += kGroup) {
      T g[kGroup];
      draw_group(m, index + j, first, g);
      MK_UNROLL
      for (int c = 0; c < kGroup; ++c) {
        sum += g[c];
        if (first == 0) values[j][c] = g[c];
      }
    }
    // P_k * grad = g_k * (grad / sum), or grad / e where every u == 0.
    const bool positive = sum > T(0);
    scale[j] = positive ? grad[j] / sum : T(0);
    fallback[j] = positive ? T(0) : grad[j] / static_cast<T>(m.expansion);
  }
  for (int64_t first = 0; first < m.expansion; first += kGroup) {
    MK_UNROLL
    for (int j = 0; j < N; ++j) {
      if (first > 0) draw_group(m, index + j, first, values[j]);
      MK_UNROLL
      for (int c = 0; c < kGroup; ++c) values[j][c] = values[j][c] * scale[j] + fallback[j];
    }
    emit(first, values);
  }
}

// The elementwise kernels' bodies, for the pack at element i = pack * N (N: 16 bytes of the large side), with
// `vector` the launcher's verdict that every pointer and copy is aligned for vector access.

// out[i + j] = sum_k P[k, i + j] * weight[k * numel + i + j].
template <typename in_t, typename out_t>
MK_HOST_DEVICE void combine_at(const Mixing& m, const in_t* weight, out_t* out, int64_t numel, int64_t pack,
                               bool vector) {
  constexpr int N = kVectorBytes / sizeof(in_t);
  const int64_t i = pack * N;
  const int valid = numel - i < N ? static_cast<int>(numel - i) : N;
  const bool full = vector && valid == N;
  math_t<in_t> mixed[N];
  mix_pack<N>(m, weight + i, numel, i, valid, full, mixed);
  store_pack<N>(out + i, mixed, valid, full);
}

// grad_weight[k * numel + i + j] = P[k, i + j] * grad[i + j], or += with `accumulate`.
template <typename grad_t, typename out_t>
MK_HOST_DEVICE void scatter_at(const Mixing& m, const grad_t* grad, out_t* grad_weight, int64_t numel, int64_t pack,
                               bool accumulate, bool vector) {
  constexpr int N = kVectorBytes / sizeof(out_t);
  using T = math_t<out_t>;
  const int64_t i = pack * N;
  const int valid = numel - i < N ? static_cast<int>(numel - i) : N;
  const bool full = vector && valid == N;
  const Pack<grad_t, N> g = load_pack<N>(grad + i, valid, full);
  T values[N];
  MK_UNROLL
  for (int j = 0; j < N; ++j) values[j] = static_cast<T>(g.v[j]);
  scatter_pack<N>(m, i, values, [&](int64_t first, T (&mixed)[N][kGroup]) {
    // The group's existing gradients are loaded together, before any store.
    Pack<out_t, N> existing[kGroup] = {};
    if (accumulate) {
      MK_UNROLL
      for (int c = 0; c < kGroup; ++c)
        if (first + c < m.expansion) existing[c] = load_pack<N>(grad_weight + (first + c) * numel + i, valid, full);
    }
    MK_UNROLL
    for (int c = 0; c < kGroup; ++c) {
      if (first + c >= m.expansion) continue;
      T out[N];
      MK_UNROLL
      for (int j = 0; j < N; ++j) out[j] = accumulate ? static_cast<T>(existing[c].v[j]) + mixed[j][c] : mixed[j][c];
      store_pack<N>(grad_weight + (first + c) * numel + i, out, valid, full);
    }
  });
}

}  // namespace cuda
}  // namespace majority_kernels
