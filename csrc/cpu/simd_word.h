// The `Word` type that runs Philox (majority_kernels::philox4x32 in mixing.h) on many counters at once, one
// 32-bit word per lane, and the `Floats` type that holds the same lanes' uniforms and mixing weights. Included by
// mixing_block.h, after the including file has chosen its instruction set with MK_CPU_AVX512 or MK_CPU_AVX2 and
// enabled it with a target pragma; otherwise Word is a single uint32_t, Floats a float, and the compiler vectorises
// the loops over lanes for whatever the baseline target is.
//
// Everything here and in mixing_block.h lives in the namespace MK_CPU_CAPABILITY (avx512, avx2 or portable), so
// that the translation units built for different instruction sets never share a definition.
//
// Besides ^, += uint32_t and mulhilo() for the rounds, each Word provides kWordLanes (lanes per Word) and
//   broadcast(x)                         x in every lane
//   counters(base, stride, lo, hi)       the low and high words of the 64-bit counters base + l * stride of lanes l
//   counters_low(base_lo, stride, lo)    the low words base_lo + l * stride alone (mod 2^32), where the caller
//                                        knows the high word is the same in every lane (a broadcast)
//   uniforms(w)                          uniform_from_word (mixing.h) of every lane, as Floats
// and Floats (kWordLanes floats: + - * with each other and with a float, lane by lane, as GCC's vector extension
// gives them) provides lesser(a, b) and greater(a, b) (a < b ? a : b and a < b ? b : a in every lane), load(p) and
// store(p, f) (kWordLanes consecutive floats at p, unaligned).
#pragma once

#include <stdint.h>

#include "majority_kernels/mixing.h"

#if defined(MK_CPU_AVX512)
#define MK_CPU_CAPABILITY avx512
#elif defined(MK_CPU_AVX2)
#define MK_CPU_CAPABILITY avx2
#else
#define MK_CPU_CAPABILITY portable
#endif

#if defined(MK_CPU_AVX512) || defined(MK_CPU_AVX2)
#include <immintrin.h>
#endif

namespace majority_kernels {
namespace cpu {
namespace MK_CPU_CAPABILITY {

#define MK_CPU_INLINE inline __attribute__((always_inline))

#if defined(MK_CPU_AVX512) || defined(MK_CPU_AVX2)

// One word per 64-bit element of a vector, in its low half: vpmuludq multiplies the low halves into full 64-bit
// products, so mulhilo is one multiply (lo: the product, hi: the product shifted down) and never has to pack
// halves together. The high halves carry garbage that no multiply reads and `uniforms` drops.
#if defined(MK_CPU_AVX512)
using Vec = __m512i;
using Floats = __m512;
MK_CPU_INLINE Vec vec_set(uint32_t x) { return _mm512_set1_epi64(x); }
MK_CPU_INLINE Vec vec_load(const uint64_t* p) { return _mm512_loadu_si512(p); }
MK_CPU_INLINE Vec vec_xor(Vec a, Vec b) { return _mm512_xor_si512(a, b); }
MK_CPU_INLINE Vec vec_add(Vec a, Vec b) { return _mm512_add_epi32(a, b); }
MK_CPU_INLINE Vec vec_mul(Vec a, Vec b) { return _mm512_mul_epu32(a, b); }
MK_CPU_INLINE Vec vec_high(Vec a) { return _mm512_srli_epi64(a, 32); }
MK_CPU_INLINE Vec vec_add64(Vec a, Vec b) { return _mm512_add_epi64(a, b); }
MK_CPU_INLINE Vec vec_pack(Vec a, Vec b) {
  const __m512 packed = _mm512_shuffle_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm512_castps_si512(packed);
}
MK_CPU_INLINE Floats lesser(Floats a, Floats b) { return _mm512_min_ps(a, b); }
MK_CPU_INLINE Floats greater(Floats a, Floats b) { return _mm512_max_ps(b, a); }
#else
using Vec = __m256i;
using Floats = __m256;
MK_CPU_INLINE Vec vec_set(uint32_t x) { return _mm256_set1_epi64x(x); }
MK_CPU_INLINE Vec vec_load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
MK_CPU_INLINE Vec vec_xor(Vec a, Vec b) { return _mm256_xor_si256(a, b); }
MK_CPU_INLINE Vec vec_add(Vec a, Vec b) { return _mm256_add_epi32(a, b); }
MK_CPU_INLINE Vec vec_mul(Vec a, Vec b) { return _mm256_mul_epu32(a, b); }
MK_CPU_INLINE Vec vec_high(Vec a) { return _mm256_srli_epi64(a, 32); }
MK_CPU_INLINE Vec vec_add64(Vec a, Vec b) { return _mm256_add_epi64(a, b); }
// The low halves of a and b as packed 32-bit words, within each 128 bits: [a0 a1 b0 b1] (see vec_lanes).
MK_CPU_INLINE Vec vec_pack(Vec a, Vec b) {
  const __m256 packed = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_castps_si256(packed);
}
// a < b ? a : b and a < b ? b : a, lane by lane, exactly (also for NaN): vminps returns its second operand where
// its first is not the smaller, vmaxps where its first is not the larger. (GCC makes a compare and a blend of a
// vector ?:, one instruction more.)
MK_CPU_INLINE Floats lesser(Floats a, Floats b) { return _mm256_min_ps(a, b); }
MK_CPU_INLINE Floats greater(Floats a, Floats b) { return _mm256_max_ps(b, a); }
#endif
constexpr int kVecLanes = static_cast<int>(sizeof(Vec) / sizeof(uint64_t));
constexpr int64_t kWordLanes = 2 * kVecLanes;
using Ints = int32_t __attribute__((vector_size(sizeof(Floats))));

// Two vectors per Word, packed into one Floats by `uniforms`; the two Philox chains side by side keep the
// multiplier busy (and the round keys, equal in both, are computed once).
struct Word {
  Vec v[2];
};

// The lanes that the 64-bit elements of v[i] hold: vec_pack interleaves pairs, so v[0] holds lanes 0 1 4 5 8 9 ...
// and v[1] lanes 2 3 6 7 10 11 ..., and the packed words come out in lane order.
MK_CPU_INLINE Vec vec_lanes(int i) {
  alignas(64) uint64_t lanes[kVecLanes];
  MK_UNROLL
  for (int q = 0; q < kVecLanes; ++q) lanes[q] = static_cast<uint64_t>(q / 2 * 4 + q % 2 + 2 * i);
  return vec_load(lanes);
}

MK_CPU_INLINE Word operator^(const Word& a, const Word& b) {
  return Word{{vec_xor(a.v[0], b.v[0]), vec_xor(a.v[1], b.v[1])}};
}

MK_CPU_INLINE Word& operator+=(Word& a, uint32_t b) {
  a.v[0] = vec_add(a.v[0], vec_set(b));
  a.v[1] = vec_add(a.v[1], vec_set(b));
  return a;
}

MK_CPU_INLINE void mulhilo(const Word& a, uint32_t b, Word& hi, Word& lo) {
  MK_UNROLL
  for (int i = 0; i < 2; ++i) {
    lo.v[i] = vec_mul(a.v[i], vec_set(b));
    hi.v[i] = vec_high(lo.v[i]);
  }
}

MK_CPU_INLINE Word broadcast(uint32_t x) { return Word{{vec_set(x), vec_set(x)}}; }

MK_CPU_INLINE void counters(uint64_t base, uint32_t stride, Word& lo, Word& hi) {
  MK_UNROLL
  for (int i = 0; i < 2; ++i) {
    // The low word of base plus l * stride, in 64 bits: the low half is the low word of the counter, the high half
    // what carries into its high word.
    lo.v[i] = vec_add64(vec_set(static_cast<uint32_t>(base)), vec_mul(vec_lanes(i), vec_set(stride)));
    hi.v[i] = vec_add(vec_set(static_cast<uint32_t>(base >> 32)), vec_high(lo.v[i]));
  }
}

MK_CPU_INLINE void counters_low(uint32_t base_lo, uint32_t stride, Word& lo) {
  MK_UNROLL
  for (int i = 0; i < 2; ++i) lo.v[i] = vec_add(vec_set(base_lo), vec_mul(vec_lanes(i), vec_set(stride)));
}

MK_CPU_INLINE Floats uniforms(const Word& w) {
  Ints x = reinterpret_cast<Ints>(vec_pack(w.v[0], w.v[1]));
  x ^= x >> 31;  // ~x where x < 0
  return __builtin_convertvector(x, Floats) * kUniformScale;
}

#else  // portable: one lane per Word, mulhilo from mixing.h; the loops over lanes are left to the vectoriser

using Word = uint32_t;
using Floats = float;
constexpr int64_t kWordLanes = 1;
MK_CPU_INLINE Word broadcast(uint32_t x) { return x; }
MK_CPU_INLINE void counters(uint64_t base, uint32_t, Word& lo, Word& hi) {
  lo = static_cast<uint32_t>(base);
  hi = static_cast<uint32_t>(base >> 32);
}
MK_CPU_INLINE void counters_low(uint32_t base_lo, uint32_t, Word& lo) { lo = base_lo; }
MK_CPU_INLINE Floats uniforms(Word w) { return uniform_from_word(w); }
MK_CPU_INLINE Floats lesser(Floats a, Floats b) { return a < b ? a : b; }
MK_CPU_INLINE Floats greater(Floats a, Floats b) { return a < b ? b : a; }

#endif

MK_CPU_INLINE Floats load(const float* p) {
  Floats f;
  __builtin_memcpy(&f, p, sizeof f);
  return f;
}

MK_CPU_INLINE void store(float* p, Floats f) { __builtin_memcpy(p, &f, sizeof f); }

}  // namespace MK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace majority_kernels
