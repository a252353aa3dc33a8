// Host side shared by the CUDA kernels' launchers: argument checks with clear messages, launch geometry, alignment.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "launch_config.h"

namespace majority_kernels {
namespace cuda {

inline void check_cuda_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), "majority_kernels.", op, ": ", name, " must be a CUDA tensor for the CUDA kernels, got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "majority_kernels.", op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.device() == like.device(), "majority_kernels.", op, ": ", name, " must be on ", like.device(),
              ", got ", t.device());
}

inline void check_floating_dtype(at::ScalarType dtype, const char* op) {
  TORCH_CHECK(at::isFloatingType(dtype), "majority_kernels.", op,
              ": out_dtype must be float32, float64, bfloat16 or float16, got ", dtype);
}

// The seed tensor's device pointer: the kernels read the value themselves (no host sync, graph-capturable), so its
// range [0, 2^63) is checked by the Python API, not here.
inline const int64_t* seed_pointer(const at::Tensor& seed, const at::Tensor& like, const char* op) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong, "majority_kernels.", op,
              ": seed must be a one-element int64 tensor, got ", seed.scalar_type(), " of shape ", seed.sizes());
  check_same_device(seed, like, op, "seed");
  return seed.const_data_ptr<int64_t>();
}

// launch_config.h's vector_access for packs of `lanes` elements at a and b (a pack of T[lanes] is aligned to its
// size, mixing_device.cuh's Pack).
template <typename T, typename U>
bool vector_access_at(const T* a, const U* b, int64_t stride, int lanes, int64_t segments) {
  return vector_access(reinterpret_cast<uintptr_t>(a), sizeof(T) * lanes, reinterpret_cast<uintptr_t>(b),
                       sizeof(U) * lanes, stride, lanes, segments);
}

// Blocks for a grid-stride loop over `items` work items of one thread each on the current device.
inline unsigned int blocks_for(int64_t items) {
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  return grid_blocks(items, device->multiProcessorCount, device->maxThreadsPerMultiProcessor);
}

// The pairs of (input, output) dtypes the elementwise kernels are built for: the same dtype, and float32 with a
// 16-bit float either way (float32 master weights under autocast). Each pair is a kernel instantiation, and each
// costs compile time; the launchers bring other pairs to these with a cast of the smaller side (same values:
// the kernels mix in float, or double for float64, whatever the pair).
inline bool is_kernel_pair(at::ScalarType a, at::ScalarType b) {
  const auto half_float = [](at::ScalarType x) { return x == at::kBFloat16 || x == at::kHalf; };
  return a == b || (a == at::kFloat && half_float(b)) || (half_float(a) && b == at::kFloat);
}

template <typename A, typename B>
struct TypePair {
  using first = A;
  using second = B;
};

// Calls f(TypePair<a's type, b's type>{}) for a pair accepted by is_kernel_pair.
template <typename F>
void dispatch_kernel_pair(at::ScalarType a, at::ScalarType b, const char* op, const F& f) {
  TORCH_CHECK(is_kernel_pair(a, b), "majority_kernels.", op, ": no kernel for dtypes ", a, " and ", b);
  if (a == b) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a, "majority_kernels",
                                    [&] { f(TypePair<scalar_t, scalar_t>{}); });
  } else if (a == at::kFloat) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(b, "majority_kernels", [&] { f(TypePair<float, scalar_t>{}); });
  } else {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(a, "majority_kernels", [&] { f(TypePair<scalar_t, float>{}); });
  }
}

// The dtype kernels compute in for data of `dtype`: float64 for float64, else float32.
inline at::ScalarType math_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace cuda
}  // namespace majority_kernels
