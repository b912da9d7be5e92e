// Winograd convolutions for hrnet_mm's CPU deploy mode (hrnet_mm/winograd.py builds this file on first use).
//
// A 3x3, stride-1, zero-padding-1 convolution computed as F(m x m, 3 x 3) (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016) with m = 4 (6x6 input tiles: 36 products per 16 outputs and channel
// pair instead of 144) or m = 2 (4x4 tiles: 16 instead of 36). For a block of tiles at a time:
//   1. input transform: every tile d of every input channel becomes B^T d B, stored as V[P][tiles][C], P = (m+2)^2;
//   2. P independent matrix products M[p] = V[p] @ U[p], U[p] being the transformed weight (G g G^T)[p] (C x K8,
//      computed once in float64 by hrnet_mm/winograd.py, K padded to a multiple of 8 with zero columns, stored
//      as contiguous 16-column panels: hrnet_mm.winograd.pack_weight);
//   3. output transform: A^T M A per tile, plus bias, plus an optional residual, optional ReLU, written into the
//      channels_last output.
// The block is sized so that its V and M stay in the core's L2 cache; blocks (and, when there are too few tiles
// to share out, slices of the output channels) are spread over torch's intra-op threads. The transforms work on
// 8 channels at a time (one AVX2 register); the products use a 6x16 register-blocked FMA kernel on AVX2.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <tuple>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HRNET_MM_AVX2 1
#endif

namespace {
constexpr int L = 8;  // channel lanes per step (one AVX2 register)

// In-register 1-D transforms on L lanes: x[i*xs] -> y[p*ys] (strides in units of L floats).
#define LOOP for (int c = 0; c < L; ++c)
template <int MT> struct Tf;
template <> struct Tf<4> {
  static constexpr int A = 6;
  static inline void bt(const float* __restrict__ x, int64_t xs, float* __restrict__ y, int64_t ys) {
    LOOP {
      const float a0 = x[0 * xs + c], a1 = x[1 * xs + c], a2 = x[2 * xs + c], a3 = x[3 * xs + c],
                  a4 = x[4 * xs + c], a5 = x[5 * xs + c];
      y[0 * ys + c] = 4.f * a0 - 5.f * a2 + a4;
      y[1 * ys + c] = -4.f * (a1 + a2) + a3 + a4;
      y[2 * ys + c] = 4.f * (a1 - a2) - a3 + a4;
      y[3 * ys + c] = 2.f * (a3 - a1) - a2 + a4;
      y[4 * ys + c] = 2.f * (a1 - a3) - a2 + a4;
      y[5 * ys + c] = 4.f * a1 - 5.f * a3 + a5;
    }
  }
  static inline void at(const float* __restrict__ m, int64_t ms, float* __restrict__ o, int64_t os) {
    LOOP {
      const float m0 = m[0 * ms + c], m1 = m[1 * ms + c], m2 = m[2 * ms + c], m3 = m[3 * ms + c],
                  m4 = m[4 * ms + c], m5 = m[5 * ms + c];
      const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
      o[0 * os + c] = m0 + s12 + s34;
      o[1 * os + c] = d12 + 2.f * d34;
      o[2 * os + c] = s12 + 4.f * s34;
      o[3 * os + c] = d12 + 8.f * d34 + m5;
    }
  }
};
template <> struct Tf<2> {
  static constexpr int A = 4;
  static inline void bt(const float* __restrict__ x, int64_t xs, float* __restrict__ y, int64_t ys) {
    LOOP {
      const float a0 = x[0 * xs + c], a1 = x[1 * xs + c], a2 = x[2 * xs + c], a3 = x[3 * xs + c];
      y[0 * ys + c] = a0 - a2;
      y[1 * ys + c] = a1 + a2;
      y[2 * ys + c] = a2 - a1;
      y[3 * ys + c] = a1 - a3;
    }
  }
  static inline void at(const float* __restrict__ m, int64_t ms, float* __restrict__ o, int64_t os) {
    LOOP {
      const float m0 = m[0 * ms + c], m1 = m[1 * ms + c], m2 = m[2 * ms + c], m3 = m[3 * ms + c];
      o[0 * os + c] = m0 + m1 + m2;
      o[1 * os + c] = m1 - m2 - m3;
    }
  }
};

struct Geometry {
  int64_t N, H, W, C, K, K8, th, tw, T;
};

// Input transform of tiles [t0, t1) into V[p][t - t0][c] (row stride C, plane stride ps floats).
template <int MT>
void transform_in(const float* __restrict__ in, const Geometry& g, int64_t t0, int64_t t1, float* __restrict__ V,
                  int64_t ps) {
  constexpr int A = Tf<MT>::A;
  const int64_t H = g.H, W = g.W, C = g.C;
  alignas(32) float d[A * A * L];
  alignas(32) float u[A * A * L];
  alignas(32) float v[A * A * L];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const int64_t y0 = ty * MT - 1, x0 = tx * MT - 1;
    const bool interior = y0 >= 0 && x0 >= 0 && y0 + A <= H && x0 + A <= W;
    float* dst_t = V + (t - t0) * C;
    for (int64_t c0 = 0; c0 < C; c0 += L) {
      const int64_t cb = std::min<int64_t>(L, C - c0);
      if (interior && cb == L) {  // straight from the input into V, no staging copies
        const float* src = in + ((n * H + y0) * W + x0) * C + c0;
        for (int j = 0; j < A; ++j) Tf<MT>::bt(src + j * C, W * C, u + j * L, A * L);  // columns
        for (int p = 0; p < A; ++p) Tf<MT>::bt(u + p * A * L, L, dst_t + p * A * ps + c0, ps);  // rows
        continue;
      }
      // Border tiles and a last, partial group of channels: staged through a zero-padded copy.
      for (int i = 0; i < A; ++i)
        for (int j = 0; j < A; ++j) {
          const int64_t y = y0 + i, x = x0 + j;
          float* dst = d + (i * A + j) * L;
          if (y >= 0 && y < H && x >= 0 && x < W) {
            const float* src = in + ((n * H + y) * W + x) * C + c0;
            LOOP dst[c] = c < cb ? src[c] : 0.f;
          } else {
            LOOP dst[c] = 0.f;
          }
        }
      for (int j = 0; j < A; ++j) Tf<MT>::bt(d + j * L, A * L, u + j * L, A * L);  // columns
      for (int p = 0; p < A; ++p) Tf<MT>::bt(u + p * A * L, L, v + p * A * L, L);  // rows
      for (int k = 0; k < A * A; ++k) {
        float* dst = dst_t + k * ps + c0;
        if (cb == L) {
          LOOP dst[c] = v[k * L + c];
        } else {
          for (int c = 0; c < cb; ++c) dst[c] = v[k * L + c];
        }
      }
    }
  }
}

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

// out[i][0 .. 16 or 8) (+)= sum_c v[i][c] * b[c][0 .. 16 or 8) for i < rows (8 columns unless wide; row strides
// ldb, ldo), six rows per micro kernel call; v[i][c] at v[i * ldv + c], or with TN at v[c * ldv + i].
template <bool TN, bool ACC>
void row_blocks(const float* v, int64_t ldv, const float* b, int64_t ldb, float* out, int64_t ldo, int64_t n,
                int64_t rows, bool wide) {
  const int64_t rs = TN ? 1 : ldv;  // from one row of v to the next
  int64_t r = 0;
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
void gemm(const float* V, int64_t tn, int64_t C, const float* U, int64_t K8, int64_t k0, int64_t kc8, float* M) {
  for (int64_t k = k0; k < k0 + kc8; k += 16) {
    const bool wide = k + 16 <= K8;
    row_blocks<false, false>(V, C, U + C * k, wide ? 16 : 8, M + (k - k0), kc8, C, tn, wide);
  }
}

// Output transform of tiles [t0, t1) and output channels [k0, k0 + kc) from M[p][t - t0][k - k0] (row stride
// kc8, plane stride ldt * kc8), with bias, residual and ReLU, into the channels_last output.
template <int MT>
void transform_out(const float* __restrict__ M, int64_t ldt, int64_t kc8, const Geometry& g, int64_t t0,
                   int64_t t1, int64_t k0, int64_t kc, const float* __restrict__ bias, const float* res, bool relu,
                   float* out) {
  constexpr int A = Tf<MT>::A;
  const int64_t H = g.H, W = g.W, K = g.K;
  alignas(32) float u[MT * A * L];
  alignas(32) float o[MT * MT * L];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const float* src_t = M + (t - t0) * kc8;
    for (int64_t kk = 0; kk < kc; kk += L) {
      const int64_t kb = std::min<int64_t>(L, kc - kk);
      for (int q = 0; q < A; ++q)  // columns, read from M (kk + L <= kc8: whole lanes are in the buffer)
        Tf<MT>::at(src_t + q * ldt * kc8 + kk, A * ldt * kc8, u + q * L, A * L);
      for (int i = 0; i < MT; ++i) Tf<MT>::at(u + i * A * L, L, o + i * MT * L, L);  // rows
      alignas(32) float b[L];
      LOOP b[c] = (bias && c < kb) ? bias[k0 + kk + c] : 0.f;
      for (int i = 0; i < MT; ++i) {
        const int64_t y = ty * MT + i;
        if (y >= H) break;
        for (int j = 0; j < MT; ++j) {
          const int64_t x = tx * MT + j;
          if (x >= W) break;
          const int64_t off = ((n * H + y) * W + x) * K + k0 + kk;
          alignas(32) float r[L];
          LOOP r[c] = o[(i * MT + j) * L + c] + b[c];
          if (kb == L) {
            if (res) LOOP r[c] += res[off + c];
            if (relu) LOOP r[c] = std::max(r[c], 0.f);
            LOOP out[off + c] = r[c];
          } else {
            if (res) for (int c = 0; c < kb; ++c) r[c] += res[off + c];
            if (relu) LOOP r[c] = std::max(r[c], 0.f);
            for (int c = 0; c < kb; ++c) out[off + c] = r[c];
          }
        }
      }
    }
  }
}

// The 1-D weight transform G (A x 3) of F(tile x tile, 3x3), as in hrnet_mm/winograd.py.
void g_matrix(int64_t tile, double g[6][3]) {
  static const double g2[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
  static const double g4[6][3] = {{1. / 4, 0, 0},         {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                  {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
  const int a = tile == 4 ? 6 : 4;
  for (int p = 0; p < a; ++p)
    for (int i = 0; i < 3; ++i) g[p][i] = tile == 4 ? g4[p][i] : g2[p][i];
}

#ifdef HRNET_MM_AVX2
// The 1-D transforms of the weight on 8 lanes with G's entries as constants: G (A x 3) and its transpose.
template <int MT> struct Gv;
template <> struct Gv<2> {  // G rows (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)
  static inline void g(const __m256 (&x)[3], __m256 (&y)[4]) {
    const __m256 h = _mm256_set1_ps(.5f), s = _mm256_add_ps(x[0], x[2]);
    y[0] = x[0];
    y[1] = _mm256_mul_ps(h, _mm256_add_ps(s, x[1]));
    y[2] = _mm256_mul_ps(h, _mm256_sub_ps(s, x[1]));
    y[3] = x[2];
  }
  static inline void gt(const __m256 (&z)[4], __m256 (&y)[3]) {
    const __m256 h = _mm256_set1_ps(.5f), s = _mm256_mul_ps(h, _mm256_add_ps(z[1], z[2]));
    y[0] = _mm256_add_ps(z[0], s);
    y[1] = _mm256_mul_ps(h, _mm256_sub_ps(z[1], z[2]));
    y[2] = _mm256_add_ps(s, z[3]);
  }
};
// G rows (1/4, 0, 0), -1/6 (1, 1, 1), -1/6 (1, -1, 1), (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1)
template <> struct Gv<4> {
  static inline void g(const __m256 (&x)[3], __m256 (&y)[6]) {
    const __m256 s = _mm256_add_ps(x[0], x[2]), m6 = _mm256_set1_ps(-1.f / 6);
    const __m256 e = _mm256_fmadd_ps(_mm256_set1_ps(1.f / 24), x[0], _mm256_mul_ps(_mm256_set1_ps(1.f / 6), x[2]));
    const __m256 o = _mm256_mul_ps(_mm256_set1_ps(1.f / 12), x[1]);
    y[0] = _mm256_mul_ps(_mm256_set1_ps(.25f), x[0]);
    y[1] = _mm256_mul_ps(m6, _mm256_add_ps(s, x[1]));
    y[2] = _mm256_mul_ps(m6, _mm256_sub_ps(s, x[1]));
    y[3] = _mm256_add_ps(e, o);
    y[4] = _mm256_sub_ps(e, o);
    y[5] = x[2];
  }
  static inline void gt(const __m256 (&z)[6], __m256 (&y)[3]) {
    const __m256 s12 = _mm256_add_ps(z[1], z[2]), s34 = _mm256_add_ps(z[3], z[4]);
    const __m256 d12 = _mm256_sub_ps(z[2], z[1]), d34 = _mm256_sub_ps(z[3], z[4]);
    const __m256 r6 = _mm256_set1_ps(1.f / 6);
    const __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(1.f / 24), s34, _mm256_mul_ps(_mm256_set1_ps(-1.f / 6), s12));
    y[0] = _mm256_fmadd_ps(_mm256_set1_ps(.25f), z[0], r);
    y[1] = _mm256_fmadd_ps(r6, d12, _mm256_mul_ps(_mm256_set1_ps(1.f / 12), d34));
    y[2] = _mm256_fmadd_ps(r6, _mm256_sub_ps(s34, s12), z[5]);
  }
};
#endif

// G x G^T of F(tile x tile, 3x3) on L lanes: x[(i * 3 + j) * xs] -> y[(p * A + s) * ys] (float32; the rounding
// this adds is far below the transform's own, about 1e-6 of the output's largest value per layer). With AVX2, G's
// entries are constants (Gv, the same matrix as g_matrix's).
template <int MT>
inline void weight_tf(const double (&g)[6][3], const float* __restrict__ x, int64_t xs, float* __restrict__ y,
                      int64_t ys) {
  constexpr int A = MT + 2;
#ifdef HRNET_MM_AVX2
  (void)g;
  __m256 t[3][A];  // t[j][p] = (G x)[p][j]
  for (int j = 0; j < 3; ++j) {
    const __m256 col[3] = {_mm256_loadu_ps(x + j * xs), _mm256_loadu_ps(x + (3 + j) * xs),
                           _mm256_loadu_ps(x + (6 + j) * xs)};
    Gv<MT>::g(col, t[j]);
  }
  for (int p = 0; p < A; ++p) {
    const __m256 row[3] = {t[0][p], t[1][p], t[2][p]};
    __m256 out[A];
    Gv<MT>::g(row, out);
    for (int s = 0; s < A; ++s) _mm256_storeu_ps(y + (p * A + s) * ys, out[s]);
  }
#else
  alignas(32) float t[A * 3 * L];
  for (int p = 0; p < A; ++p)
    for (int j = 0; j < 3; ++j)
      LOOP t[(p * 3 + j) * L + c] = static_cast<float>(g[p][0]) * x[(0 * 3 + j) * xs + c] +
                                    static_cast<float>(g[p][1]) * x[(1 * 3 + j) * xs + c] +
                                    static_cast<float>(g[p][2]) * x[(2 * 3 + j) * xs + c];
  for (int p = 0; p < A; ++p)
    for (int s = 0; s < A; ++s)
      LOOP y[(p * A + s) * ys + c] = t[(p * 3 + 0) * L + c] * static_cast<float>(g[s][0]) +
                                     t[(p * 3 + 1) * L + c] * static_cast<float>(g[s][1]) +
                                     t[(p * 3 + 2) * L + c] * static_cast<float>(g[s][2]);
#endif
}

// Its adjoint: y[(i * 3 + j) * ys] = sum_{p,s} G[p][i] x[(p * A + s) * xs] G[s][j] on L lanes.
template <int MT>
inline void weight_tf_adjoint(const double (&g)[6][3], const float* __restrict__ x, int64_t xs,
                              float* __restrict__ y, int64_t ys) {
  constexpr int A = MT + 2;
#ifdef HRNET_MM_AVX2
  (void)g;
  __m256 t[3][A];  // t[j][p] = (x G)[p][j]
  for (int p = 0; p < A; ++p) {
    __m256 row[A], out[3];
    for (int s = 0; s < A; ++s) row[s] = _mm256_loadu_ps(x + (p * A + s) * xs);
    Gv<MT>::gt(row, out);
    for (int j = 0; j < 3; ++j) t[j][p] = out[j];
  }
  for (int j = 0; j < 3; ++j) {
    __m256 out[3];
    Gv<MT>::gt(t[j], out);
    for (int i = 0; i < 3; ++i) _mm256_storeu_ps(y + (i * 3 + j) * ys, out[i]);
  }
#else
  alignas(32) float t[A * 3 * L] = {};
  for (int p = 0; p < A; ++p)
    for (int s = 0; s < A; ++s)
      for (int j = 0; j < 3; ++j) LOOP t[(p * 3 + j) * L + c] += x[(p * A + s) * xs + c] * static_cast<float>(g[s][j]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      alignas(32) float acc[L] = {};
      for (int p = 0; p < A; ++p) LOOP acc[c] += static_cast<float>(g[p][i]) * t[(p * 3 + j) * L + c];
      LOOP y[(i * 3 + j) * ys + c] = acc[c];
    }
#endif
}

#ifdef HRNET_MM_AVX2
// Rows r[0..8) of an 8x8 block become its columns.
inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

// x[(r * 9 + k) * 16 + q] = w'[j0 + q][r0 + r][tap k] for q < qn <= 16, r < rn <= 8, zero elsewhere: w' = w
// (K, C, 3, 3, element strides st), or with flip, w transposed and turned by 180 degrees. A channels_last weight
// (the training layout: C innermost) is read a vector at a time: with flip straight into x's rows, without it in
// 8 x 8 blocks turned around in registers.
inline void gather_block(const float* w, const int64_t (&st)[4], bool flip, int64_t j0, int64_t r0, int64_t qn,
                         int64_t rn, float* __restrict__ x) {
  const int64_t sq = flip ? st[1] : st[0], sr = flip ? st[0] : st[1];
  int64_t off[9];
  for (int k = 0; k < 9; ++k) {
    const int tap = flip ? 8 - k : k;
    off[k] = (tap / 3) * st[2] + (tap % 3) * st[3];
  }
  const float* base = w + j0 * sq + r0 * sr;
  if (qn < 16 || rn < 8) std::fill(x, x + 8 * 9 * 16, 0.f);
#ifdef HRNET_MM_AVX2
  if (sq == 1 && qn == 16) {
    for (int64_t r = 0; r < rn; ++r)
      for (int k = 0; k < 9; ++k) {
        const float* f = base + r * sr + off[k];
        _mm256_store_ps(x + (r * 9 + k) * 16, _mm256_loadu_ps(f));
        _mm256_store_ps(x + (r * 9 + k) * 16 + 8, _mm256_loadu_ps(f + 8));
      }
    return;
  }
#endif
  if (sq == 1) {
    for (int64_t r = 0; r < rn; ++r)
      for (int k = 0; k < 9; ++k) std::memcpy(x + (r * 9 + k) * 16, base + r * sr + off[k], sizeof(float) * qn);
    return;
  }
#ifdef HRNET_MM_AVX2
  if (sr == 1 && rn == 8) {
    for (int64_t qb = 0; qb + 8 <= qn; qb += 8)
      for (int k = 0; k < 9; ++k) {
        __m256 b[8];
        for (int i = 0; i < 8; ++i) b[i] = _mm256_loadu_ps(base + (qb + i) * sq + off[k]);
        transpose8(b);
        for (int r = 0; r < 8; ++r) _mm256_storeu_ps(x + (r * 9 + k) * 16 + qb, b[r]);
      }
    for (int64_t q = qn / 8 * 8; q < qn; ++q)
      for (int64_t r = 0; r < rn; ++r)
        for (int k = 0; k < 9; ++k) x[(r * 9 + k) * 16 + q] = base[q * sq + r + off[k]];
    return;
  }
  // A contiguous weight (the model's own layout: the 9 taps of each channel pair in a row), 8 values of q at a
  // time, the rest (qn % 8) below.
  const bool taps_in_a_row = st[2] == 3 && st[3] == 1;
  if (taps_in_a_row && !flip && sr == 9) {
    // each q's rn * 9 values (r, tap) lie in a row, in x's order: 8 x 8 blocks turned around
    const int64_t m = rn * 9;
    for (int64_t qb = 0; qb + 8 <= qn; qb += 8) {
      int64_t mb = 0;
      for (; mb + 8 <= m; mb += 8) {
        __m256 b[8];
        for (int i = 0; i < 8; ++i) b[i] = _mm256_loadu_ps(base + (qb + i) * sq + mb);
        transpose8(b);
        for (int i = 0; i < 8; ++i) _mm256_store_ps(x + (mb + i) * 16 + qb, b[i]);
      }
      for (; mb < m; ++mb)
        for (int i = 0; i < 8; ++i) x[mb * 16 + qb + i] = base[(qb + i) * sq + mb];
    }
    for (int64_t q = qn / 8 * 8; q < qn; ++q)
      for (int64_t mb = 0; mb < m; ++mb) x[mb * 16 + q] = base[q * sq + mb];
    return;
  }
  if (taps_in_a_row && flip && sq == 9) {
    // for each r, the 9 taps of consecutive q in a row, turned by 180 degrees: taps 0-7 of 8 q's as an 8 x 8
    // block turned around, tap 8 one value at a time
    for (int64_t r = 0; r < rn; ++r) {
      const float* row = base + r * sr;
      for (int64_t qb = 0; qb + 8 <= qn; qb += 8) {
        __m256 b[8];
        for (int i = 0; i < 8; ++i) b[i] = _mm256_loadu_ps(row + (qb + i) * 9);
        transpose8(b);
        for (int t = 0; t < 8; ++t) _mm256_store_ps(x + (r * 9 + 8 - t) * 16 + qb, b[t]);
        for (int i = 0; i < 8; ++i) x[(r * 9) * 16 + qb + i] = row[(qb + i) * 9 + 8];
      }
      for (int64_t q = qn / 8 * 8; q < qn; ++q)
        for (int k = 0; k < 9; ++k) x[(r * 9 + k) * 16 + q] = row[q * 9 + 8 - k];
    }
    return;
  }
#endif
  for (int64_t q = 0; q < qn; ++q)
    for (int64_t r = 0; r < rn; ++r)
      for (int k = 0; k < 9; ++k) x[(r * 9 + k) * 16 + q] = base[q * sq + r * sr + off[k]];
}

// A 3x3 weight to be transformed: w (K0, C0, 3, 3, element strides st), for the convolution with w' = w, or with
// flip, w transposed to (C0, K0) and turned by 180 degrees (the input gradient's): rows input channels of w',
// cols its output channels, cols8 rounded up to a multiple of 8.
struct RawWeight {
  const float* w;
  int64_t st[4];
  bool flip;
  int64_t rows, cols, cols8;
};

// Rows [r0, r0 + rn) (rn <= 8) of the 16-column panel j0 (8 columns for the last when cols8 % 16 == 8) of the
// packed transformed weight: dst[p * ps + r * width + q] for r < rn, q < width (columns past cols zero). A block
// of w is gathered into x (r, tap, q), then transformed 8 columns at a time into y.
template <int MT>
void transform_rows(const double (&g)[6][3], const RawWeight& rw, int64_t j0, int64_t r0, int64_t rn,
                    float* __restrict__ x, float* __restrict__ y, float* __restrict__ dst, int64_t ps) {
  constexpr int A = MT + 2, P = A * A;
  const int64_t width = std::min<int64_t>(16, rw.cols8 - j0), qn = std::min<int64_t>(width, rw.cols - j0);
  gather_block(rw.w, rw.st, rw.flip, j0, r0, qn, rn, x);
  for (int64_t r = 0; r < rn; ++r)
    for (int64_t q0 = 0; q0 < width; q0 += L) {
      weight_tf<MT>(g, x + r * 9 * 16 + q0, 16, y, L);
      for (int p = 0; p < P; ++p) LOOP dst[p * ps + r * width + q0 + c] = y[p * L + c];
    }
}

// The packed transformed weight (P, rows, cols8) of rw. Panel by panel and 8 rows at a time, each block staged so
// that every plane gets 8 x 16 contiguous floats per step (the planes are a power of two apart for the usual
// channel counts: writing them a few floats at a time would make the cache thrash).
template <int MT>
void pack_transformed(const RawWeight& rw, float* U) {
  constexpr int A = MT + 2, P = A * A, RB = 8;
  const int64_t rows = rw.rows, cols8 = rw.cols8, npanels = (cols8 + 15) / 16, nrb = (rows + RB - 1) / RB;
  double g[6][3];
  g_matrix(MT, g);
  at::parallel_for(0, npanels * nrb, 1, [&](int64_t b0, int64_t b1) {
    alignas(32) float x[RB * 9 * 16];
    alignas(32) float y[P * L];
    std::unique_ptr<float[]> buf(new float[P * RB * 16]);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = (b / nrb) * 16, r0 = (b % nrb) * RB, rn = std::min<int64_t>(RB, rows - r0);
      const int64_t width = std::min<int64_t>(16, cols8 - j0);
      transform_rows<MT>(g, rw, j0, r0, rn, x, y, buf.get(), RB * width);
      for (int p = 0; p < P; ++p)
        std::memcpy(U + p * rows * cols8 + rows * j0 + r0 * width, buf.get() + p * RB * width,
                    sizeof(float) * rn * width);
    }
  });
}

constexpr int64_t kBlockFloats = 64 * 1024;  // V and M of one block: 256 KB, half of a Zen 3 core's L2

template <int MT>
void run(const float* in, const float* U, const float* bias, const float* res, bool relu, float* out,
         const Geometry& g) {
  constexpr int64_t P = (MT + 2) * (MT + 2);
  const int64_t threads = std::max(1, at::get_num_threads());
  auto round16 = [](int64_t v) { return (v + 15) / 16 * 16; };  // slices start on a 16-column panel
  // Blocks of TB tiles times slices of kstep output channels (nb x nk jobs).
  int64_t TB, kstep;
  if (P * g.T * g.C <= kBlockFloats / 2) {
    // Few tiles (low-resolution maps): one block holds all of V; slice the output channels so that each slice of
    // M fits beside it and every thread gets one. Each U[p] is then read once in all.
    TB = g.T;
    kstep = std::max<int64_t>(16, (kBlockFloats - P * g.T * g.C) / (P * g.T) / 16 * 16);
    kstep = std::min(kstep, round16((g.K8 + threads - 1) / threads));
  } else {
    // Many tiles: blocks of tiles sized for the cache, all output channels (or slices of them) per block.
    kstep = std::max<int64_t>(16, round16(kBlockFloats / (P * 12) - g.C));
    TB = std::max<int64_t>(6, kBlockFloats / (P * (g.C + kstep)) / 6 * 6);
    TB = std::min(TB, g.T);
  }
  kstep = std::min(kstep, g.K8);
  const int64_t nb = (g.T + TB - 1) / TB, nk = (g.K8 + kstep - 1) / kstep;
  at::parallel_for(0, nb * nk, 1, [&](int64_t j0, int64_t j1) {
    std::unique_ptr<float[]> Vb(new float[P * TB * g.C]);
    std::unique_ptr<float[]> Mb(new float[P * TB * kstep]);
    int64_t done = -1;
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t tb = job / nk, kj = job % nk;
      const int64_t t0 = tb * TB, t1 = std::min(g.T, t0 + TB), tn = t1 - t0;
      if (tb != done) {
        transform_in<MT>(in, g, t0, t1, Vb.get(), TB * g.C);
        done = tb;
      }
      const int64_t k0 = kj * kstep, kc8 = std::min(g.K8, k0 + kstep) - k0, kc = std::min(g.K, k0 + kc8) - k0;
      for (int64_t p = 0; p < P; ++p)
        gemm(Vb.get() + p * TB * g.C, tn, g.C, U + p * g.C * g.K8, g.K8, k0, kc8, Mb.get() + p * TB * kc8);
      transform_out<MT>(Mb.get(), TB, kc8, g, t0, t1, k0, kc, bias, res, relu, out);
    }
  });
}

// Whether run_raw suits the convolution: a low-resolution map, whose transformed input for all tiles stays in L2
// (512 KB) and has fewer tiles than output channels (so its transformed weight is the larger operand).
bool raw_fits(int64_t P, const Geometry& g) { return P * g.T * g.C <= 2 * kBlockFloats && g.T <= g.K8; }

// The convolution of the weight rw, transformed a 16-column panel at a time inside the products, for a training
// step (its weight changes every step). Every thread transforms the input for all tiles once (V stays in L2), then
// takes a share of the panels: each panel is transformed once, used at once by its P products (all tiles) from
// L2, and its outputs transformed. At low resolution, writing the whole transformed weight out and reading it back
// (run, with winograd_weight) took longer than the products: for a 256-channel 8x6 map, 0.7 ms of 1.0.
template <int MT>
void run_raw(const float* in, const RawWeight& rw, float* out, const Geometry& g) {
  constexpr int64_t P = (MT + 2) * (MT + 2);
  const int64_t npanels = (g.K8 + 15) / 16, ups = g.C * 16 + 16;  // plane stride: off a power of two
  double gm[6][3];
  g_matrix(MT, gm);
  at::parallel_for(0, npanels, 1, [&](int64_t j0, int64_t j1) {
    std::unique_ptr<float[]> Vb(new float[P * g.T * g.C]);
    std::unique_ptr<float[]> Up(new float[P * ups]);
    std::unique_ptr<float[]> Mb(new float[P * g.T * 16]);
    alignas(32) float xs[8 * 9 * 16];
    alignas(32) float ys[P * L];
    transform_in<MT>(in, g, 0, g.T, Vb.get(), g.T * g.C);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = j * 16, width = std::min<int64_t>(16, g.K8 - k);
      for (int64_t r0 = 0; r0 < g.C; r0 += 8)
        transform_rows<MT>(gm, rw, k, r0, std::min<int64_t>(8, g.C - r0), xs, ys, Up.get() + r0 * width, ups);
      for (int64_t p = 0; p < P; ++p)
        row_blocks<false, false>(Vb.get() + p * g.T * g.C, g.C, Up.get() + p * ups, width, Mb.get() + p * g.T * width,
                                 width, g.C, g.T, width == 16);
      transform_out<MT>(Mb.get(), g.T, width, g, 0, g.T, k, std::min(g.K, k + width) - k, nullptr, nullptr, false,
                        out);
    }
  });
}

// Adjoint of the output transform on L lanes: the gradient of M from the gradient of one tile's outputs,
// z[r*zs] = sum_i A^T[i][r] y[i*ys] (y: MT values, z: A values).
template <int MT> struct Ta;
template <> struct Ta<4> {
  static inline void a(const float* __restrict__ y, int64_t ys, float* __restrict__ z, int64_t zs) {
    LOOP {
      const float y0 = y[0 * ys + c], y1 = y[1 * ys + c], y2 = y[2 * ys + c], y3 = y[3 * ys + c];
      const float e = y0 + y2, o = y1 + y3, e4 = y0 + 4.f * y2, o8 = 2.f * y1 + 8.f * y3;
      z[0 * zs + c] = y0;
      z[1 * zs + c] = e + o;
      z[2 * zs + c] = e - o;
      z[3 * zs + c] = e4 + o8;
      z[4 * zs + c] = e4 - o8;
      z[5 * zs + c] = y3;
    }
  }
};
template <> struct Ta<2> {
  static inline void a(const float* __restrict__ y, int64_t ys, float* __restrict__ z, int64_t zs) {
    LOOP {
      const float y0 = y[0 * ys + c], y1 = y[1 * ys + c];
      z[0 * zs + c] = y0;
      z[1 * zs + c] = y0 + y1;
      z[2 * zs + c] = y0 - y1;
      z[3 * zs + c] = -y1;
    }
  }
};

// dM[p][t][k] of tiles [t0, t1) from the channels_last output gradient dy (outputs past the map's edge count as
// zero): the gradient of the output transform, so that dU[p] = V[p]^T dM[p] is the gradient of U. Rows of ldk >= K
// floats (the columns past K zero), planes ps floats apart.
template <int MT>
void transform_grad_out(const float* __restrict__ dy, const Geometry& g, int64_t t0, int64_t t1,
                        float* __restrict__ dM, int64_t ldk, int64_t ps) {
  constexpr int A = Tf<MT>::A;
  const int64_t H = g.H, W = g.W, K = g.K;
  alignas(32) float d[MT * MT * L];
  alignas(32) float u[A * MT * L];
  alignas(32) float v[A * A * L];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    for (int64_t k0 = 0; k0 < K; k0 += L) {
      const int64_t kb = std::min<int64_t>(L, K - k0);
      for (int i = 0; i < MT; ++i)
        for (int j = 0; j < MT; ++j) {
          const int64_t y = ty * MT + i, x = tx * MT + j;
          float* dst = d + (i * MT + j) * L;
          if (y < H && x < W) {
            const float* src = dy + ((n * H + y) * W + x) * K + k0;
            LOOP dst[c] = c < kb ? src[c] : 0.f;
          } else {
            LOOP dst[c] = 0.f;
          }
        }
      for (int j = 0; j < MT; ++j) Ta<MT>::a(d + j * L, MT * L, u + j * L, MT * L);  // columns: u[r][j]
      for (int r = 0; r < A; ++r) Ta<MT>::a(u + r * MT * L, L, v + r * A * L, L);   // rows: v[r][s]
      const int64_t wb = std::min<int64_t>(L, ldk - k0);  // the lanes past K are zero in v
      for (int p = 0; p < A * A; ++p) {
        float* dst = dM + p * ps + t * ldk + k0;
        for (int c = 0; c < wb; ++c) dst[c] = v[p * L + c];
      }
    }
  }
}
}  // namespace

namespace {
Geometry geometry(const at::Tensor& x, int64_t K, int64_t tile) {
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), th = (H + tile - 1) / tile, tw = (W + tile - 1) / tile;
  return {N, H, W, x.size(1), K, (K + 7) / 8 * 8, th, tw, N * th * tw};
}

RawWeight raw_weight(const at::Tensor& weight, int64_t tile, bool flip) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_weight: tile must be 2 or 4, got ", tile);
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 4 &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "winograd_weight: weight must be a float32 (K, C, 3, 3) CPU tensor, got ", weight.sizes());
  const int64_t K0 = weight.size(0), C0 = weight.size(1), cols = flip ? C0 : K0;
  return {weight.data_ptr<float>(),
          {weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3)},
          flip,
          flip ? K0 : C0,
          cols,
          (cols + 7) / 8 * 8};
}
}  // namespace

// x: (N, C, H, W) float32 channels_last; U: (P, C, K8) float32 contiguous, P = (tile + 2)^2, K8 = K rounded up
// to a multiple of 8; bias: (K,) or None; residual: (N, K, H, W) channels_last or None. With inplace, the result
// is written into residual.
at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& U, int64_t K, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& residual, bool relu, int64_t tile, bool inplace) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_conv: tile must be 2 or 4, got ", tile);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_conv: x must be a float32 channels_last 4-D CPU tensor");
  const int64_t P = (tile + 2) * (tile + 2), N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K8 = (K + 7) / 8 * 8;
  TORCH_CHECK(K > 0 && U.device().is_cpu() && U.scalar_type() == at::kFloat && U.dim() == 3 && U.size(0) == P &&
                  U.size(1) == C && U.size(2) == K8 && U.is_contiguous(),
              "winograd_conv: the transformed weight must be a contiguous float32 (", P, ", ", C, ", ", K8,
              ") tensor, got ", U.sizes());
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == K && bias->is_contiguous(),
                "winograd_conv: bias must be a contiguous float32 tensor of ", K, " values");
    b = bias->data_ptr<float>();
  }
  const float* res = nullptr;
  if (residual.has_value()) {
    const auto& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef({N, K, H, W}) && r.scalar_type() == at::kFloat &&
                    r.is_contiguous(at::MemoryFormat::ChannelsLast),
                "winograd_conv: residual must be a float32 channels_last tensor of the output's shape");
    res = r.data_ptr<float>();
  }
  TORCH_CHECK(!inplace || res, "winograd_conv: inplace needs a residual");
  at::Tensor out = inplace ? *residual
                           : at::empty({N, K, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Geometry g = geometry(x, K, tile);
  if (tile == 4) run<4>(x.data_ptr<float>(), U.data_ptr<float>(), b, res, relu, out.data_ptr<float>(), g);
  else run<2>(x.data_ptr<float>(), U.data_ptr<float>(), b, res, relu, out.data_ptr<float>(), g);
  return out;
}

// Shared with norm.cpp (hence outside the anonymous namespace).
void check_map(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "hrnet_mm kernel: ", name, " must be a float32 channels_last 4-D CPU tensor, got sizes ", x.sizes(),
              " strides ", x.strides(), " ", x.scalar_type(), " on ", x.device());
}

// prepare_weight for training (the weight changes every step): w (K, C, 3, 3) -> the packed (P, C, K8)
// transformed weight; with flip, that of the convolution giving the input gradient (w transposed to (C, K) and
// turned by 180 degrees): a packed (P, K, C8) tensor.
at::Tensor winograd_weight(const at::Tensor& weight, int64_t tile, bool flip) {
  const RawWeight rw = raw_weight(weight, tile, flip);
  at::Tensor U = at::empty({(tile + 2) * (tile + 2), rw.rows, rw.cols8},
                           weight.options().memory_format(at::MemoryFormat::Contiguous));
  if (tile == 4) pack_transformed<4>(rw, U.data_ptr<float>());
  else pack_transformed<2>(rw, U.data_ptr<float>());
  return U;
}

namespace {
// The adjoint of the weight transform of rows [0, cn) and columns [0, kn) of dU (row stride ldr, plane stride ps),
// written into dw as the gradient of the rows c0.. (input channels) and columns k0.. (output channels), in dw's
// layout (element strides os: k, c, then the 9 taps).
template <int MT>
void adjoint_store(const double (&gm)[6][3], const float* dU, int64_t ldr, int64_t ps, int64_t c0, int64_t cn,
                   int64_t k0, int64_t kn, float* dw, const int64_t (&os)[11]) {
  bool taps_in_a_row = true;  // a contiguous (K, C, 3, 3) gradient: the 9 taps of each (k, c) in a row
  for (int t = 0; t < 9; ++t) taps_in_a_row = taps_in_a_row && os[2 + t] == t;
  const bool c_innermost = os[1] == 1;  // a channels_last gradient: the input channels of each (k, tap) in a row
  int64_t r = 0;
#ifdef HRNET_MM_AVX2
  if (c_innermost)  // 8 rows at a time, turned around in registers: per column and tap, 8 rows in a row
    for (; r < cn; r += 8) {
      const int64_t rn = std::min<int64_t>(8, cn - r);
      const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rn)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      for (int64_t kk = 0; kk < kn; kk += L) {
        alignas(32) float y[8][9 * L];
        for (int64_t i = 0; i < rn; ++i) weight_tf_adjoint<MT>(gm, dU + (r + i) * ldr + kk, ps, y[i], L);
        const int64_t kb = std::min<int64_t>(L, kn - kk);
        for (int t = 0; t < 9; ++t) {
          __m256 b[8];
          for (int i = 0; i < 8; ++i) b[i] = i < rn ? _mm256_load_ps(y[i] + t * L) : _mm256_setzero_ps();
          transpose8(b);  // b[j]: column kk + j of the rows
          for (int64_t j = 0; j < kb; ++j)
            _mm256_maskstore_ps(dw + (k0 + kk + j) * os[0] + c0 + r + os[2 + t], mask, b[j]);
        }
      }
    }
#endif
  for (; r < cn; ++r)
    for (int64_t kk = 0; kk < kn; kk += L) {
      alignas(32) float y[9 * L];
      weight_tf_adjoint<MT>(gm, dU + r * ldr + kk, ps, y, L);
      const int64_t kb = std::min<int64_t>(L, kn - kk);
#ifdef HRNET_MM_AVX2
      if (kb == L && taps_in_a_row) {  // turned around in registers: 8 rows of 8 taps, then the ninth
        __m256 b[8];
        for (int t = 0; t < 8; ++t) b[t] = _mm256_load_ps(y + t * L);
        transpose8(b);
        for (int c = 0; c < L; ++c) {
          float* d = dw + (k0 + kk + c) * os[0] + (c0 + r) * os[1];
          _mm256_storeu_ps(d, b[c]);
          d[8] = y[8 * L + c];
        }
        continue;
      }
#endif
      for (int c = 0; c < kb; ++c) {
        float* d = dw + (k0 + kk + c) * os[0] + (c0 + r) * os[1];
        for (int t = 0; t < 9; ++t) d[os[2 + t]] = y[t * L + c];
      }
    }
}

// Tiles summed in float per partial sum of the weight gradient: partial sums of a few hundred products are then
// added up, which keeps the rounding error of a high-resolution map's sum over thousands of tiles near that of a
// blocked matrix product.
constexpr int64_t kSumTiles = 64;

// The weight gradient of x's 3x3 convolution by F(MT x MT, 3x3) for a map whose transforms do not fit in L2 but
// whose dU (P x C x K8) does: chunks of TC tiles (TC <= kSumTiles), each transformed (V and dM, in L2) and its
// products dU[p] += V[p]^T dM[p] added at once, so that no transform of the whole map goes to memory and comes
// back (the two passes of weight_grad_fused, which for 32 channels on 64x48 spent most of their time there).
// Two partial sums, each over a fixed half of the chunks in order and added at the end, whatever the thread
// count: the floats are the same with one thread (beside the input gradient) as with two.
template <int MT>
void weight_grad_chunks(const float* x, const float* dy, const Geometry& g, const double (&gm)[6][3], float* dw,
                        const int64_t (&os)[11]) {
  constexpr int A = MT + 2, P = A * A;
  const int64_t C = g.C, K = g.K, K8 = g.K8, T = g.T;
  const int64_t TC = std::max<int64_t>(6, std::min<int64_t>(kSumTiles, 2 * kBlockFloats / (P * (C + K8))));
  const int64_t nch = (T + TC - 1) / TC, NS = std::min<int64_t>(2, nch);
  // planes 16 floats past their size apart (sizes are multiples of 4 KB for the usual channel counts)
  const int64_t sU = C * K8 + 16, sV = TC * C + 16, sM = TC * K8 + 16;
  at::Tensor Ut = at::empty({NS * P * sU}, at::kFloat);
  float* Us = Ut.data_ptr<float>();
  at::parallel_for(0, NS, 1, [&](int64_t s0, int64_t s1) {
    std::unique_ptr<float[]> Vb(new float[P * sV]), Mb(new float[P * sM]);
    for (int64_t s = s0; s < s1; ++s) {
      float* dU = Us + s * P * sU;
      const int64_t ch0 = s * nch / NS, ch1 = (s + 1) * nch / NS;
      for (int64_t ch = ch0; ch < ch1; ++ch) {
        const int64_t t0 = ch * TC, t1 = std::min(T, t0 + TC), tn = t1 - t0;
        transform_in<MT>(x, g, t0, t1, Vb.get(), sV);
        transform_grad_out<MT>(dy, g, t0, t1, Mb.get() - t0 * K8, K8, sM);  // rows from tile t0
        for (int64_t p = 0; p < P; ++p)
          for (int64_t k = 0; k < K8; k += 16) {
            const float* v = Vb.get() + p * sV;
            const float* m = Mb.get() + p * sM + k;
            float* u = dU + p * sU + k;
            if (ch == ch0) row_blocks<true, false>(v, C, m, K8, u, K8, tn, C, k + 16 <= K8);
            else row_blocks<true, true>(v, C, m, K8, u, K8, tn, C, k + 16 <= K8);
          }
      }
    }
  });
  if (NS == 2) {
    float* a = Us;
    const float* b = Us + P * sU;
    at::parallel_for(0, P * sU, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) a[i] += b[i];
    });
  }
  const int64_t nrb = (C + 7) / 8;
  at::parallel_for(0, nrb, 1, [&](int64_t b0, int64_t b1) {
    adjoint_store<MT>(gm, Us + b0 * 8 * K8, K8, sU, b0 * 8, std::min(C, b1 * 8) - b0 * 8, 0, K, dw, os);
  });
}

// Whether the weight gradient's transforms of the whole map (V and dM) fit in a core's L2 (1 MB).
bool whole_transforms_fit(int64_t P, const Geometry& g) { return P * g.T * (g.C + g.K8) <= 4 * kBlockFloats; }

// Whether weight_grad_chunks suits the map: its transforms are too large for a core's L2 (else weight_grad_fused
// keeps them there whole), the dU it sums into is not.
bool chunks_suit(int64_t P, const Geometry& g) {
  return !whole_transforms_fit(P, g) && P * g.C * g.K8 <= 4 * kBlockFloats;
}

// The weight gradient of x's 3x3 convolution, by F(MT x MT, 3x3) in two parallel passes:
//   1. every tile's input transform V[p][t][c] and output-gradient transform dM[p][t][k] (rows K8 wide, zero past
//      K), each plane 16 floats past a multiple of its size: plane sizes are multiples of 4 KB for the usual
//      channel counts, and planes exactly that far apart would share the same few cache sets;
//   2. per block of rows c (input channels) and columns k (output channels): dU[p] = V[p]^T dM[p] for every
//      plane into a buffer that stays in L2 (kSumTiles tiles at a time), then the adjoint of the weight transform
//      straight into dw.
// No (P, C, K) dU is written to memory and read back, and the products need no copy of V transposed.
template <int MT>
void weight_grad_fused(const float* x, const float* dy, const Geometry& g, const double (&gm)[6][3], float* dw,
                       const int64_t (&os)[11]) {
  constexpr int A = MT + 2, P = A * A;
  const int64_t C = g.C, K = g.K, K8 = g.K8, T = g.T;
  const int64_t sV = T * C + 16, sM = T * K8 + 16;
  at::Tensor Vt = at::empty({P * sV}, at::kFloat), dMt = at::empty({P * sM}, at::kFloat);
  float* Vp = Vt.data_ptr<float>();
  float* dMp = dMt.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    transform_in<MT>(x, g, t0, t1, Vp + t0 * C, sV);
    transform_grad_out<MT>(dy, g, t0, t1, dMp, K8, sM);
  });
  const int64_t threads = std::max(1, at::get_num_threads());
  auto round16 = [](int64_t v) { return (v + 15) / 16 * 16; };
  int64_t RB, kstep;
  if (whole_transforms_fit(P, g) && P * C * 16 <= 4 * kBlockFloats) {
    // V and dM (and a 16-column slice of dU) fit in a core's L2: all rows per job and slices of the columns, each
    // job reading all of V from L2 and writing whole contiguous runs of the gradient (9 * C floats per column,
    // either layout). With blocks of rows, each job wrote K runs of 9 * RB floats (K * 9 of RB floats for a
    // channels_last gradient), and the partial cache lines at their ends came back from memory for the next
    // block: for 256 channels on 8x6, 1.2x the time (2.1x channels_last).
    RB = C;
    kstep = std::max<int64_t>(16, kBlockFloats / (P * C) / 16 * 16);
    kstep = std::min({kstep, round16(K8), round16((K8 + threads - 1) / threads)});
  } else {
    // Row blocks of a multiple of 6 rows (the product's micro kernel) sized for L2, all columns where they fit.
    auto rows_for = [&](int64_t cols) { return kBlockFloats / (P * cols) / 6 * 6; };
    kstep = round16(K8);
    while (kstep > 16 && rows_for(kstep) < 6) kstep = round16(kstep / 2);
    RB = std::max<int64_t>(6, std::min(rows_for(kstep), (C + 6 * threads - 1) / (6 * threads) * 6));
    const int64_t nrb = (C + RB - 1) / RB;
    if (nrb < threads && kstep > 16) {  // too few row blocks to go round: split the columns too
      const int64_t parts = (threads + nrb - 1) / nrb;
      kstep = std::max<int64_t>(16, round16((K8 + parts - 1) / parts));
    }
  }
  const int64_t nrb = (C + RB - 1) / RB;
  const int64_t nkb = (K8 + kstep - 1) / kstep;
  at::parallel_for(0, nrb * nkb, 1, [&](int64_t j0, int64_t j1) {
    // planes 16 floats past their size apart: sizes are multiples of 4 KB for the usual channel counts, and the
    // adjoint reads one row of every plane at a time
    const int64_t ups = RB * kstep + 16;
    std::unique_ptr<float[]> buf(new float[P * ups]);
    float* dU = buf.get();
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t c0 = (job / nkb) * RB, cn = std::min(RB, C - c0);
      const int64_t k0 = (job % nkb) * kstep, kn8 = std::min(kstep, K8 - k0), kn = std::min(K, k0 + kn8) - k0;
      for (int64_t tc0 = 0; tc0 < T; tc0 += kSumTiles)
        for (int64_t p = 0; p < P; ++p) {
          const int64_t tn = std::min(kSumTiles, T - tc0);
          const float* v = Vp + p * sV + tc0 * C + c0;
          const float* m = dMp + p * sM + tc0 * K8 + k0;
          float* u = dU + p * ups;
          for (int64_t k = 0; k < kn8; k += 16)
            if (tc0 == 0) row_blocks<true, false>(v, C, m + k, K8, u + k, kstep, tn, cn, k + 16 <= kn8);
            else row_blocks<true, true>(v, C, m + k, K8, u + k, kstep, tn, cn, k + 16 <= kn8);
        }
      adjoint_store<MT>(gm, dU, kstep, ups, c0, cn, k0, kn, dw, os);
    }
  });
}
}  // namespace

// The weight gradient (K, C, 3, 3) of the 3x3 stride-1 zero-padding-1 convolution of x (N, C, H, W) given the
// output gradient dy (N, K, H, W), both float32 channels_last, by F(tile x tile, 3x3) (weight_grad_chunks for large
// maps, weight_grad_fused for the others); laid out like weight (contiguous or channels_last), as autograd stores a
// parameter's gradient.
at::Tensor winograd_conv_weight_grad(const at::Tensor& x, const at::Tensor& dy, int64_t tile,
                                     const at::Tensor& weight) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_conv_weight_grad: tile must be 2 or 4, got ", tile);
  check_map(x, "x");
  check_map(dy, "dy");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = dy.size(1);
  TORCH_CHECK(dy.size(0) == N && dy.size(2) == H && dy.size(3) == W,
              "winograd_conv_weight_grad: dy must be (", N, ", K, ", H, ", ", W, "), got ", dy.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == K && weight.size(1) == C && weight.size(2) == 3 &&
                  weight.size(3) == 3,
              "winograd_conv_weight_grad: weight must be (", K, ", ", C, ", 3, 3), got ", weight.sizes());
  at::Tensor out = at::empty_strided(weight.sizes(), weight.strides(), x.options());
  const Geometry g = geometry(x, K, tile);
  double gm[6][3];
  g_matrix(tile, gm);
  const int64_t s2 = out.stride(2), s3 = out.stride(3);
  const int64_t os[11] = {out.stride(0), out.stride(1), 0, s3, 2 * s3, s2, s2 + s3, s2 + 2 * s3, 2 * s2,
                          2 * s2 + s3, 2 * s2 + 2 * s3};
  const float *xp = x.data_ptr<float>(), *dyp = dy.data_ptr<float>();
  float* op = out.data_ptr<float>();
  if (chunks_suit((tile + 2) * (tile + 2), g)) {
    if (tile == 4) weight_grad_chunks<4>(xp, dyp, g, gm, op, os);
    else weight_grad_chunks<2>(xp, dyp, g, gm, op, os);
  } else if (tile == 4) {
    weight_grad_fused<4>(xp, dyp, g, gm, op, os);
  } else {
    weight_grad_fused<2>(xp, dyp, g, gm, op, os);
  }
  return out;
}

namespace {
bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

void check_train_tile(int64_t tile, const char* name) {
  TORCH_CHECK(tile == 0 || tile == 2 || tile == 4, name, ": tile must be 0 (oneDNN), 2 or 4, got ", tile);
}

// conv2d(x, w', padding=1) by Winograd F(tile x tile): w' = weight, or with flip, weight transposed and turned by
// 180 degrees (the convolution that gives the input gradient).
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight, int64_t tile, bool flip) {
  const RawWeight rw = raw_weight(weight, tile, flip);
  check_map(x, "x");
  TORCH_CHECK(x.size(1) == rw.rows, "hrnet_mm Winograd convolution: x has ", x.size(1), " channels, the weight ",
              rw.rows);
  const Geometry g = geometry(x, rw.cols, tile);
  if (!raw_fits((tile + 2) * (tile + 2), g))
    return winograd_conv(x, winograd_weight(weight, tile, flip), rw.cols, c10::nullopt, c10::nullopt, false, tile,
                         false);
  at::Tensor out = at::empty({g.N, g.K, g.H, g.W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (tile == 4) run_raw<4>(x.data_ptr<float>(), rw, out.data_ptr<float>(), g);
  else run_raw<2>(x.data_ptr<float>(), rw, out.data_ptr<float>(), g);
  return out;
}

// torch's backward of conv2d(x, weight, padding=1): the gradients (input, weight, bias) that mask asks for.
std::tuple<at::Tensor, at::Tensor, at::Tensor> onednn_backward(const at::Tensor& dy, const at::Tensor& x,
                                                               const at::Tensor& weight, std::array<bool, 3> mask) {
  return at::convolution_backward(dy, x, weight, c10::nullopt, {1, 1}, {1, 1}, {1, 1}, false, {0, 0}, 1, mask);
}

// The passes of the training convolution conv2d(x, weight, padding=1) (x, dy channels_last), each by oneDNN
// (tile 0: torch's own convolution and its backward) or Winograd F(tile x tile), exported for
// hrnet_mm.winograd.choose_training_algorithm to time. The output:
at::Tensor train_forward(const at::Tensor& x, const at::Tensor& weight, int64_t tile) {
  check_train_tile(tile, "winograd_train_forward");
  return tile == 0 ? at::conv2d(x, weight, {}, 1, 1) : winograd_conv3x3(x, weight, tile, false);
}

// The input gradient. By oneDNN, torch's convolution backward, not a convolution with a turned copy of the weight:
// the flip alone took 0.7 ms per 256-channel layer, as long as the product.
at::Tensor train_input_grad(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, int64_t tile) {
  check_train_tile(tile, "winograd_train_input_grad");
  return tile == 0 ? std::get<0>(onednn_backward(dy, x, weight, {true, false, false}))
                   : winograd_conv3x3(dy, weight, tile, true);
}

// The weight gradient, laid out like weight (winograd_conv_weight_grad for the Winograd tiles).
at::Tensor train_weight_grad(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& weight, int64_t tile) {
  check_train_tile(tile, "winograd_train_weight_grad");
  return tile == 0 ? std::get<1>(onednn_backward(dy, x, weight, {false, true, false}))
                   : winograd_conv_weight_grad(x, dy, tile, weight);
}

// Both gradients of the training convolution from dy (channels_last), those asked for: the input gradient by `tile`
// (channels_last), the weight gradient by `weight_tile`. With `together`, side by side, one thread each, where both
// are Winograd and torch has exactly two intra-op threads outside any parallel region: on low-resolution maps
// neither pass gains as much from a second thread as running them at once does (hrnet_mm.winograd times the two
// ways per shape). Never with a oneDNN pass: oneDNN's weight gradient called from inside a parallel region never
// returned (torch 2.14, OpenMP). The results are the same floats either way: inside the region each pass splits
// its work as for two threads and runs the parts in turn.
std::tuple<at::Tensor, at::Tensor> train_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                  int64_t tile, int64_t weight_tile, bool together, bool want_dx,
                                                  bool want_dw) {
  at::Tensor dx, dw;
  auto input_grad = [&] { dx = train_input_grad(dy, x, weight, tile); };
  auto weight_grad = [&] { dw = train_weight_grad(x, dy, weight, weight_tile); };
  if (together && want_dx && want_dw && tile != 0 && weight_tile != 0 && at::get_num_threads() == 2 &&
      !at::in_parallel_region()) {
    const at::ThreadLocalState state;  // the caller's (grad mode off, dispatch keys) for the worker thread too
    at::parallel_for(0, 2, 1, [&](int64_t b0, int64_t b1) {
      at::ThreadLocalStateGuard guard(state);
      for (int64_t b = b0; b < b1; ++b) b == 0 ? input_grad() : weight_grad();
    });
  } else {
    if (want_dx) input_grad();
    if (want_dw) weight_grad();
  }
  return {dx, dw};
}

// Both gradients, as train_backward computes them for the autograd node, exported for
// hrnet_mm.winograd.choose_training_algorithm to time.
std::tuple<at::Tensor, at::Tensor> train_gradients(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                   int64_t tile, int64_t weight_tile, bool together) {
  check_train_tile(tile, "winograd_train_gradients");
  check_train_tile(weight_tile, "winograd_train_gradients");
  return train_backward(dy, x, weight, tile, weight_tile, together, true, true);
}

// ---- the operator hrnet_mm::train_conv3x3 -------------------------------------------------------------------------
// conv2d(x, weight, padding=1) with the forward pass and the input gradient by `tile`, the weight gradient by
// `weight_tile` (0 = oneDNN, 2 or 4 = Winograd), the two gradients side by side with `together` (train_backward).
// The output and the input gradient keep x's memory format, the weight gradient the weight's. Registered with the
// dispatcher: a CPU kernel for each pass (the backward is an operator of its own, so that torch.compile can trace
// it through its fake kernel, hrnet_mm/ops/fake.py) and an autograd kernel in C++, so that a training step pays no
// Python call per layer in either direction.

// CPU kernel of the forward pass.
at::Tensor train_conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight, int64_t tile, int64_t weight_tile,
                             bool together) {
  check_train_tile(tile, "hrnet_mm::train_conv3x3");
  check_train_tile(weight_tile, "hrnet_mm::train_conv3x3");
  const bool nchw = !is_channels_last(x);
  const at::Tensor y = train_forward(x.contiguous(at::MemoryFormat::ChannelsLast), weight, tile);
  return nchw ? y.contiguous() : y;
}

// CPU kernel of the backward pass: (input gradient or an empty tensor, weight gradient or an empty tensor).
std::tuple<at::Tensor, at::Tensor> train_conv3x3_backward_cpu(const at::Tensor& dy, const at::Tensor& x,
                                                              const at::Tensor& weight, int64_t tile,
                                                              int64_t weight_tile, bool together, bool need_dx,
                                                              bool need_dw) {
  check_train_tile(tile, "hrnet_mm::train_conv3x3_backward");
  check_train_tile(weight_tile, "hrnet_mm::train_conv3x3_backward");
  const bool nchw = !is_channels_last(x);
  auto [dx, dw] = train_backward(dy.contiguous(at::MemoryFormat::ChannelsLast),
                                 x.contiguous(at::MemoryFormat::ChannelsLast), weight, tile, weight_tile, together,
                                 need_dx, need_dw);
  dx = dx.defined() ? (nchw ? dx.contiguous() : dx) : at::empty({0}, x.options());
  // oneDNN's weight gradient follows x's layout: the gradient is laid out like the weight, as the fake kernel says
  dw = dw.defined() ? dw.contiguous(weight.suggest_memory_format()) : at::empty({0}, weight.options());
  return {dx, dw};
}

at::Tensor call_train_conv3x3(const at::Tensor& x, const at::Tensor& weight, int64_t tile, int64_t weight_tile,
                              bool together) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hrnet_mm::train_conv3x3", "")
                       .typed<decltype(train_conv3x3_cpu)>();
  return op.call(x, weight, tile, weight_tile, together);
}

std::tuple<at::Tensor, at::Tensor> call_train_conv3x3_backward(const at::Tensor& dy, const at::Tensor& x,
                                                               const at::Tensor& weight, int64_t tile,
                                                               int64_t weight_tile, bool together, bool need_dx,
                                                               bool need_dw) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hrnet_mm::train_conv3x3_backward", "")
                       .typed<decltype(train_conv3x3_backward_cpu)>();
  return op.call(dy, x, weight, tile, weight_tile, together, need_dx, need_dw);
}

// The autograd node. x is saved in channels_last (the kernels' layout), once.
struct TrainConv3x3 : public torch::autograd::Function<TrainConv3x3> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            int64_t tile, int64_t weight_tile, bool together) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool nchw = !is_channels_last(x);
    const at::Tensor xl = x.contiguous(at::MemoryFormat::ChannelsLast);
    ctx->save_for_backward({xl, weight});
    ctx->saved_data["tile"] = tile;
    ctx->saved_data["weight_tile"] = weight_tile;
    ctx->saved_data["together"] = together;
    ctx->saved_data["nchw"] = nchw;
    const at::Tensor y = call_train_conv3x3(xl, weight, tile, weight_tile, together);
    return nchw ? y.contiguous() : y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "hrnet_mm Winograd training convolution: its backward is not differentiable (create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    const bool need_dx = ctx->needs_input_grad(0), need_dw = ctx->needs_input_grad(1);
    auto [dx, dw] = call_train_conv3x3_backward(
        grads[0].contiguous(at::MemoryFormat::ChannelsLast), saved[0], saved[1], ctx->saved_data["tile"].toInt(),
        ctx->saved_data["weight_tile"].toInt(), ctx->saved_data["together"].toBool(), need_dx, need_dw);
    if (need_dx && ctx->saved_data["nchw"].toBool()) dx = dx.contiguous();
    return {need_dx ? dx : at::Tensor(), need_dw ? dw : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor train_conv3x3_autograd(const at::Tensor& x, const at::Tensor& weight, int64_t tile, int64_t weight_tile,
                                  bool together) {
  return TrainConv3x3::apply(x, weight, tile, weight_tile, together);
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(hrnet_mm, m) {
  m.def("train_conv3x3(Tensor x, Tensor weight, int tile, int weight_tile, bool together=False) -> Tensor");
  m.def("train_conv3x3_backward(Tensor dy, Tensor x, Tensor weight, int tile, int weight_tile, bool together, "
        "bool need_dx, bool need_dw) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hrnet_mm, CPU, m) {
  m.impl("train_conv3x3", &train_conv3x3_cpu);
  m.impl("train_conv3x3_backward", &train_conv3x3_backward_cpu);
}

TORCH_LIBRARY_IMPL(hrnet_mm, Autograd, m) { m.impl("train_conv3x3", &train_conv3x3_autograd); }

namespace hrnet_mm_norm {
void register_norm(pybind11::module& m);  // norm.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  hrnet_mm_norm::register_norm(m);
  m.def("winograd_conv", &winograd_conv,
        "relu?(conv3x3(x) + bias [+ residual]) by Winograd F(tile x tile, 3x3), stride 1, zero padding 1");
  m.def("winograd_weight", &winograd_weight, "packed transformed weight (flip: of the input-gradient convolution)");
  m.def("winograd_conv_weight_grad", &winograd_conv_weight_grad,
        "weight gradient (K, C, 3, 3) of the 3x3 convolution of x given the output gradient dy");
  m.def("winograd_train_forward", &train_forward,
        "hrnet_mm::train_conv3x3's forward pass conv2d(x, weight, padding=1) by oneDNN (0) or Winograd (2, 4)");
  m.def("winograd_train_input_grad", &train_input_grad,
        "hrnet_mm::train_conv3x3's input gradient from dy by oneDNN (0) or Winograd (2, 4)");
  m.def("winograd_train_gradients", &train_gradients,
        "hrnet_mm::train_conv3x3's two gradients (input, weight) from dy, side by side or not (together)");
  m.def("winograd_train_weight_grad", &train_weight_grad,
        "hrnet_mm::train_conv3x3's weight gradient by oneDNN (0) or Winograd (2, 4), laid out like weight");
}
