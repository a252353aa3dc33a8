// The CPU kernels built for AVX-512 (F, DQ, BW, VL; with them AVX2 and FMA), chosen at run time by
// mixing_kernels.cpp. The target pragma precedes every header with code in it, so it covers every function this
// file compiles (see kernel_table.h).
#include "kernel_table.h"
#if MK_CPU_X86_BUILDS
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
// GCC 12's own _mm512_undefined_epi32 trips -Wmaybe-uninitialized (GCC bug 105593); the same code is checked
// without this pragma in the other builds.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MK_CPU_AVX512 1
#include "mixing_block.h"

namespace majority_kernels {
namespace cpu {
extern const KernelTable kAvx512Kernels = avx512::kKernels;
}  // namespace cpu
}  // namespace majority_kernels
#endif
