// CUDA kernels of combine, scatter (write or accumulate in place) and the materialised mixing weights.
//
// Grid-stride loops over packs of 16 bytes of the large tensor (the copies, read by combine and written by
// scatter), one pack per thread; 64-bit indices throughout. P is regenerated in registers, never stored.
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "launch.h"
#include "mixing_device.cuh"

namespace majority_kernels {
namespace cuda {
namespace {

// Grid-stride loops over the packs of combine_at / scatter_at (mixing_device.cuh).
// One build per expansion E (dispatch_expansion; 0: the generic build).
template <int E, typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const in_t* weight, out_t* out, int64_t numel, const int64_t* seed, uint64_t offset,
                   int64_t expansion, bool vector) {
  constexpr int N = kVectorBytes / sizeof(in_t);
  const MixingArgs m = load_mixing(seed, offset, expansion);
  for (const int64_t pack : grid_stride(pack_count(numel, N), blockIdx.x, blockDim.x, gridDim.x, threadIdx.x))
    combine_at<E>(m, weight, out, numel, pack, vector);
}

template <int E, typename grad_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const grad_t* grad, out_t* grad_weight, int64_t numel, const int64_t* seed, uint64_t offset,
                   int64_t expansion, bool accumulate, bool vector) {
  constexpr int N = kVectorBytes / sizeof(out_t);
  const MixingArgs m = load_mixing(seed, offset, expansion);
  for (const int64_t pack : grid_stride(pack_count(numel, N), blockIdx.x, blockDim.x, gridDim.x, threadIdx.x))
    scatter_at<E>(m, grad, grad_weight, numel, pack, accumulate, vector);
}

at::Tensor combine(const at::Tensor& weight, const at::Tensor& seed, int64_t offset,
                   std::optional<at::ScalarType> out_dtype) {
  check_cuda_floating(weight, "combine", "weight");
  TORCH_CHECK(weight.dim() >= 1 && weight.size(0) >= 1,
              "majority_kernels.combine: weight needs a leading expansion dimension of size >= 1, got shape ",
              weight.sizes());
  const at::ScalarType dtype = out_dtype.value_or(weight.scalar_type());
  check_floating_dtype(dtype, "combine");
  const int64_t* seed_ptr = seed_pointer(seed, weight, "combine");
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor copies = weight.contiguous();
  const int64_t expansion = copies.size(0);
  const int64_t numel = copies.numel() / expansion;
  // Another pair of dtypes: into the math type, then cast.
  const at::ScalarType kernel_dtype =
      is_kernel_pair(copies.scalar_type(), dtype) ? dtype : math_dtype(copies.scalar_type());
  at::Tensor out = at::empty(copies.sizes().slice(1), copies.options().dtype(kernel_dtype));
  if (numel > 0) {
    dispatch_kernel_pair(copies.scalar_type(), kernel_dtype, "combine", [&](auto types) {
      using in_t = typename decltype(types)::first;
      using out_t = typename decltype(types)::second;
      constexpr int N = kVectorBytes / sizeof(in_t);
      const in_t* w = copies.const_data_ptr<in_t>();
      out_t* o = out.mutable_data_ptr<out_t>();
      // Copy k starts at k * numel: aligned packs in every copy need numel % N == 0 (vector_access).
      const bool vector = vector_access_at(w, o, numel, N, expansion);
      dispatch_expansion(expansion, [&](auto fixed) {
        combine_kernel<decltype(fixed)::value, in_t, out_t>
            <<<blocks_for(pack_count(numel, N)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                w, o, numel, seed_ptr, static_cast<uint64_t>(offset), expansion, vector);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return out.to(dtype);
}

// grad_weight [expansion, *grad.shape] (contiguous, on grad's device) = or += P * grad.
void scatter_into(at::Tensor& grad_weight, const at::Tensor& grad, const int64_t* seed, int64_t offset,
                  bool accumulate) {
  const at::ScalarType dtype = grad_weight.scalar_type();
  // Another pair of dtypes: grad cast to the math type first.
  const at::Tensor g =
      (is_kernel_pair(grad.scalar_type(), dtype) ? grad : grad.to(math_dtype(dtype))).contiguous();
  const int64_t expansion = grad_weight.size(0);
  const int64_t numel = g.numel();
  if (numel == 0) return;
  dispatch_kernel_pair(g.scalar_type(), dtype, "scatter", [&](auto types) {
    using grad_t = typename decltype(types)::first;
    using out_t = typename decltype(types)::second;
    constexpr int N = kVectorBytes / sizeof(out_t);
    const grad_t* gp = g.const_data_ptr<grad_t>();
    out_t* o = grad_weight.mutable_data_ptr<out_t>();
    const bool vector = vector_access_at(gp, o, numel, N, expansion);
    dispatch_expansion(expansion, [&](auto fixed) {
      scatter_kernel<decltype(fixed)::value, grad_t, out_t>
          <<<blocks_for(pack_count(numel, N)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              gp, o, numel, seed, static_cast<uint64_t>(offset), expansion, accumulate, vector);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

at::Tensor scatter(const at::Tensor& grad, const at::Tensor& seed, int64_t offset, int64_t expansion,
                   std::optional<at::ScalarType> out_dtype) {
  check_cuda_floating(grad, "scatter", "grad");
  TORCH_CHECK(expansion >= 1, "majority_kernels.scatter: expansion must be >= 1, got ", expansion);
  const at::ScalarType dtype = out_dtype.value_or(grad.scalar_type());
  check_floating_dtype(dtype, "scatter");
  const int64_t* seed_ptr = seed_pointer(seed, grad, "scatter");
  const c10::cuda::CUDAGuard guard(grad.device());
  std::vector<int64_t> shape{expansion};
  shape.insert(shape.end(), grad.sizes().begin(), grad.sizes().end());
  at::Tensor grad_weight = at::empty(shape, grad.options().dtype(dtype));
  scatter_into(grad_weight, grad, seed_ptr, offset, /*accumulate=*/false);
  return grad_weight;
}

void scatter_add_(at::Tensor& grad_weight, const at::Tensor& grad, const at::Tensor& seed, int64_t offset) {
  check_cuda_floating(grad, "scatter_add_", "grad");
  check_cuda_floating(grad_weight, "scatter_add_", "grad_weight");
  check_same_device(grad, grad_weight, "scatter_add_", "grad");
  TORCH_CHECK(grad_weight.dim() == grad.dim() + 1 && grad_weight.size(0) >= 1 &&
                  grad_weight.sizes().slice(1) == grad.sizes(),
              "majority_kernels.scatter_add_: grad_weight must have shape [expansion, *grad.shape], got ",
              grad_weight.sizes(), " for grad of shape ", grad.sizes());
  TORCH_CHECK(grad_weight.is_contiguous(), "majority_kernels.scatter_add_: grad_weight must be contiguous");
  const int64_t* seed_ptr = seed_pointer(seed, grad_weight, "scatter_add_");
  const c10::cuda::CUDAGuard guard(grad_weight.device());
  scatter_into(grad_weight, grad, seed_ptr, offset, /*accumulate=*/true);
}

// P itself: the scatter of a gradient of ones (an op for tests and inspection, not a hot path).
at::Tensor mixing_weights(const at::Tensor& seed, int64_t offset, int64_t expansion, int64_t numel) {
  TORCH_CHECK(seed.is_cuda(), "majority_kernels.mixing_weights: seed must be a CUDA tensor for the CUDA kernels, got ",
              seed.device());
  TORCH_CHECK(expansion >= 1, "majority_kernels.mixing_weights: expansion must be >= 1, got ", expansion);
  TORCH_CHECK(numel >= 0, "majority_kernels.mixing_weights: numel must be >= 0, got ", numel);
  const int64_t* seed_ptr = seed_pointer(seed, seed, "mixing_weights");
  const c10::cuda::CUDAGuard guard(seed.device());
  at::Tensor out = at::empty({expansion, numel}, seed.options().dtype(at::kFloat));
  scatter_into(out, at::ones({numel}, out.options()), seed_ptr, offset, /*accumulate=*/false);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(majority_kernels, CUDA, m) {
  m.impl("combine", &combine);
  m.impl("scatter", &scatter);
  m.impl("scatter_add_", &scatter_add_);
  m.impl("mixing_weights", &mixing_weights);
}

}  // namespace cuda
}  // namespace majority_kernels
