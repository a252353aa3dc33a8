// The CUDA combine and scatter kernels' per-pack bodies (csrc/cuda/mixing_device.cuh) built for the CPU, called
// through ctypes by tests/test_cuda.py to check them against the reference without a GPU: the same loop over packs
// as the kernels', one pack after the other instead of one per thread. Float32 and float64.
#include "launch_config.h"
#include "mixing_device.cuh"

namespace {

using majority_kernels::MixingArgs;
using majority_kernels::cuda::combine_at;
using majority_kernels::cuda::dispatch_expansion;
using majority_kernels::cuda::kVectorBytes;
using majority_kernels::cuda::pack_count;
using majority_kernels::cuda::scatter_at;

template <typename T>
void combine(uint64_t seed, uint64_t offset, int64_t expansion, const T* weight, T* out, int64_t numel, int vector) {
  const MixingArgs m{seed, offset, expansion};
  dispatch_expansion(expansion, [&](auto fixed) {
    for (int64_t pack = 0; pack < pack_count(numel, kVectorBytes / sizeof(T)); ++pack)
      combine_at<decltype(fixed)::value>(m, weight, out, numel, pack, vector != 0);
  });
}

template <typename T>
void scatter(uint64_t seed, uint64_t offset, int64_t expansion, const T* grad, T* grad_weight, int64_t numel,
             int accumulate, int vector) {
  const MixingArgs m{seed, offset, expansion};
  dispatch_expansion(expansion, [&](auto fixed) {
    for (int64_t pack = 0; pack < pack_count(numel, kVectorBytes / sizeof(T)); ++pack)
      scatter_at<decltype(fixed)::value>(m, grad, grad_weight, numel, pack, accumulate != 0, vector != 0);
  });
}

}  // namespace

extern "C" {
void mk_combine_float(uint64_t seed, uint64_t offset, int64_t expansion, const float* weight, float* out,
                      int64_t numel, int vector) {
  combine(seed, offset, expansion, weight, out, numel, vector);
}
void mk_combine_double(uint64_t seed, uint64_t offset, int64_t expansion, const double* weight, double* out,
                       int64_t numel, int vector) {
  combine(seed, offset, expansion, weight, out, numel, vector);
}
void mk_scatter_float(uint64_t seed, uint64_t offset, int64_t expansion, const float* grad, float* grad_weight,
                      int64_t numel, int accumulate, int vector) {
  scatter(seed, offset, expansion, grad, grad_weight, numel, accumulate, vector);
}
void mk_scatter_double(uint64_t seed, uint64_t offset, int64_t expansion, const double* grad, double* grad_weight,
                       int64_t numel, int accumulate, int vector) {
  scatter(seed, offset, expansion, grad, grad_weight, numel, accumulate, vector);
}
}
