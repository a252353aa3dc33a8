// CPU kernels of the library's ops: combine, scatter (write or accumulate) and the materialised mixing weights.
// Parallel over blocks of elements with at::parallel_for; P is regenerated per block and never stored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "op_support.h"

namespace majority_kernels {
namespace cpu {
namespace {

// Runs body(first, lanes, mix) over every block of the elements [begin, end) (begin a multiple of kLanes), in
// parallel, with that block's P in `mix` (row k at mix + k * lanes): the generic path, for every dtype. The scratch
// is expansion * min(kLanes, end - begin) values per task: in proportion to the work, however large e is.
template <typename T, typename Body>
void for_each_mixed_block(const MixingArgs& args, int64_t begin, int64_t end, const Body& body) {
  const KernelTable& table = kernels();
  const int64_t blocks_end = (end + kLanes - 1) / kLanes;
  at::parallel_for(begin / kLanes, blocks_end, kBlocksPerTask, [&](int64_t first_block, int64_t last_block) {
    std::vector<T> mix(args.expansion * std::min(kLanes, end - first_block * kLanes));
    for (int64_t block = first_block; block < last_block; ++block) {
      const int64_t first = block * kLanes;
      const int64_t lanes = std::min(kLanes, end - first);
      compute_mixing(table, args, first, lanes, mix.data());
      body(first, lanes, mix.data());
    }
  });
}

// Runs fused(begin, end, scratch) over the whole blocks of `numel` elements in parallel, with a scratch of
// expansion * kLanes floats per task; returns where they end (the start of the partial last block, if any).
template <typename Fused>
int64_t for_whole_blocks(const MixingArgs& args, int64_t numel, const Fused& fused) {
  const int64_t whole_blocks = numel / kLanes;
  at::parallel_for(0, whole_blocks, kBlocksPerTask, [&](int64_t first_block, int64_t last_block) {
    std::vector<float> scratch(args.expansion * kLanes);
    fused(first_block * kLanes, last_block * kLanes, scratch.data());
  });
  return whole_blocks * kLanes;
}

// out[i] = sum_k P[k, i] * weight[k * numel + i] for i in [begin, numel), any dtypes.
template <typename in_t, typename out_t>
void combine_generic(const MixingArgs& args, const in_t* weight, int64_t numel, out_t* out, int64_t begin) {
  using T = math_t<in_t>;
  for_each_mixed_block<T>(args, begin, numel, [&](int64_t first, int64_t lanes, const T* mix) {
    T acc[kLanes];
    for (int64_t l = 0; l < lanes; ++l) acc[l] = mix[l] * static_cast<T>(weight[first + l]);
    for (int64_t k = 1; k < args.expansion; ++k) {
      const in_t* wk = weight + k * numel + first;
      const T* pk = mix + k * lanes;
      for (int64_t l = 0; l < lanes; ++l) acc[l] += pk[l] * static_cast<T>(wk[l]);
    }
    for (int64_t l = 0; l < lanes; ++l) out[first + l] = static_cast<out_t>(acc[l]);
  });
}

// The same in float32: the fused kernel for the whole blocks, the generic code for the partial last one.
void combine_float(const MixingArgs& args, const float* weight, int64_t numel, float* out) {
  const KernelTable& table = kernels();
  const int64_t begin = for_whole_blocks(args, numel, [&](int64_t first, int64_t last, float* scratch) {
    table.combine_f32(args, weight, numel, out, first, last, scratch);
  });
  combine_generic(args, weight, numel, out, begin);
}

// grad_weight[k * numel + i] = P[k, i] * grad[i] (accumulate = false) or += (accumulate = true) for i in
// [begin, numel), any dtypes.
template <typename in_t, typename out_t>
void scatter_generic(const MixingArgs& args, const in_t* grad, int64_t numel, out_t* grad_weight, bool accumulate,
                     int64_t begin) {
  using T = math_t<out_t>;
  for_each_mixed_block<T>(args, begin, numel, [&](int64_t first, int64_t lanes, const T* mix) {
    T g[kLanes];
    for (int64_t l = 0; l < lanes; ++l) g[l] = static_cast<T>(grad[first + l]);
    for (int64_t k = 0; k < args.expansion; ++k) {
      out_t* out = grad_weight + k * numel + first;
      const T* pk = mix + k * lanes;
      if (accumulate) {
        for (int64_t l = 0; l < lanes; ++l) out[l] = static_cast<out_t>(static_cast<T>(out[l]) + pk[l] * g[l]);
      } else {
        for (int64_t l = 0; l < lanes; ++l) out[l] = static_cast<out_t>(pk[l] * g[l]);
      }
    }
  });
}

// The same in float32: the fused kernel for the whole blocks, the generic code for the partial last one.
void scatter_float(const MixingArgs& args, const float* grad, int64_t numel, float* grad_weight, bool accumulate) {
  const KernelTable& table = kernels();
  const int64_t begin = for_whole_blocks(args, numel, [&](int64_t first, int64_t last, float* scratch) {
    table.scatter_f32(args, grad, numel, grad_weight, accumulate, first, last, scratch);
  });
  scatter_generic(args, grad, numel, grad_weight, accumulate, begin);
}

at::Tensor combine(const at::Tensor& weight, const at::Tensor& seed, int64_t offset,
                   std::optional<at::ScalarType> out_dtype) {
  check_floating(weight, "weight");
  TORCH_CHECK(weight.dim() >= 1 && weight.size(0) >= 1,
              "majority_kernels.combine: weight needs a leading expansion dimension of size >= 1, got shape ",
              weight.sizes());
  const at::Tensor copies = weight.contiguous();
  const MixingArgs args{read_seed(seed), static_cast<uint64_t>(offset), copies.size(0)};
  const int64_t numel = copies.numel() / args.expansion;
  const at::ScalarType dtype = out_dtype.value_or(copies.scalar_type());
  if (copies.scalar_type() == at::kFloat) {
    // Float32 weights, also with another out_dtype (float32 master weights under autocast): the fused kernel into
    // float32, then a cast, is cheaper than the generic code.
    at::Tensor out = at::empty(copies.sizes().slice(1), copies.options());
    if (numel > 0) combine_float(args, copies.const_data_ptr<float>(), numel, out.mutable_data_ptr<float>());
    return out.to(dtype);
  }
  at::Tensor out = at::empty(copies.sizes().slice(1), copies.options().dtype(dtype));
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, copies.scalar_type(), "combine_in", [&] {
    using in_t = scalar_t;
    const in_t* w = copies.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "combine_out", [&] {
      combine_generic(args, w, numel, out.mutable_data_ptr<scalar_t>(), 0);
    });
  });
  return out;
}

// grad_weight[k, i] = P[k, i] * grad[i], written (accumulate = false) or added in place (accumulate = true).
void scatter_into(at::Tensor& grad_weight, const at::Tensor& grad, uint64_t seed, int64_t offset, bool accumulate) {
  const MixingArgs args{seed, static_cast<uint64_t>(offset), grad_weight.size(0)};
  const int64_t numel = grad.numel();
  if (numel == 0) return;
  if (grad_weight.scalar_type() == at::kFloat) {
    // Float32 gradients, also from another grad dtype (autocast): a cast to float32, then the fused kernel.
    const at::Tensor g = grad.to(at::kFloat).contiguous();
    scatter_float(args, g.const_data_ptr<float>(), numel, grad_weight.mutable_data_ptr<float>(), accumulate);
    return;
  }
  const at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "scatter_in", [&] {
    using in_t = scalar_t;
    const in_t* gp = g.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "scatter_out", [&] {
      scatter_generic(args, gp, numel, grad_weight.mutable_data_ptr<scalar_t>(), accumulate, 0);
    });
  });
}

at::Tensor scatter(const at::Tensor& grad, const at::Tensor& seed, int64_t offset, int64_t expansion,
                   std::optional<at::ScalarType> out_dtype) {
  check_floating(grad, "grad");
  TORCH_CHECK(expansion >= 1, "majority_kernels.scatter: expansion must be >= 1, got ", expansion);
  const uint64_t seed_value = read_seed(seed);
  std::vector<int64_t> shape{expansion};
  shape.insert(shape.end(), grad.sizes().begin(), grad.sizes().end());
  at::Tensor grad_weight = at::empty(shape, grad.options().dtype(out_dtype.value_or(grad.scalar_type())));
  scatter_into(grad_weight, grad, seed_value, offset, /*accumulate=*/false);
  return grad_weight;
}

void scatter_add_(at::Tensor& grad_weight, const at::Tensor& grad, const at::Tensor& seed, int64_t offset) {
  check_floating(grad, "grad");
  check_floating(grad_weight, "grad_weight");
  TORCH_CHECK(grad_weight.dim() == grad.dim() + 1 && grad_weight.sizes().slice(1) == grad.sizes(),
              "majority_kernels.scatter_add_: grad_weight must have shape [expansion, *grad.shape], got ",
              grad_weight.sizes(), " for grad of shape ", grad.sizes());
  TORCH_CHECK(grad_weight.is_contiguous(), "majority_kernels.scatter_add_: grad_weight must be contiguous");
  scatter_into(grad_weight, grad, read_seed(seed), offset, /*accumulate=*/true);
}

at::Tensor mixing_weights(const at::Tensor& seed, int64_t offset, int64_t expansion, int64_t numel) {
  TORCH_CHECK(expansion >= 1, "majority_kernels.mixing_weights: expansion must be >= 1, got ", expansion);
  TORCH_CHECK(numel >= 0, "majority_kernels.mixing_weights: numel must be >= 0, got ", numel);
  const MixingArgs args{read_seed(seed), static_cast<uint64_t>(offset), expansion};
  at::Tensor out = at::empty({expansion, numel}, seed.options().dtype(at::kFloat));
  float* o = out.mutable_data_ptr<float>();
  for_each_mixed_block<float>(args, 0, numel, [&](int64_t first, int64_t lanes, const float* mix) {
    for (int64_t k = 0; k < expansion; ++k)
      for (int64_t l = 0; l < lanes; ++l) o[k * numel + first + l] = mix[k * lanes + l];
  });
  return out;
}
}  // namespace

TORCH_LIBRARY_IMPL(majority_kernels, CPU, m) {
  m.impl("combine", &combine);
  m.impl("scatter", &scatter);
  m.impl("scatter_add_", &scatter_add_);
  m.impl("mixing_weights", &mixing_weights);
}

}  // namespace cpu
}  // namespace majority_kernels
