// The CPU kernels built for AVX2 and FMA, chosen at run time by mixing_kernels.cpp. The target pragma precedes
// every header with code in it, so it covers every function this file compiles (see kernel_table.h).
#include "kernel_table.h"
#if MK_CPU_X86_BUILDS
#pragma GCC target("avx2,fma")
#define MK_CPU_AVX2 1
#include "mixing_block.h"

namespace majority_kernels {
namespace cpu {
extern const KernelTable kAvx2Kernels = avx2::kKernels;
}  // namespace cpu
}  // namespace majority_kernels
#endif
