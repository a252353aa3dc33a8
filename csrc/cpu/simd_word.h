// The `Word` type that runs Philox (majority_kernels::philox4x32_10 in mixing.h) on many counters at once, one
// 32-bit word per lane. Included by mixing_block.h, after the including file has chosen its instruction set with
// MK_CPU_AVX512 or MK_CPU_AVX2 and enabled it with a target pragma; otherwise Word is a single uint32_t and the
// compiler vectorises the loop over lanes for whatever the baseline target is.
//
// Everything here and in mixing_block.h lives in the namespace MK_CPU_CAPABILITY (avx512, avx2 or portable), so
// that the translation units built for different instruction sets never share a definition.
//
// Besides ^, += uint32_t and mulhilo() for the rounds, each Word provides kWordLanes (lanes per Word) and
//   broadcast(x)                    x in every lane
//   counters(base, stride, lo, hi)  the low and high words of the 64-bit counters base + l * stride of lanes l
//   store(p, w)                     the lanes to kWordLanes consecutive words at p (unaligned)
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
// halves together. The high halves carry garbage that no multiply reads and `store` drops.
#if defined(MK_CPU_AVX512)
using Vec = __m512i;
constexpr int kVectors = 4;  // per Word (see Word)
MK_CPU_INLINE Vec vec_set(uint32_t x) { return _mm512_set1_epi64(x); }
MK_CPU_INLINE Vec vec_xor(Vec a, Vec b) { return _mm512_xor_si512(a, b); }
MK_CPU_INLINE Vec vec_add(Vec a, Vec b) { return _mm512_add_epi32(a, b); }
MK_CPU_INLINE Vec vec_mul(Vec a, Vec b) { return _mm512_mul_epu32(a, b); }
MK_CPU_INLINE Vec vec_high(Vec a) { return _mm512_srli_epi64(a, 32); }
MK_CPU_INLINE Vec vec_add64(Vec a, Vec b) { return _mm512_add_epi64(a, b); }
// The 64-bit integers first, first + 1, ...
MK_CPU_INLINE Vec vec_iota(uint32_t first) {
  return _mm512_add_epi64(_mm512_set1_epi64(first), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
}
// The low halves of a, then of b, to 16 words at p.
MK_CPU_INLINE void vec_store2(uint32_t* p, Vec a, Vec b) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  _mm512_storeu_si512(p, _mm512_permutex2var_epi32(a, even, b));
}
#else
using Vec = __m256i;
constexpr int kVectors = 2;  // 16 vector registers only
MK_CPU_INLINE Vec vec_set(uint32_t x) { return _mm256_set1_epi64x(x); }
MK_CPU_INLINE Vec vec_xor(Vec a, Vec b) { return _mm256_xor_si256(a, b); }
MK_CPU_INLINE Vec vec_add(Vec a, Vec b) { return _mm256_add_epi32(a, b); }
MK_CPU_INLINE Vec vec_mul(Vec a, Vec b) { return _mm256_mul_epu32(a, b); }
MK_CPU_INLINE Vec vec_high(Vec a) { return _mm256_srli_epi64(a, 32); }
MK_CPU_INLINE Vec vec_add64(Vec a, Vec b) { return _mm256_add_epi64(a, b); }
MK_CPU_INLINE Vec vec_iota(uint32_t first) {
  return _mm256_add_epi64(_mm256_set1_epi64x(first), _mm256_setr_epi64x(0, 1, 2, 3));
}
MK_CPU_INLINE void vec_store2(uint32_t* p, Vec a, Vec b) {
  // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
  const __m256 mixed = _mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), _MM_SHUFFLE(2, 0, 2, 0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_permute4x64_epi64(_mm256_castps_si256(mixed), _MM_SHUFFLE(3, 1, 2, 0)));
}
#endif
constexpr int kVecLanes = static_cast<int>(sizeof(Vec) / sizeof(uint64_t));
constexpr int64_t kWordLanes = kVectors * kVecLanes;
static_assert(kVectors % 2 == 0, "store() packs vectors in pairs");

// Several independent vectors per Word: each round is a chain of dependent operations, and vectors side by side
// keep the multiplier busy (and the round keys, equal in every vector, are computed once).
struct Word {
  Vec v[kVectors];
};

MK_CPU_INLINE Word operator^(const Word& a, const Word& b) {
  Word r;
  MK_UNROLL
  for (int i = 0; i < kVectors; ++i) r.v[i] = vec_xor(a.v[i], b.v[i]);
  return r;
}

MK_CPU_INLINE Word& operator+=(Word& a, uint32_t b) {
  MK_UNROLL
  for (int i = 0; i < kVectors; ++i) a.v[i] = vec_add(a.v[i], vec_set(b));
  return a;
}

MK_CPU_INLINE void mulhilo(const Word& a, uint32_t b, Word& hi, Word& lo) {
  MK_UNROLL
  for (int i = 0; i < kVectors; ++i) {
    lo.v[i] = vec_mul(a.v[i], vec_set(b));
    hi.v[i] = vec_high(lo.v[i]);
  }
}

MK_CPU_INLINE Word broadcast(uint32_t x) {
  Word r;
  MK_UNROLL
  for (int i = 0; i < kVectors; ++i) r.v[i] = vec_set(x);
  return r;
}

MK_CPU_INLINE void counters(uint64_t base, uint32_t stride, Word& lo, Word& hi) {
  MK_UNROLL
  for (int i = 0; i < kVectors; ++i) {
    // The low word of base plus l * stride, in 64 bits: the low half is the low word of the counter, the high half
    // what carries into its high word.
    lo.v[i] = vec_add64(vec_set(static_cast<uint32_t>(base)), vec_mul(vec_iota(kVecLanes * i), vec_set(stride)));
    hi.v[i] = vec_add(vec_set(static_cast<uint32_t>(base >> 32)), vec_high(lo.v[i]));
  }
}

MK_CPU_INLINE void store(uint32_t* p, const Word& w) {
  MK_UNROLL
  for (int i = 0; i < kVectors; i += 2) vec_store2(p + kVecLanes * i, w.v[i], w.v[i + 1]);
}

#else  // portable: one lane per Word, mulhilo from mixing.h; the loop over lanes is left to the vectoriser

using Word = uint32_t;
constexpr int64_t kWordLanes = 1;
MK_CPU_INLINE Word broadcast(uint32_t x) { return x; }
MK_CPU_INLINE void counters(uint64_t base, uint32_t, Word& lo, Word& hi) {
  lo = static_cast<uint32_t>(base);
  hi = static_cast<uint32_t>(base >> 32);
}
MK_CPU_INLINE void store(uint32_t* p, Word w) { *p = w; }

#endif

}  // namespace MK_CPU_CAPABILITY
}  // namespace cpu
}  // namespace majority_kernels
