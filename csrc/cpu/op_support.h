// What the CPU ops share (mixing_kernels.cpp, embedding_kernels.cpp): the kernel build chosen for this processor,
// the materialised mixing of one block in the math type, and the checks of their common arguments.
// Includes ATen, so never from the per-instruction-set files (see kernel_table.h).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kernel_table.h"
#include "majority_kernels/mixing.h"

namespace majority_kernels {
namespace cpu {

// The kernel build for this processor, chosen once: AVX-512, AVX2 or portable, at most the level named by the
// environment variable MK_CPU_CAPABILITY (avx512, avx2 or portable: to test and time the lower ones).
const KernelTable& kernels();

// mix[k * lanes + l] = P[k, first + l], in the math type (math_t of mixing.h).
inline void compute_mixing(const KernelTable& table, const MixingArgs& args, int64_t first, int64_t lanes,
                           float* mix) {
  table.mixing_f32(args, first, lanes, mix);
}

inline void compute_mixing(const KernelTable& table, const MixingArgs& args, int64_t first, int64_t lanes,
                           double* mix) {
  table.mixing_f64(args, first, lanes, mix);
}

// Blocks of kLanes elements per task at least, enough to amortise the scheduling.
constexpr int64_t kBlocksPerTask = 16;

// The seed of a one-element int64 CPU tensor, checked to lie in [0, 2^63).
uint64_t read_seed(const at::Tensor& seed);

// t must be a floating-point CPU tensor; `name` is the argument named in the error.
void check_floating(const at::Tensor& t, const char* name);

}  // namespace cpu
}  // namespace majority_kernels
