// The fused forward of the mixed linear layer for few input rows (decode, small batches):
// out = input @ W_eff^T + bias with W_eff = sum_k P_k * weight[k], never written to memory.
//
// With few rows, reading the e copies of W is the whole cost, so each weight element is read and mixed once per
// tile of kRowsPerTile input rows: one warp per output feature n walks row n of every copy in packs of 16 bytes,
// mixes them in registers and multiplies with the tile's input rows (small: read through the L1 cache), each lane
// keeping one partial sum per input row; a warp reduction ends the row. Tiles of more rows re-run the mixing, so
// the caller takes this path only for small M (majority_kernels/cuda_ops.py).
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "launch.h"
#include "mixing_device.cuh"

namespace majority_kernels {
namespace cuda {
namespace {

// Input rows per tile (grid dimension y): the partial sums each lane keeps in registers.
constexpr int kRowsPerTile = 16;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;

// out[r, n] = sum_i input[r, i] * W_eff[n, i] + bias[n] for the rows r of the tile blockIdx.y.
template <int E, typename w_t, typename x_t>
__global__ void __launch_bounds__(kThreads)
    mixed_linear_kernel(const x_t* input, const w_t* weight, const math_t<w_t>* bias, x_t* out, int64_t rows,
                        int64_t features_out, int64_t features_in, const int64_t* seed, uint64_t offset,
                        int64_t expansion, bool vector_weight, bool vector_input) {
  using T = math_t<w_t>;
  constexpr int N = kVectorBytes / sizeof(w_t);
  const MixingArgs m = load_mixing(seed, offset, expansion);
  const int lane = threadIdx.x % kWarpSize;
  const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kRowsPerTile;
  const int tile_rows = rows_in_tile(rows, blockIdx.y, kRowsPerTile);
  const x_t* x = input + first_row * features_in;
  const int64_t copy_stride = features_out * features_in;
  // One warp per output feature n.
  for (const int64_t n : grid_stride(features_out, blockIdx.x, kWarpsPerBlock, gridDim.x, threadIdx.x / kWarpSize)) {
    T acc[kRowsPerTile];
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r) acc[r] = T(0);
    const int64_t row_start = n * features_in;
    for (const int64_t i : Strided(static_cast<int64_t>(lane) * N, kWarpSize * N, features_in)) {
      const int valid = valid_lanes(features_in, i, N);
      T mixed[N];
      mix_pack<E, N>(m, weight + row_start + i, copy_stride, row_start + i, valid, vector_weight && valid == N, mixed);
#pragma unroll
      for (int r = 0; r < kRowsPerTile; ++r) {
        if (r >= tile_rows) break;
        const Pack<x_t, N> xs = load_pack<N>(x + r * features_in + i, valid, vector_input && valid == N);
#pragma unroll
        for (int j = 0; j < N; ++j) acc[r] += mixed[j] * static_cast<T>(xs.v[j]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r) {
      if (r >= tile_rows) break;
#pragma unroll
      for (int delta = kWarpSize / 2; delta > 0; delta /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], delta);
      // Every lane holds the sum; lane r writes row r.
      if (lane == r)
        out[(first_row + r) * features_out + n] = static_cast<x_t>(acc[r] + (bias != nullptr ? bias[n] : T(0)));
    }
  }
}

at::Tensor mixed_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& seed, int64_t offset) {
  check_cuda_floating(input, "mixed_linear", "input");
  check_cuda_floating(weight, "mixed_linear", "weight");
  check_same_device(input, weight, "mixed_linear", "input");
  TORCH_CHECK(weight.dim() == 3 && weight.size(0) >= 1,
              "majority_kernels.mixed_linear: weight must have shape [expansion, out_features, in_features], got ",
              weight.sizes());
  TORCH_CHECK(input.dim() == 2 && input.size(1) == weight.size(2),
              "majority_kernels.mixed_linear: input must have shape [rows, in_features = ", weight.size(2), "], got ",
              input.sizes());
  TORCH_CHECK(is_kernel_pair(weight.scalar_type(), input.scalar_type()),
              "majority_kernels.mixed_linear: weight and input must have the same dtype, or float32 weight with "
              "bfloat16 or float16 input and the other way round; got weight ", weight.scalar_type(), " and input ",
              input.scalar_type());
  const at::ScalarType math = math_dtype(weight.scalar_type());
  at::Tensor bias_values;
  if (bias.has_value()) {
    check_cuda_floating(*bias, "mixed_linear", "bias");
    check_same_device(*bias, weight, "mixed_linear", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(1),
                "majority_kernels.mixed_linear: bias must have shape [out_features = ", weight.size(1), "], got ",
                bias->sizes());
    bias_values = bias->to(math).contiguous();
  }
  const int64_t* seed_ptr = seed_pointer(seed, weight, "mixed_linear");
  const c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor copies = weight.contiguous();
  const int64_t rows = x.size(0), features_in = x.size(1);
  const int64_t expansion = copies.size(0), features_out = copies.size(1);
  at::Tensor out = at::empty({rows, features_out}, x.options());
  if (rows == 0 || features_out == 0) return out;
  const int64_t tiles = ceil_div(rows, kRowsPerTile);
  TORCH_CHECK(tiles <= kMaxGridY, "majority_kernels.mixed_linear: at most ", kMaxGridY * kRowsPerTile,
              " input rows (the fused path is meant for few rows), got ", rows);
  // One warp (kWarpSize threads) per output feature.
  const dim3 grid(blocks_for(features_out * kWarpSize), static_cast<unsigned int>(tiles));
  dispatch_kernel_pair(copies.scalar_type(), x.scalar_type(), "mixed_linear", [&](auto types) {
    using w_t = typename decltype(types)::first;
    using x_t = typename decltype(types)::second;
    using T = math_t<w_t>;
    constexpr int N = kVectorBytes / sizeof(w_t);
    const w_t* w = copies.const_data_ptr<w_t>();
    const x_t* xp = x.const_data_ptr<x_t>();
    // Row n of copy k starts at (k * out_features + n) * in_features: aligned packs need in_features % N == 0.
    const bool vector_weight = vector_access_at(w, w, features_in, N, expansion * features_out);
    const bool vector_input = vector_access_at(xp, xp, features_in, N, rows);
    dispatch_expansion(expansion, [&](auto fixed) {
      mixed_linear_kernel<decltype(fixed)::value, w_t, x_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xp, w, bias.has_value() ? bias_values.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<x_t>(), rows,
          features_out, features_in, seed_ptr, static_cast<uint64_t>(offset), expansion, vector_weight,
          vector_input);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(majority_kernels, CUDA, m) { m.impl("mixed_linear", &mixed_linear); }

}  // namespace cuda
}  // namespace majority_kernels
