// CPU kernels of the library's ops: combine, scatter (write or accumulate) and the materialised mixing weights.
// Parallel over blocks of elements with at::parallel_for; P is regenerated per block and never stored.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "mixing_block.h"

namespace majority_kernels {
namespace cpu {
namespace {

// The RNG and log loops are the expensive part: on x86-64 compile them twice, baseline and AVX2/FMA, and let the
// loader pick the one the processor runs (GCC/Clang function multiversioning); elsewhere compile them once.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MK_SIMD_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define MK_SIMD_CLONES
#endif

MK_SIMD_CLONES void mixing_block_f32(uint64_t seed, uint64_t offset, int64_t expansion, int64_t first,
                                     uint32_t* words, float* mix) {
  mixing_block<float>(seed, offset, expansion, first, words, mix);
}

MK_SIMD_CLONES void mixing_block_f64(uint64_t seed, uint64_t offset, int64_t expansion, int64_t first,
                                     uint32_t* words, double* mix) {
  mixing_block<double>(seed, offset, expansion, first, words, mix);
}

inline void compute_mixing(uint64_t seed, uint64_t offset, int64_t expansion, int64_t first, uint32_t* words,
                           float* mix) {
  mixing_block_f32(seed, offset, expansion, first, words, mix);
}

inline void compute_mixing(uint64_t seed, uint64_t offset, int64_t expansion, int64_t first, uint32_t* words,
                           double* mix) {
  mixing_block_f64(seed, offset, expansion, first, words, mix);
}

// Float64 tensors mix in double; every other dtype in float.
template <typename scalar_t>
using math_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Blocks of kLanes elements per task, enough blocks per task to amortise the scheduling.
constexpr int64_t kBlocksPerTask = 16;

// Runs body(first, lanes, mix) over every block of `numel` elements, in parallel, with that block's P in `mix`.
template <typename T, typename Body>
void for_each_mixed_block(uint64_t seed, uint64_t offset, int64_t expansion, int64_t numel, const Body& body) {
  const int64_t blocks = (numel + kLanes - 1) / kLanes;
  at::parallel_for(0, blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> words(4 * kLanes);
    std::vector<T> mix(expansion * kLanes);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kLanes;
      compute_mixing(seed, offset, expansion, first, words.data(), mix.data());
      body(first, std::min(kLanes, numel - first), mix.data());
    }
  });
}

uint64_t read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong,
              "majority_kernels: seed must be a one-element int64 tensor, got ", seed.scalar_type(), " of shape ",
              seed.sizes());
  TORCH_CHECK(seed.device().is_cpu(), "majority_kernels: the CPU kernels need the seed on the CPU, got ",
              seed.device());
  const int64_t value = seed.item<int64_t>();
  TORCH_CHECK(value >= 0, "majority_kernels: seed must lie in [0, 2^63), got ", value);
  return static_cast<uint64_t>(value);
}

void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "majority_kernels: ", name, " must be a CPU tensor for the CPU kernels, got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "majority_kernels: ", name,
              " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
}

at::Tensor combine(const at::Tensor& weight, const at::Tensor& seed, int64_t offset,
                   std::optional<at::ScalarType> out_dtype) {
  check_floating(weight, "weight");
  TORCH_CHECK(weight.dim() >= 1 && weight.size(0) >= 1,
              "majority_kernels.combine: weight needs a leading expansion dimension of size >= 1, got shape ",
              weight.sizes());
  const uint64_t seed_value = read_seed(seed);
  const at::Tensor copies = weight.contiguous();
  const int64_t expansion = copies.size(0);
  const int64_t numel = copies.numel() / expansion;
  at::Tensor out = at::empty(copies.sizes().slice(1), copies.options().dtype(out_dtype.value_or(copies.scalar_type())));
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, copies.scalar_type(), "combine_in", [&] {
    using in_t = scalar_t;
    const in_t* w = copies.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "combine_out", [&] {
      using out_t = scalar_t;
      using T = math_t<in_t>;
      out_t* o = out.mutable_data_ptr<out_t>();
      for_each_mixed_block<T>(seed_value, offset, expansion, numel, [&](int64_t first, int64_t lanes, const T* mix) {
        T acc[kLanes];
        for (int64_t l = 0; l < lanes; ++l) acc[l] = mix[l] * static_cast<T>(w[first + l]);
        for (int64_t k = 1; k < expansion; ++k) {
          const in_t* wk = w + k * numel + first;
          const T* pk = mix + k * kLanes;
          for (int64_t l = 0; l < lanes; ++l) acc[l] += pk[l] * static_cast<T>(wk[l]);
        }
        for (int64_t l = 0; l < lanes; ++l) o[first + l] = static_cast<out_t>(acc[l]);
      });
    });
  });
  return out;
}

// grad_weight[k, i] = P[k, i] * grad[i], written (accumulate = false) or added in place (accumulate = true).
void scatter_into(at::Tensor& grad_weight, const at::Tensor& grad, uint64_t seed, int64_t offset, bool accumulate) {
  const at::Tensor g = grad.contiguous();
  const int64_t expansion = grad_weight.size(0);
  const int64_t numel = g.numel();
  if (numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "scatter_in", [&] {
    using in_t = scalar_t;
    const in_t* gp = g.const_data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "scatter_out", [&] {
      using out_t = scalar_t;
      using T = math_t<out_t>;
      out_t* o = grad_weight.mutable_data_ptr<out_t>();
      for_each_mixed_block<T>(seed, offset, expansion, numel, [&](int64_t first, int64_t lanes, const T* mix) {
        T gl[kLanes];
        for (int64_t l = 0; l < lanes; ++l) gl[l] = static_cast<T>(gp[first + l]);
        for (int64_t k = 0; k < expansion; ++k) {
          out_t* ok = o + k * numel + first;
          const T* pk = mix + k * kLanes;
          if (accumulate) {
            for (int64_t l = 0; l < lanes; ++l) ok[l] = static_cast<out_t>(static_cast<T>(ok[l]) + pk[l] * gl[l]);
          } else {
            for (int64_t l = 0; l < lanes; ++l) ok[l] = static_cast<out_t>(pk[l] * gl[l]);
          }
        }
      });
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
  const uint64_t seed_value = read_seed(seed);
  at::Tensor out = at::empty({expansion, numel}, seed.options().dtype(at::kFloat));
  float* o = out.mutable_data_ptr<float>();
  for_each_mixed_block<float>(seed_value, offset, expansion, numel,
                              [&](int64_t first, int64_t lanes, const float* mix) {
                                for (int64_t k = 0; k < expansion; ++k)
                                  for (int64_t l = 0; l < lanes; ++l) o[k * numel + first + l] = mix[k * kLanes + l];
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
