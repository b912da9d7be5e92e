// The weight gradient of the Winograd convolution: dU[p] = V[p]^T dM[p], mapped back through the weight
// transform block by block in the cache, for large maps in chunks of tiles.
#include "gemm.h"
#include "transforms.h"

using namespace hrnet_mm_winograd;

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
