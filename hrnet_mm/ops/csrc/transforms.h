// The Winograd transforms on L channel lanes: the input transform B^T d B, the output transform A^T m A (with bias,
// residual and ReLU), the weight transform G g G^T and its adjoint, the adjoint of the output transform, and the
// packing of a transformed weight into 16-column panels.
#pragma once
#include "winograd.h"

namespace hrnet_mm_winograd {
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


#ifdef HRNET_MM_AVX512
// The same 1-D transforms on 16 channel lanes held in registers: bt (B^T, A values to A) and at (A^T, A values to
// MT), for the input and output transforms on AVX-512.
template <int MT> struct Tv;
template <> struct Tv<4> {
  static inline void bt(const __m512 (&a)[6], __m512 (&y)[6]) {
    const __m512 f4 = _mm512_set1_ps(4.f), f5 = _mm512_set1_ps(5.f), f2 = _mm512_set1_ps(2.f);
    const __m512 e = _mm512_sub_ps(a[4], a[2]);
    y[0] = _mm512_fmadd_ps(f4, a[0], _mm512_fnmadd_ps(f5, a[2], a[4]));
    y[1] = _mm512_fnmadd_ps(f4, _mm512_add_ps(a[1], a[2]), _mm512_add_ps(a[3], a[4]));
    y[2] = _mm512_fmadd_ps(f4, _mm512_sub_ps(a[1], a[2]), _mm512_sub_ps(a[4], a[3]));
    y[3] = _mm512_fmadd_ps(f2, _mm512_sub_ps(a[3], a[1]), e);
    y[4] = _mm512_fmadd_ps(f2, _mm512_sub_ps(a[1], a[3]), e);
    y[5] = _mm512_fmadd_ps(f4, a[1], _mm512_fnmadd_ps(f5, a[3], a[5]));
  }
  static inline void at(const __m512 (&m)[6], __m512 (&o)[4]) {
    const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
    const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
    o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
    o[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.f), d34, d12);
    o[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.f), s34, s12);
    o[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), d34, d12), m[5]);
  }
};
template <> struct Tv<2> {
  static inline void bt(const __m512 (&a)[4], __m512 (&y)[4]) {
    y[0] = _mm512_sub_ps(a[0], a[2]);
    y[1] = _mm512_add_ps(a[1], a[2]);
    y[2] = _mm512_sub_ps(a[2], a[1]);
    y[3] = _mm512_sub_ps(a[1], a[3]);
  }
  static inline void at(const __m512 (&m)[4], __m512 (&o)[2]) {
    o[0] = _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]);
    o[1] = _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]);
  }
};

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// transform_in on 16 channels at a time, in registers: each row of the tile is read (zeros past the map's edges
// and, by a lane mask, past C) and transformed, then each column, which is written to V. One path for interior
// and border tiles, no staging copies.
template <int MT>
void transform_in16(const float* __restrict__ in, const Geometry& g, int64_t t0, int64_t t1, float* __restrict__ V,
                    int64_t ps) {
  constexpr int A = MT + 2;
  const int64_t H = g.H, W = g.W, C = g.C;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const int64_t y0 = ty * MT - 1, x0 = tx * MT - 1;
    float* dst_t = V + (t - t0) * C;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 m = lanes(C - c0);
      __m512 r[A][A];  // r[i][q]: row i of the tile after B^T along it
      for (int i = 0; i < A; ++i) {
        __m512 d[A];
        const int64_t y = y0 + i;
        const float* src = in + ((n * H + y) * W + x0) * C + c0;
        for (int j = 0; j < A; ++j) {
          const int64_t x = x0 + j;
          d[j] = (y >= 0 && y < H && x >= 0 && x < W) ? _mm512_maskz_loadu_ps(m, src + j * C) : _mm512_setzero_ps();
        }
        Tv<MT>::bt(d, r[i]);
      }
      for (int q = 0; q < A; ++q) {
        __m512 col[A], v[A];
        for (int i = 0; i < A; ++i) col[i] = r[i][q];
        Tv<MT>::bt(col, v);
        for (int p = 0; p < A; ++p) _mm512_mask_storeu_ps(dst_t + (p * A + q) * ps + c0, m, v[p]);
      }
    }
  }
}

// transform_out on 16 output channels at a time, in registers (lanes past kc masked off).
template <int MT>
void transform_out16(const float* __restrict__ M, int64_t ldt, int64_t kc8, const Geometry& g, int64_t t0,
                     int64_t t1, int64_t k0, int64_t kc, const float* __restrict__ bias, const float* res, bool relu,
                     float* out) {
  constexpr int A = MT + 2;
  const int64_t H = g.H, W = g.W, K = g.K, ps = ldt * kc8;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const float* src_t = M + (t - t0) * kc8;
    for (int64_t kk = 0; kk < kc; kk += 16) {
      const __mmask16 m = lanes(kc - kk);
      __m512 u[MT][A];  // u[i][q]: column q of the tile after A^T along it
      for (int q = 0; q < A; ++q) {
        __m512 col[A], o[MT];
        for (int i = 0; i < A; ++i) col[i] = _mm512_maskz_loadu_ps(m, src_t + (i * A + q) * ps + kk);
        Tv<MT>::at(col, o);
        for (int i = 0; i < MT; ++i) u[i][q] = o[i];
      }
      const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + k0 + kk) : zero;
      for (int i = 0; i < MT; ++i) {
        const int64_t y = ty * MT + i;
        if (y >= H) break;
        __m512 o[MT];
        Tv<MT>::at(u[i], o);
        for (int j = 0; j < MT; ++j) {
          const int64_t x = tx * MT + j;
          if (x >= W) break;
          const int64_t off = ((n * H + y) * W + x) * K + k0 + kk;
          __m512 r = _mm512_add_ps(o[j], b);
          if (res) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, res + off));
          if (relu) r = _mm512_max_ps(r, zero);
          _mm512_mask_storeu_ps(out + off, m, r);
        }
      }
    }
  }
}
#endif

// Input transform of tiles [t0, t1) into V[p][t - t0][c] (row stride C, plane stride ps floats); on AVX-512,
// transform_in16.
template <int MT>
void transform_in(const float* __restrict__ in, const Geometry& g, int64_t t0, int64_t t1, float* __restrict__ V,
                  int64_t ps) {
#ifdef HRNET_MM_AVX512
  transform_in16<MT>(in, g, t0, t1, V, ps);
#else
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
#endif
}

// Output transform of tiles [t0, t1) and output channels [k0, k0 + kc) from M[p][t - t0][k - k0] (row stride
// kc8, plane stride ldt * kc8), with bias, residual and ReLU, into the channels_last output; on AVX-512,
// transform_out16.
template <int MT>
void transform_out(const float* __restrict__ M, int64_t ldt, int64_t kc8, const Geometry& g, int64_t t0,
                   int64_t t1, int64_t k0, int64_t kc, const float* __restrict__ bias, const float* res, bool relu,
                   float* out) {
#ifdef HRNET_MM_AVX512
  transform_out16<MT>(M, ldt, kc8, g, t0, t1, k0, kc, bias, res, relu, out);
#else
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
#endif
}

// The 1-D weight transform G (A x 3) of F(tile x tile, 3x3), as in hrnet_mm/winograd.py.
inline void g_matrix(int64_t tile, double g[6][3]) {
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
}  // namespace hrnet_mm_winograd
