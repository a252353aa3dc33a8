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

// log1p(y) for y in (-1, 0], float32, written without calls, branches or table look-ups so that host compilers
// vectorise the loops that use it (a libm call per lane would not). 1 + y = 2^k * (1 + f) with 1 + f in
// [sqrt(1/2), sqrt(2)); then log1p(y) = k * log(2) + log(1 + f), with log(1 + f) = f - f^2 / 2 + f^3 p(f) and p
// a minimax fit on that interval (relative error 3.3e-8). The result is within 1.2 ulp of log1p(y) for every
// float32 u of section 4 (checked exhaustively). f is computed exactly, however much rounding 1 + y loses
// (tiny y): f = (1 + y) * 2^-k - 1 = y * s + (s - 1) with s = 2^-k. y * s and s - 1 are exact, so the sum rounds
// once, and f is a float, so it does not round at all (for k = 0 it is y itself; for k = -1 it is 1 + 2y, for
// k <= -2 it is 2^-k * (1 + y) - 1 with 1 + y exact, both by Sterbenz's lemma).
MK_HOST_DEVICE float log1p_nonpositive(float y) {
#if defined(__CUDA_ARCH__)
  return log1pf(y);
#else
  const float z = 1.0f + y;  // rounded; it only picks k
  // Adding 1 - sqrt(1/2) to the mantissa bits before taking the exponent moves the split point from 1 to
  // sqrt(1/2) without a branch.
  uint32_t z_bits;
  memcpy(&z_bits, &z, sizeof z_bits);
  z_bits += 0x3f800000u - 0x3f3504f3u;
  const int32_t k_field = static_cast<int32_t>(z_bits & 0x7f800000u) - (127 << 23);  // k * 2^23, k <= 0
  const uint32_t s_bits = static_cast<uint32_t>((127 << 23) - k_field);               // exponent field 127 - k
  float s;
  memcpy(&s, &s_bits, sizeof s);
  const float f = y * s + (s - 1.0f);
  const float f2 = f * f;
  float p = 8.7003216147e-02f;
  p = p * f - 1.4267301559e-01f;
  p = p * f + 1.4914725721e-01f;
  p = p * f - 1.6577604413e-01f;
  p = p * f + 1.9963069260e-01f;
  p = p * f - 2.5001335144e-01f;
  p = p * f + 3.3333909512e-01f;
  const float log_m = f + f2 * (f * p - 0.5f);
  return static_cast<float>(k_field) * (0.69314718056f * 0x1p-23f) + log_m;
#endif
}

MK_HOST_DEVICE double log1p_nonpositive(double y) { return log1p(y); }

// Exp(1) draw from a uniform u in [0, 1): g = -log(1 - u), evaluated as -log1p(-u) in the math type T.
template <typename T>
MK_HOST_DEVICE T exponential_from_uniform(float u) {
  return -log1p_nonpositive(-static_cast<T>(u));
}

}  // namespace majority_kernels
