// The CPU kernels built for the compiler's baseline target (SSE2 on x86-64, NEON on aarch64): the loops over
// lanes are left to the vectoriser. Always built; the only build outside x86-64 with GCC.
#include "mixing_block.h"

namespace majority_kernels {
namespace cpu {
extern const KernelTable kPortableKernels = portable::kKernels;
}  // namespace cpu
}  // namespace majority_kernels
