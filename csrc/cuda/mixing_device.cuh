// Building blocks of the CUDA kernels: the mixing of docs/design.md section 4 over packs of consecutive elements.
//
// The RNG, the sorting network and the generic rank form come from the shared header
// (majority_kernels/mixing.h, also compiled into the CPU kernels); this file only lays them out over threads. A
// thread owns a pack of N consecutive elements (N * element size = 16 bytes on the hot paths). The kernels are
// built per expansion E <= kMaxFixedExpansion (dispatch_expansion), so that each element's P lives in E registers
// and every copy's pack is one vector load or store; E = 0 is the generic build for larger expansions, which walks
// the element's uniforms by rank and touches the copies one element at a time.
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

// Calls f(std::integral_constant<int, E>{}) with E = expansion for expansions up to kMaxFixedExpansion, E = 0 (the
// generic build) beyond.
template <typename F>
inline void dispatch_expansion(int64_t expansion, const F& f) {
  switch (expansion) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
  static_assert(kMaxFixedExpansion == 9, "dispatch_expansion lists every fixed expansion");
}

// N elements read or written as one vector access when aligned.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

#if defined(__CUDACC__)
// The seed is read inside the kernel from its device tensor, so no launch waits on the host and a CUDA graph
// replays whatever seed the tensor holds then.
__device__ __forceinline__ MixingArgs load_mixing(const int64_t* seed, uint64_t offset, int64_t expansion) {
  return MixingArgs{static_cast<uint64_t>(__ldg(seed)), offset, expansion};
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

// mixed[j] = sum_k P[k, index + j] * w[k * stride + j] for the pack's elements j < valid (the others: zero).
// `vector`: every copy's pack is one aligned vector load.
template <int E, int N, typename in_t, typename T>
MK_HOST_DEVICE void mix_pack(const MixingArgs& m, const in_t* w, int64_t stride, uint64_t index, int valid,
                             bool vector, T (&mixed)[N]) {
  if constexpr (E == 0) {
    MK_UNROLL
    for (int j = 0; j < N; ++j) {
      T acc = T(0);
      if (j < valid)
        for_each_mixing_generic<T>(m, index + j,
                                   [&](int64_t k, T p) { acc += p * static_cast<T>(w[k * stride + j]); });
      mixed[j] = acc;
    }
  } else {
    Pack<in_t, N> copies[E];  // all loads in flight together
    MK_UNROLL
    for (int k = 0; k < E; ++k) copies[k] = load_pack<N>(w + k * stride, valid, vector);
    MK_UNROLL
    for (int j = 0; j < N; ++j) {
      T p[E];
      mixing_fixed<E>(m, index + j, p);
      T acc = p[0] * static_cast<T>(copies[0].v[j]);
      MK_UNROLL
      for (int k = 1; k < E; ++k) acc += p[k] * static_cast<T>(copies[k].v[j]);
      mixed[j] = acc;
    }
  }
}

// P_k * grad[j] for every copy k and element j < valid of the pack at `index`: for a fixed E, once, as
// rows(values) with values[k][j] (whole rows, for vector stores); for the generic build, element by element as
// one(k, j, value).
template <int E, int N, typename T, typename Rows, typename One>
MK_HOST_DEVICE void scatter_pack(const MixingArgs& m, uint64_t index, const T (&grad)[N], int valid,
                                 const Rows& rows, const One& one) {
  if constexpr (E == 0) {
    MK_UNROLL
    for (int j = 0; j < N; ++j)
      if (j < valid) for_each_mixing_generic<T>(m, index + j, [&](int64_t k, T p) { one(k, j, p * grad[j]); });
  } else {
    T values[E][N];
    MK_UNROLL
    for (int j = 0; j < N; ++j) {
      T p[E];
      mixing_fixed<E>(m, index + j, p);
      MK_UNROLL
      for (int k = 0; k < E; ++k) values[k][j] = p[k] * grad[j];
    }
    rows(values);
  }
}

// The elementwise kernels' bodies, for the pack at element i = pack * N (N: 16 bytes of the large side), with
// `vector` the launcher's verdict that every pointer and copy is aligned for vector access.

// out[i + j] = sum_k P[k, i + j] * weight[k * numel + i + j].
template <int E, typename in_t, typename out_t>
MK_HOST_DEVICE void combine_at(const MixingArgs& m, const in_t* weight, out_t* out, int64_t numel, int64_t pack,
                               bool vector) {
  constexpr int N = kVectorBytes / sizeof(in_t);
  const int64_t i = pack * N;
  const int valid = numel - i < N ? static_cast<int>(numel - i) : N;
  const bool full = vector && valid == N;
  math_t<in_t> mixed[N];
  mix_pack<E, N>(m, weight + i, numel, i, valid, full, mixed);
  store_pack<N>(out + i, mixed, valid, full);
}

// grad_weight[k * numel + i + j] = P[k, i + j] * grad[i + j], or += with `accumulate`.
template <int E, typename grad_t, typename out_t>
MK_HOST_DEVICE void scatter_at(const MixingArgs& m, const grad_t* grad, out_t* grad_weight, int64_t numel,
                               int64_t pack, bool accumulate, bool vector) {
  constexpr int N = kVectorBytes / sizeof(out_t);
  using T = math_t<out_t>;
  const int64_t i = pack * N;
  const int valid = numel - i < N ? static_cast<int>(numel - i) : N;
  const bool full = vector && valid == N;
  const Pack<grad_t, N> g = load_pack<N>(grad + i, valid, full);
  T values[N];
  MK_UNROLL
  for (int j = 0; j < N; ++j) values[j] = static_cast<T>(g.v[j]);
  out_t* target = grad_weight + i;
  scatter_pack<E, N>(
      m, i, values, valid,
      [&](auto& rows) {
        // The existing gradients of every copy are loaded together, before any store.
        Pack<out_t, N> existing[E > 0 ? E : 1] = {};
        if (accumulate) {
          MK_UNROLL
          for (int k = 0; k < E; ++k) existing[k] = load_pack<N>(target + k * numel, valid, full);
        }
        MK_UNROLL
        for (int k = 0; k < E; ++k) {
          if (accumulate) {
            MK_UNROLL
            for (int j = 0; j < N; ++j) rows[k][j] += static_cast<T>(existing[k].v[j]);
          }
          store_pack<N>(target + k * numel, rows[k], valid, full);
        }
      },
      [&](int64_t k, int j, T value) {
        out_t* element = target + k * numel + j;
        *element = static_cast<out_t>(accumulate ? static_cast<T>(*element) + value : value);
      });
}

}  // namespace cuda
}  // namespace majority_kernels
