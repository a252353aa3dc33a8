// What each instruction-set build of the CPU kernels exports to mixing_kernels.cpp, which picks one at run time.
//
// kernels_avx512.cpp, kernels_avx2.cpp and kernels_portable.cpp compile the same code (mixing_block.h) for
// different instruction sets, each in its own namespace. They include no ATen and no C++ standard library headers
// with code in them (C headers, <immintrin.h> and <type_traits> only), and every function they share with other
// files is always_inline: an inline
// function that one of them emitted out of line (std::min, a std::vector method) could be the copy the linker
// keeps for the whole library, and would then run AVX-512 code on processors without it. (`nm -C` on their
// object files lists the four kernels and the table, and C's memcpy, which GCC makes of a copy loop; nothing
// else.) They hand over plain function pointers.
#pragma once

#include <stdint.h>

// The AVX2 and AVX-512 builds need GCC's `#pragma GCC target` and x86-64; elsewhere only the portable build exists.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MK_CPU_X86_BUILDS 1
#else
#define MK_CPU_X86_BUILDS 0
#endif

namespace majority_kernels {

// Defined in majority_kernels/mixing.h, which the kernel files include after their target pragma: code included
// before it would be compiled for the baseline instruction set.
struct MixingArgs;

namespace cpu {

// Elements per block: P is generated for kLanes consecutive elements at a time (128 measured faster than 64 or 256
// with AVX-512).
constexpr int64_t kLanes = 128;

struct KernelTable {
  // The instruction set of the build: "avx512", "avx2" or "portable".
  const char* name;
  // mix[k * lanes + l] = P[k, first + l] for the `lanes` <= kLanes elements from `first`, in float, or double for
  // the float64 kernel; `mix` holds expansion * lanes values.
  void (*mixing_f32)(const MixingArgs& args, int64_t first, int64_t lanes, float* mix);
  void (*mixing_f64)(const MixingArgs& args, int64_t first, int64_t lanes, double* mix);
  // Float32 kernels over the elements [begin, end) of whole blocks (begin and end multiples of kLanes, end <= numel),
  // with `scratch` of expansion * kLanes floats: out[i] = sum_k P[k, i] * weight[k * numel + i].
  void (*combine_f32)(const MixingArgs& args, const float* weight, int64_t numel, float* out, int64_t begin,
                      int64_t end, float* scratch);
  // grad_weight[k * numel + i] = P[k, i] * grad[i], or += with accumulate.
  void (*scatter_f32)(const MixingArgs& args, const float* grad, int64_t numel, float* grad_weight, bool accumulate,
                      int64_t begin, int64_t end, float* scratch);
};

extern const KernelTable kPortableKernels;
#if MK_CPU_X86_BUILDS
extern const KernelTable kAvx2Kernels;    // AVX2 + FMA
extern const KernelTable kAvx512Kernels;  // AVX-512 F, DQ, BW, VL
#endif

}  // namespace cpu
}  // namespace majority_kernels
