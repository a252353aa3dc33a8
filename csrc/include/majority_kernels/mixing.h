// The random mixing weights of DESIGN.md section 4, once for every C++ backend.
//
// Framework-free: only <stdint.h>, <string.h> and <math.h>, usable from host code (the CPU kernels) and from CUDA device
// code (the CUDA kernels include this same header). Every function is a small inline building block; the
// kernels decide how to lay them out over elements (blocks of lanes on the CPU, threads on the GPU).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MK_HOST_DEVICE __host__ __device__ __forceinline__
#define MK_UNROLL _Pragma("unroll")
#else
#define MK_HOST_DEVICE inline __attribute__((always_inline))
#define MK_UNROLL _Pragma("GCC unroll 16")
#endif

namespace majority_kernels {

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), the generator behind Triton's
// tl.randint4x and PyTorch's CUDA generator.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// u = float32(x) * kUniformScale lies in [0, 1): the largest x, 2^31 - 1, rounds to 0.99999994f.
constexpr float kUniformScale = 4.6566127342e-10f;

// Counters per element: one Philox call yields four words, one per copy.
MK_HOST_DEVICE int64_t counters_per_element(int64_t expansion) { return (expansion + 3) / 4; }

// hi:lo = a * b, the full 64-bit product of two 32-bit words.
MK_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// Ten rounds on counter (c0, c1, c2, c3) with key (k0, k1); the result replaces the counter in place.
// Word is uint32_t, or a SIMD type holding one word per lane that provides ^, += uint32_t and
// mulhilo(Word, uint32_t, Word&, Word&) (the CPU kernels' vector lanes): the rounds are written once for both.
template <typename Word>
MK_HOST_DEVICE void philox4x32_10(Word& c0, Word& c1, Word& c2, Word& c3, Word k0, Word k1) {
  MK_UNROLL
  for (int round = 0; round < kPhiloxRounds; ++round) {
    Word hi0, lo0, hi1, lo1;
    mulhilo(c0, kPhiloxM0, hi0, lo0);
    mulhilo(c2, kPhiloxM1, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// The four words for 64-bit counter c under a 64-bit seed: counter (c_lo, c_hi, 0, 0), key (seed_lo, seed_hi).
MK_HOST_DEVICE void philox_words(uint64_t seed, uint64_t counter, uint32_t words[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  philox4x32_10<uint32_t>(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

// Counter of copy-group `group` (copies 4*group .. 4*group+3) of flat element `index`; wraps mod 2^64.
MK_HOST_DEVICE uint64_t element_counter(uint64_t offset, uint64_t index, int64_t expansion, int64_t group) {
  return offset + index * static_cast<uint64_t>(counters_per_element(expansion)) + static_cast<uint64_t>(group);
}

// Triton's uint_to_uniform_float: the word as int32, negatives folded with ~x, scaled into [0, 1).
MK_HOST_DEVICE float uniform_from_word(uint32_t word) {
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// log1p(y) for y in (-1, 0], float32, written without calls or table look-ups so that host compilers vectorise
// the loops that use it (a libm call per lane would not). The mantissa polynomial is the classic minimax fit of
// log(1 + f) on [sqrt(1/2) - 1, sqrt(2) - 1]; the correction term recovers the bits lost in rounding 1 + y, so
// the result stays accurate to a few ulp even for tiny y (where -log(1 - u) itself would be off).
MK_HOST_DEVICE float log1p_nonpositive(float y) {
#if defined(__CUDA_ARCH__)
  return log1pf(y);
#else
  const float z = 1.0f + y;
  const float correction = (y - (z - 1.0f)) / z;  // log(1 + y) = log(z) + correction, to first order
  // z = m * 2^exponent with m in [sqrt(1/2), sqrt(2)): adding 1 - sqrt(1/2) to the mantissa bits before taking
  // the exponent moves the split point from 1 to sqrt(1/2) without a branch.
  uint32_t z_bits;
  memcpy(&z_bits, &z, sizeof z_bits);
  z_bits += 0x3f800000u - 0x3f3504f3u;
  const int32_t exponent = static_cast<int32_t>(z_bits >> 23) - 127;
  const uint32_t m_bits = (z_bits & 0x007fffffu) + 0x3f3504f3u;
  float m;
  memcpy(&m, &m_bits, sizeof m);
  const float f = m - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float log_m = f + f2 * (f * p - 0.5f);
  return static_cast<float>(exponent) * 0.69314718056f + log_m + correction;
#endif
}

MK_HOST_DEVICE double log1p_nonpositive(double y) { return log1p(y); }

// Exp(1) draw from a uniform u in [0, 1): g = -log(1 - u), evaluated as -log1p(-u) in the math type T.
template <typename T>
MK_HOST_DEVICE T exponential_from_uniform(float u) {
  return -log1p_nonpositive(-static_cast<T>(u));
}

}  // namespace majority_kernels
