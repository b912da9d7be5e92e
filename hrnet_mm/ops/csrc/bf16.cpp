// The Winograd convolution of the bfloat16 deploy model (precision='bf16'): the algorithm of forward.cpp with
// bfloat16 in memory and the products on AVX512_BF16's dot product (vdpbf16ps: two bfloat16 products per float32
// lane and instruction, twice the float32 FMA's rate).
//
//   1. input transform: bfloat16 input, B^T d B in float32, V rounded to bfloat16 (round to nearest even);
//   2. M[p] = V[p] @ U[p] in float32 accumulators, U[p] the transformed weight in bfloat16 (hrnet_mm/ops/winograd.py,
//      pack_weight with dtype=torch.bfloat16: the 16-column panels of the float32 layout, each stored as pairs of
//      rows, [C/2][16][2], so that one 512-bit load gives the dot product its 16 columns of two channels);
//   3. output transform in float32, plus the float32 bias, the bfloat16 residual and the ReLU, rounded to bfloat16.
//
// Accuracy: rounding V and U to bfloat16 adds errors that the output transform A^T . A multiplies; for F(2x2, 3x3)
// (coefficients 0 and +-1) a layer's rms error is about 1.3x a direct bfloat16 convolution's (output rounding
// included), for F(4x4, 3x3) (coefficients up to 8) about 5x (hrnet_mm/ops/winograd.py, BF16_TILES).
//
// Compiled for AVX-512 builds only, with these functions targeting AVX512_BF16; bf16_supported() tells whether the
// processor runs them.
#include "winograd.h"
#include "transforms.h"

#ifdef HRNET_MM_AVX512
#define HRNET_MM_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace hrnet_mm_winograd {
namespace {
HRNET_MM_BF16 inline __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

HRNET_MM_BF16 inline void store16(uint16_t* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}

// Input transform of tiles [t0, t1) into V[p][t - t0][c] (bfloat16, row stride C, plane stride ps).
template <int MT>
HRNET_MM_BF16 void transform_in(const uint16_t* __restrict__ in, const Geometry& g, int64_t t0, int64_t t1,
                                uint16_t* __restrict__ V, int64_t ps) {
  constexpr int A = MT + 2;
  const int64_t H = g.H, W = g.W, C = g.C;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const int64_t y0 = ty * MT - 1, x0 = tx * MT - 1;
    uint16_t* dst_t = V + (t - t0) * C;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 m = lanes(C - c0);
      __m512 r[A][A];
      for (int i = 0; i < A; ++i) {
        __m512 d[A];
        const int64_t y = y0 + i;
        const uint16_t* src = in + ((n * H + y) * W + x0) * C + c0;
        for (int j = 0; j < A; ++j) {
          const int64_t x = x0 + j;
          d[j] = (y >= 0 && y < H && x >= 0 && x < W) ? load16(src + j * C, m) : _mm512_setzero_ps();
        }
        Tv<MT>::bt(d, r[i]);
      }
      for (int q = 0; q < A; ++q) {
        __m512 col[A], v[A];
        for (int i = 0; i < A; ++i) col[i] = r[i][q];
        Tv<MT>::bt(col, v);
        for (int p = 0; p < A; ++p) store16(dst_t + (p * A + q) * ps + c0, m, v[p]);
      }
    }
  }
}

inline int32_t pair(const uint16_t* p) {  // two bfloat16 values as one 32-bit lane
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The products' registers: 16 columns of float32 accumulators in a 512-bit register (a 16-column panel), or 8 in
// a 256-bit one (the last panel when K8 % 16 == 8); a panel row holds two bfloat16 values per column.
struct Zmm {
  using Acc = __m512;
  using Pair = __m512bh;
  static constexpr int kWidth = 16;
  HRNET_MM_BF16 static Acc zero() { return _mm512_setzero_ps(); }
  HRNET_MM_BF16 static Pair load(const uint16_t* u) { return (__m512bh)_mm512_loadu_si512(u); }
  HRNET_MM_BF16 static Acc dot(Acc acc, int32_t a, Pair b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(a), b);
  }
  HRNET_MM_BF16 static void store(float* m, Acc acc) { _mm512_storeu_ps(m, acc); }
};
struct Ymm {
  using Acc = __m256;
  using Pair = __m256bh;
  static constexpr int kWidth = 8;
  HRNET_MM_BF16 static Acc zero() { return _mm256_setzero_ps(); }
  HRNET_MM_BF16 static Pair load(const uint16_t* u) {
    return (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u));
  }
  HRNET_MM_BF16 static Acc dot(Acc acc, int32_t a, Pair b) {
    return _mm256_dpbf16_ps(acc, (__m256bh)_mm256_set1_epi32(a), b);
  }
  HRNET_MM_BF16 static void store(float* m, Acc acc) { _mm256_storeu_ps(m, acc); }
};

// m[i][0 .. width) = sum_c v[i][c] * u[c][0 .. width) for i < R, over C2 pairs of channels: v rows ldv bfloat16
// apart, u a panel of the register's width in pairs of rows ([C2][width][2]). Twelve named accumulators, as in
// gemm.h. Each step also prefetches one 64-byte line of pf, the next panel (C2 lines), into L2.
template <int R, class Reg>
HRNET_MM_BF16 inline void micro(const uint16_t* __restrict__ v, int64_t ldv, const uint16_t* __restrict__ u,
                                float* __restrict__ m, int64_t ldm, int64_t C2, const char* pf) {
  typename Reg::Acc c0 = Reg::zero(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
                    c9 = c0, c10 = c0, c11 = c0;
#define HRNET_MM_ROW(i, a) \
  if (R > i) a = Reg::dot(a, pair(v + i * ldv + 2 * c), b);
  for (int64_t c = 0; c < C2; ++c) {
    const typename Reg::Pair b = Reg::load(u + c * 2 * Reg::kWidth);
    _mm_prefetch(pf + c * 64, _MM_HINT_T1);
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
#define HRNET_MM_STORE(i, a) \
  if (R > i) Reg::store(m + i * ldm, a);
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

// out[i][0 .. width) = sum_c v[i][c] * panel[c][0 .. width) for i < rows, twelve rows per micro kernel call.
template <class Reg>
HRNET_MM_BF16 void row_blocks(const uint16_t* v, int64_t ldv, const uint16_t* panel, float* out, int64_t ldo,
                              int64_t C2, int64_t rows, const char* pf) {
  int64_t r = 0;
#define HRNET_MM_CALL(R) micro<R, Reg>(v + r * ldv, ldv, panel, out + r * ldo, ldo, C2, pf);
  for (; r + 12 <= rows; r += 12) {
    HRNET_MM_CALL(12)
  }
#define HRNET_MM_TAIL(R) \
  case R:                \
    HRNET_MM_CALL(R)     \
    break;
  switch (rows - r) {
    HRNET_MM_TAIL(11)
    HRNET_MM_TAIL(10)
    HRNET_MM_TAIL(9)
    HRNET_MM_TAIL(8)
    HRNET_MM_TAIL(7)
    HRNET_MM_TAIL(6)
    HRNET_MM_TAIL(5)
    HRNET_MM_TAIL(4)
    HRNET_MM_TAIL(3)
    HRNET_MM_TAIL(2)
    HRNET_MM_TAIL(1)
    default: break;
  }
#undef HRNET_MM_TAIL
#undef HRNET_MM_CALL
}

// M (tn x kc8, float32) = V (tn x C, bfloat16) @ U[:, k0 : k0 + kc8], panel by panel (the panel of columns k..
// starts at U + C * k, as in the float32 layout), each prefetching the one after it; next is the first panel after
// the last one (the next plane's). In a model every layer's U comes from memory (the transformed weights outgrow
// L3), and a panel (4 KB at 128 channels) is one page, which the hardware prefetchers do not cross.
HRNET_MM_BF16 void gemm(const uint16_t* V, int64_t tn, int64_t C, const uint16_t* U, int64_t K8, int64_t k0,
                        int64_t kc8, float* M, const uint16_t* next) {
  for (int64_t k = k0; k < k0 + kc8; k += 16) {
    const char* pf = reinterpret_cast<const char*>(k + 16 < k0 + kc8 ? U + C * (k + 16) : next);
    if (k + 16 <= K8) row_blocks<Zmm>(V, C, U + C * k, M + (k - k0), kc8, C / 2, tn, pf);
    else row_blocks<Ymm>(V, C, U + C * k, M + (k - k0), kc8, C / 2, tn, pf);
  }
}

// Output transform of tiles [t0, t1) and output channels [k0, k0 + kc) from M[p][t - t0][k - k0] (float32, row
// stride kc8, plane stride ps), with the float32 bias, the bfloat16 residual and the ReLU, into the bfloat16 output.
template <int MT>
HRNET_MM_BF16 void transform_out(const float* __restrict__ M, int64_t ps, int64_t kc8, const Geometry& g,
                                 int64_t t0, int64_t t1, int64_t k0, int64_t kc, const float* __restrict__ bias,
                                 const uint16_t* res, bool relu, uint16_t* out) {
  constexpr int A = MT + 2;
  const int64_t H = g.H, W = g.W, K = g.K;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (g.th * g.tw), ty = (t / g.tw) % g.th, tx = t % g.tw;
    const float* src_t = M + (t - t0) * kc8;
    for (int64_t kk = 0; kk < kc; kk += 16) {
      const __mmask16 m = lanes(kc - kk);
      __m512 u[MT][A];
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
          if (res) r = _mm512_add_ps(r, load16(res + off, m));
          if (relu) r = _mm512_max_ps(r, zero);
          store16(out + off, m, r);
        }
      }
    }
  }
}

// forward.cpp's run with bfloat16 data: the same jobs (blocks), tiles in multiples of the products' 12 rows.
template <int MT>
HRNET_MM_BF16 void run(const uint16_t* in, const uint16_t* U, const float* bias, const uint16_t* res, bool relu,
                       uint16_t* out, const Geometry& g) {
  constexpr int64_t P = (MT + 2) * (MT + 2);
  const Blocks b = blocks(P, g, 12);
  const int64_t TB = b.TB, kstep = b.kstep, nb = b.nb, nk = b.nk;
  // Plane strides of V and M 64 bytes past their TB rows: at a power of two (64 tiles of 32 channels: 4 KB) the
  // planes' rows fall in the same cache sets, and the products of that shape ran at 0.37x the speed of others.
  const int64_t vps = TB * g.C + 32, mps = TB * kstep + 16;
  at::parallel_for(0, nb * nk, 1, [&](int64_t j0, int64_t j1) {
    std::unique_ptr<uint16_t[]> Vb(new uint16_t[P * vps]);
    std::unique_ptr<float[]> Mb(new float[P * mps]);
    int64_t done = -1;
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t tb = job / nk, kj = job % nk;
      const int64_t t0 = tb * TB, t1 = std::min(g.T, t0 + TB), tn = t1 - t0;
      if (tb != done) {
        transform_in<MT>(in, g, t0, t1, Vb.get(), vps);
        done = tb;
      }
      const int64_t k0 = kj * kstep, kc8 = std::min(g.K8, k0 + kstep) - k0, kc = std::min(g.K, k0 + kc8) - k0;
      for (int64_t p = 0; p < P; ++p)
        gemm(Vb.get() + p * vps, tn, g.C, U + p * g.C * g.K8, g.K8, k0, kc8, Mb.get() + p * mps,
             U + std::min(p + 1, P - 1) * g.C * g.K8 + g.C * k0);
      transform_out<MT>(Mb.get(), mps, kc8, g, t0, t1, k0, kc, bias, res, relu, out);
    }
  });
}
}  // namespace

bool bf16_supported() { return __builtin_cpu_supports("avx512bf16"); }

void winograd_conv_bf16(const at::Tensor& x, const at::Tensor& U, const float* bias, const at::Tensor* residual,
                        bool relu, int64_t tile, at::Tensor& out) {
  TORCH_CHECK(bf16_supported(), "winograd_conv: bfloat16 needs a processor with AVX512_BF16");
  const Geometry g = geometry(x, out.size(1), tile);
  const auto* in = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* u = reinterpret_cast<const uint16_t*>(U.data_ptr<at::BFloat16>());
  const auto* res = residual ? reinterpret_cast<const uint16_t*>(residual->data_ptr<at::BFloat16>()) : nullptr;
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  if (tile == 4) run<4>(in, u, bias, res, relu, o, g);
  else run<2>(in, u, bias, res, relu, o, g);
}
}  // namespace hrnet_mm_winograd

#else
namespace hrnet_mm_winograd {
bool bf16_supported() { return false; }

void winograd_conv_bf16(const at::Tensor&, const at::Tensor&, const float*, const at::Tensor*, bool, int64_t,
                        at::Tensor&) {
  TORCH_CHECK(false, "winograd_conv: bfloat16 needs a build for AVX-512 (this one is not)");
}
}  // namespace hrnet_mm_winograd
#endif
