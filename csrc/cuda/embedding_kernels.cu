// CUDA kernels of the embedding ops: the looked-up rows of the mixed table, and their gradient added into the
// copies. Element (r, d) of the [rows, dim] table draws its P from its flat index r * dim + d, as in the full table.
// One thread per pack of N columns of one looked-up row; an out-of-range index is a device-side assert, as in
// torch's own CUDA embedding.
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "launch.h"
#include "mixing_device.cuh"

namespace majority_kernels {
namespace cuda {
namespace {

// out[l, d] = sum_k P[k, r * dim + d] * weight[k, r, d] with r = indices[l], in the math type.
template <int E, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    embedding_combine_kernel(const scalar_t* weight, const int64_t* indices, math_t<scalar_t>* out, int64_t lookups,
                             int64_t rows, int64_t dim, const int64_t* seed, uint64_t offset, int64_t expansion,
                             bool vector) {
  constexpr int N = kVectorBytes / sizeof(scalar_t);
  const MixingArgs m = load_mixing(seed, offset, expansion);
  const int64_t packs = lookups * pack_count(dim, N);
  for (const int64_t pack : grid_stride(packs, blockIdx.x, blockDim.x, gridDim.x, threadIdx.x)) {
    const RowPack at = row_pack(pack, dim, N);
    const int64_t lookup = at.lookup, d = at.column;
    const int valid = at.valid;
    const int64_t row = indices[lookup];
    CUDA_KERNEL_ASSERT_MSG(row >= 0 && row < rows, "majority_kernels.embedding_combine: index out of range");
    const bool full = vector && valid == N;
    const int64_t element = row * dim + d;
    math_t<scalar_t> mixed[N];
    mix_pack<E, N>(m, weight + element, rows * dim, element, valid, full, mixed);
    store_pack<N>(out + lookup * dim + d, mixed, valid, full);
  }
}

// grad_weight[k, r, d] += P[k, r * dim + d] * grad[l, d] with r = indices[l]; atomic, as rows repeat.
template <int E, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    embedding_scatter_add_kernel(const math_t<scalar_t>* grad, const int64_t* indices, scalar_t* grad_weight,
                                 int64_t lookups, int64_t rows, int64_t dim, const int64_t* seed, uint64_t offset,
                                 int64_t expansion, bool vector) {
  constexpr int N = kVectorBytes / sizeof(scalar_t);
  using T = math_t<scalar_t>;
  const MixingArgs m = load_mixing(seed, offset, expansion);
  const int64_t packs = lookups * pack_count(dim, N);
  for (const int64_t pack : grid_stride(packs, blockIdx.x, blockDim.x, gridDim.x, threadIdx.x)) {
    const RowPack at = row_pack(pack, dim, N);
    const int64_t lookup = at.lookup, d = at.column;
    const int valid = at.valid;
    const int64_t row = indices[lookup];
    CUDA_KERNEL_ASSERT_MSG(row >= 0 && row < rows, "majority_kernels.embedding_scatter_add_: index out of range");
    const Pack<T, N> values = load_pack<N>(grad + lookup * dim + d, valid, vector && valid == N);
    const int64_t element = row * dim + d;
    scalar_t* target = grad_weight + element;
    const int64_t copy_stride = rows * dim;
    scatter_pack<E, N>(
        m, element, values.v, valid,
        [&](auto& mixed) {
#pragma unroll
          for (int k = 0; k < E; ++k)
#pragma unroll
            for (int j = 0; j < N; ++j)
              if (j < valid) gpuAtomicAddNoReturn(target + k * copy_stride + j, static_cast<scalar_t>(mixed[k][j]));
        },
        [&](int64_t k, int j, T value) {
          gpuAtomicAddNoReturn(target + k * copy_stride + j, static_cast<scalar_t>(value));
        });
  }
}

void check_indices(const at::Tensor& indices, const at::Tensor& like, const char* op) {
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, "majority_kernels.", op,
              ": indices must be int64 or int32, got ", indices.scalar_type());
  check_same_device(indices, like, op, "indices");
}

at::Tensor embedding_combine(const at::Tensor& weight, const at::Tensor& indices, const at::Tensor& seed,
                             int64_t offset, std::optional<at::ScalarType> out_dtype) {
  check_cuda_floating(weight, "embedding_combine", "weight");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) >= 1,
              "majority_kernels.embedding_combine: weight must have shape [expansion, rows, dim], got ",
              weight.sizes());
  check_indices(indices, weight, "embedding_combine");
  const at::ScalarType dtype = out_dtype.value_or(weight.scalar_type());
  check_floating_dtype(dtype, "embedding_combine");
  const int64_t* seed_ptr = seed_pointer(seed, weight, "embedding_combine");
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor table = weight.contiguous();
  const at::Tensor rows_looked_up = indices.to(at::kLong).contiguous();
  const int64_t expansion = table.size(0), rows = table.size(1), dim = table.size(2);
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(dim);
  // Written in the math type, then cast: the output is small (lookups x dim), and one kernel per table dtype.
  at::Tensor out = at::empty(shape, table.options().dtype(math_dtype(table.scalar_type())));
  const int64_t lookups = rows_looked_up.numel();
  if (lookups > 0 && dim > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "embedding_combine", [&] {
      using out_t = math_t<scalar_t>;
      constexpr int N = kVectorBytes / sizeof(scalar_t);
      const scalar_t* w = table.const_data_ptr<scalar_t>();
      out_t* o = out.mutable_data_ptr<out_t>();
      // Rows of the table and of the output start at multiples of dim.
      const bool vector = vector_access_at(w, o, dim, N, std::max(expansion * rows, lookups));
      dispatch_expansion(expansion, [&](auto fixed) {
        embedding_combine_kernel<decltype(fixed)::value, scalar_t>
            <<<blocks_for(lookups * pack_count(dim, N)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                w, rows_looked_up.const_data_ptr<int64_t>(), o, lookups, rows, dim, seed_ptr,
                static_cast<uint64_t>(offset), expansion, vector);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return out.to(dtype);
}

void embedding_scatter_add_(at::Tensor& grad_weight, const at::Tensor& grad, const at::Tensor& indices,
                            const at::Tensor& seed, int64_t offset) {
  check_cuda_floating(grad_weight, "embedding_scatter_add_", "grad_weight");
  check_cuda_floating(grad, "embedding_scatter_add_", "grad");
  check_same_device(grad, grad_weight, "embedding_scatter_add_", "grad");
  check_indices(indices, grad_weight, "embedding_scatter_add_");
  TORCH_CHECK(grad_weight.dim() == 3 && grad_weight.size(0) >= 1,
              "majority_kernels.embedding_scatter_add_: grad_weight must have shape [expansion, rows, dim], got ",
              grad_weight.sizes());
  TORCH_CHECK(grad_weight.is_contiguous(), "majority_kernels.embedding_scatter_add_: grad_weight must be contiguous");
  std::vector<int64_t> expected(indices.sizes().begin(), indices.sizes().end());
  expected.push_back(grad_weight.size(2));
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected),
              "majority_kernels.embedding_scatter_add_: grad must have shape ", at::IntArrayRef(expected),
              " ([*indices.shape, dim]), got ", grad.sizes());
  const int64_t* seed_ptr = seed_pointer(seed, grad_weight, "embedding_scatter_add_");
  const c10::cuda::CUDAGuard guard(grad_weight.device());
  // grad in the math type: one kernel per table dtype, and grad is small (lookups x dim).
  const at::Tensor g = grad.to(math_dtype(grad_weight.scalar_type())).contiguous();
  const at::Tensor rows_looked_up = indices.to(at::kLong).contiguous();
  const int64_t expansion = grad_weight.size(0), rows = grad_weight.size(1), dim = grad_weight.size(2);
  const int64_t lookups = rows_looked_up.numel();
  if (lookups == 0 || dim == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "embedding_scatter_add_", [&] {
    using T = math_t<scalar_t>;
    constexpr int N = kVectorBytes / sizeof(scalar_t);
    const T* gp = g.const_data_ptr<T>();
    const bool vector = vector_access_at(gp, gp, dim, N, lookups);
    dispatch_expansion(expansion, [&](auto fixed) {
      embedding_scatter_add_kernel<decltype(fixed)::value, scalar_t>
          <<<blocks_for(lookups * pack_count(dim, N)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              gp, rows_looked_up.const_data_ptr<int64_t>(), grad_weight.mutable_data_ptr<scalar_t>(), lookups, rows,
              dim, seed_ptr, static_cast<uint64_t>(offset), expansion, vector);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(majority_kernels, CUDA, m) {
  m.impl("embedding_combine", &embedding_combine);
  m.impl("embedding_scatter_add_", &embedding_scatter_add_);
}

}  // namespace cuda
}  // namespace majority_kernels
