// Definitions of op_support.h.
#include "op_support.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>

namespace majority_kernels {
namespace cpu {

const KernelTable& kernels() {
  static const KernelTable& table = []() -> const KernelTable& {
    // Read as MK_BACKEND is: any case, surrounding spaces ignored, unset or empty for the default.
    const char* cap = std::getenv("MK_CPU_CAPABILITY");
    std::string limit = cap != nullptr ? cap : "";
    limit.erase(0, limit.find_first_not_of(" \t\n"));
    limit.erase(limit.find_last_not_of(" \t\n") + 1);
    std::transform(limit.begin(), limit.end(), limit.begin(), [](unsigned char c) { return std::tolower(c); });
    if (limit.empty()) limit = "avx512";
    TORCH_CHECK(limit == "avx512" || limit == "avx2" || limit == "portable",
                "majority_kernels: MK_CPU_CAPABILITY must be avx512, avx2 or portable, got '", cap, "'");
#if MK_CPU_X86_BUILDS
    __builtin_cpu_init();
    if (limit == "avx512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return kAvx512Kernels;
    if (limit != "portable" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2Kernels;
#endif
    return kPortableKernels;
  }();
  return table;
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

}  // namespace cpu
}  // namespace majority_kernels
