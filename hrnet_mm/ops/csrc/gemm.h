// The matrix products of the Winograd convolutions: a 6x16 register-blocked FMA kernel on AVX2 and a 12x16 one on
// AVX-512 for the 16-column panels (portable loops otherwise), row blocks over them, and the panel-by-panel product
// M = V @ U of one plane. Every build sums each output over c in the same order, so they give the same floats.
#pragma once
#include "winograd.h"

namespace hrnet_mm_winograd {
// m[i][0 .. 8*NV) = sum_c v[i][c] * u[c][0 .. 8*NV) for i < R (row strides ldv, ldu, ldm); with TN, v is read
// transposed: v[i][c] at v[c * ldv + i] (the weight gradient's V[p]^T dM[p]); with ACC, m += the products.
template <int R, int NV, bool TN = false, bool ACC = false>
inline void micro(const float* __restrict__ v, int64_t ldv, const float* __restrict__ u, int64_t ldu,
                  float* __restrict__ m, int64_t ldm, int64_t C) {
#ifdef HRNET_MM_AVX2
  // Twelve named accumulators (not an array, which GCC keeps spilling to the stack); R and NV are constants, so
  // the unused ones and their branches disappear.
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define HRNET_MM_ROW(i, a0, a1)                                         \
  if (R > i) {                                                          \
    const __m256 a = _mm256_broadcast_ss(TN ? vc + i : vc + i * ldv);   \
    a0 = _mm256_fmadd_ps(a, b0, a0);                                    \
    if (NV > 1) a1 = _mm256_fmadd_ps(a, b1, a1);                        \
  }
  for (int64_t c = 0; c < C; ++c) {
    const float* vc = TN ? v + c * ldv : v + c;
    const __m256 b0 = _mm256_loadu_ps(u + c * ldu);
    const __m256 b1 = NV > 1 ? _mm256_loadu_ps(u + c * ldu + 8) : b0;
    HRNET_MM_ROW(0, c00, c01)
    HRNET_MM_ROW(1, c10, c11)
    HRNET_MM_ROW(2, c20, c21)
    HRNET_MM_ROW(3, c30, c31)
    HRNET_MM_ROW(4, c40, c41)
    HRNET_MM_ROW(5, c50, c51)
  }
#undef HRNET_MM_ROW
  // ACC: the products are summed from zero and then added to m (a sum of partial sums, not one long sum)
#define HRNET_MM_STORE(i, a0, a1)                                                          \
  if (R > i) {                                                                             \
    float* mi = m + i * ldm;                                                               \
    _mm256_storeu_ps(mi, ACC ? _mm256_add_ps(_mm256_loadu_ps(mi), a0) : a0);               \
    if (NV > 1) _mm256_storeu_ps(mi + 8, ACC ? _mm256_add_ps(_mm256_loadu_ps(mi + 8), a1) : a1); \
  }
  HRNET_MM_STORE(0, c00, c01)
  HRNET_MM_STORE(1, c10, c11)
  HRNET_MM_STORE(2, c20, c21)
  HRNET_MM_STORE(3, c30, c31)
  HRNET_MM_STORE(4, c40, c41)
  HRNET_MM_STORE(5, c50, c51)
#undef HRNET_MM_STORE
#else
  float acc[R][8 * NV] = {};
  for (int64_t c = 0; c < C; ++c)
    for (int i = 0; i < R; ++i) {
      const float a = TN ? v[c * ldv + i] : v[i * ldv + c];
      for (int j = 0; j < 8 * NV; ++j) acc[i][j] += a * u[c * ldu + j];
    }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 8 * NV; ++j) m[i * ldm + j] = ACC ? m[i * ldm + j] + acc[i][j] : acc[i][j];
#endif
}

#ifdef HRNET_MM_AVX512
// Below this many channels (the sum's length) the 6x16 kernel is as fast: the products are too short to pay for
// twelve accumulators.
constexpr int64_t kWideMinDepth = 32;

// micro<R, 2, TN, ACC> for up to 12 rows, a 512-bit register per row: m[i][0 .. 16) = sum_c v[i][c] * u[c][0 .. 16).
template <int R, bool TN = false, bool ACC = false>
inline void micro16(const float* __restrict__ v, int64_t ldv, const float* __restrict__ u, int64_t ldu,
                    float* __restrict__ m, int64_t ldm, int64_t C) {
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0,
         c10 = c0, c11 = c0;
#define HRNET_MM_ROW(i, a)                                                   \
  if (R > i) a = _mm512_fmadd_ps(_mm512_set1_ps(TN ? vc[i] : vc[i * ldv]), b, a);
  for (int64_t c = 0; c < C; ++c) {
    const float* vc = TN ? v + c * ldv : v + c;
    const __m512 b = _mm512_loadu_ps(u + c * ldu);
    HRNET_MM_ROW(0, c0)
    HRNET_MM_ROW(1, c1)
    HRNET_MM_ROW(2, c2)
    HRNET_MM_ROW(3, c3)
    HRNET_MM_ROW(4, c4)
    HRNET_MM_ROW(5, c5)
    HRNET_MM_ROW(6, c6)
    HRNET_MM_ROW(7, c7)
    HRNET_MM_ROW(8, c8)
    HRNET_MM_ROW(9, c9)
    HRNET_MM_ROW(10, c10)
    HRNET_MM_ROW(11, c11)
  }
#undef HRNET_MM_ROW
#define HRNET_MM_STORE(i, a)                                                          \
  if (R > i) {                                                                        \
    float* mi = m + i * ldm;                                                          \
    _mm512_storeu_ps(mi, ACC ? _mm512_add_ps(_mm512_loadu_ps(mi), a) : a);            \
  }
  HRNET_MM_STORE(0, c0)
  HRNET_MM_STORE(1, c1)
  HRNET_MM_STORE(2, c2)
  HRNET_MM_STORE(3, c3)
  HRNET_MM_STORE(4, c4)
  HRNET_MM_STORE(5, c5)
  HRNET_MM_STORE(6, c6)
  HRNET_MM_STORE(7, c7)
  HRNET_MM_STORE(8, c8)
  HRNET_MM_STORE(9, c9)
  HRNET_MM_STORE(10, c10)
  HRNET_MM_STORE(11, c11)
#undef HRNET_MM_STORE
}
#endif

// out[i][0 .. 16 or 8) (+)= sum_c v[i][c] * b[c][0 .. 16 or 8) for i < rows (8 columns unless wide; row strides
// ldb, ldo), six rows per micro kernel call (twelve for 16 columns on AVX-512); v[i][c] at v[i * ldv + c], or with TN at v[c * ldv + i].
template <bool TN, bool ACC>
void row_blocks(const float* v, int64_t ldv, const float* b, int64_t ldb, float* out, int64_t ldo, int64_t n,
                int64_t rows, bool wide) {
  const int64_t rs = TN ? 1 : ldv;  // from one row of v to the next
  int64_t r = 0;
#ifdef HRNET_MM_AVX512
  if (wide && n >= kWideMinDepth) {
    for (; r + 12 <= rows; r += 12) micro16<12, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n);
#define HRNET_MM_TAIL16(R)                                                     \
  case R:                                                                      \
    micro16<R, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n);       \
    break;
    switch (rows - r) {
      HRNET_MM_TAIL16(11)
      HRNET_MM_TAIL16(10)
      HRNET_MM_TAIL16(9)
      HRNET_MM_TAIL16(8)
      HRNET_MM_TAIL16(7)
      HRNET_MM_TAIL16(6)
      HRNET_MM_TAIL16(5)
      HRNET_MM_TAIL16(4)
      HRNET_MM_TAIL16(3)
      HRNET_MM_TAIL16(2)
      HRNET_MM_TAIL16(1)
      default: break;
    }
#undef HRNET_MM_TAIL16
    return;
  }
#endif
  for (; r + 6 <= rows; r += 6) {
    if (wide) micro<6, 2, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n);
    else micro<6, 1, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n);
  }
#define HRNET_MM_TAIL(R)                                                            \
  case R:                                                                           \
    if (wide) micro<R, 2, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n); \
    else micro<R, 1, TN, ACC>(v + r * rs, ldv, b, ldb, out + r * ldo, ldo, n);      \
    break;
  switch (rows - r) {
    HRNET_MM_TAIL(5)
    HRNET_MM_TAIL(4)
    HRNET_MM_TAIL(3)
    HRNET_MM_TAIL(2)
    HRNET_MM_TAIL(1)
    default: break;
  }
#undef HRNET_MM_TAIL
}

// M (tn x kc8, row stride kc8) = V (tn x C, row stride C) @ U[:, k0 : k0 + kc8], U being one plane of the packed
// weight: 16-column panels (the last one 8 wide when K8 % 16 == 8), each C x width contiguous, so the panel of
// columns k.. starts at U + C * k. Panel by panel, so that each is read from memory once and reused from L1 by
// all rows.
inline void gemm(const float* V, int64_t tn, int64_t C, const float* U, int64_t K8, int64_t k0, int64_t kc8, float* M) {
  for (int64_t k = k0; k < k0 + kc8; k += 16) {
    const bool wide = k + 16 <= K8;
    row_blocks<false, false>(V, C, U + C * k, wide ? 16 : 8, M + (k - k0), kc8, C, tn, wide);
  }
}
}  // namespace hrnet_mm_winograd
