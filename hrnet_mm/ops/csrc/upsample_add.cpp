// hrnet_mm::upsample_add: one step of HRNet's fuse layers in the deploy model, out = x + nearest(low) with an
// optional ReLU, where nearest(low) is F.interpolate(low, size=x.shape[-2:], mode='nearest'), in one pass over x
// instead of torch's three (upsample, add, ReLU) and without the upsampled copy. Bit for bit torch's result: the
// source rows and columns are torch's (at::native::nearest_idx), and a bfloat16 sum is the float32 sum rounded to
// nearest even, as torch's add rounds it.
//
// x and low: (N, C, H, W) and (N, C, h, w), both channels_last, both float32 or both bfloat16 (other inputs take
// torch's operators). upsample_add_ writes into x and returns nothing.
#include <ATen/native/UpSample.h>

#include <type_traits>

#include "winograd.h"

namespace {
// out[c] = relu?(x[c] + low[c]) over one pixel's C channels (float32: a plain loop that the compiler vectorizes).
template <typename T, bool Relu>
inline void pixel(const T* __restrict__ x, const T* __restrict__ low, T* out, int64_t C) {
  int64_t c = 0;
#ifdef HRNET_MM_AVX512
  if constexpr (std::is_same_v<T, at::BFloat16>) {  // 16 channels at a time, in 32-bit lanes (AVX512F only)
    const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), qnan = _mm512_set1_epi32(0x7FC0);
    const __m512 zero = _mm512_setzero_ps();
    auto load = [](const T* p) {
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    };
    auto sum = [&](const T* a, const T* b) {  // the 16 sums as bfloat16 bits in 32-bit lanes
      __m512 v = _mm512_add_ps(load(a), load(b));
      if (Relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, zero);
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i r =
          _mm512_add_epi32(bits, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(bits, 16), one)));
      return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_srli_epi32(r, 16), qnan);
    };
    if (C >= 16) {
      // the last 16 channels, computed before any store (out may be x) and stored last, over the tail
      const __m512i last = sum(x + C - 16, low + C - 16);
      for (; c + 16 <= C; c += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), _mm512_cvtepi32_epi16(sum(x + c, low + c)));
      if (c < C) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + C - 16), _mm512_cvtepi32_epi16(last));
      c = C;
    }
  }
#endif
  for (; c < C; ++c) {  // c10's conversions: bfloat16 rounded to nearest even, as torch's add rounds it
    float v = static_cast<float>(x[c]) + static_cast<float>(low[c]);
    if (Relu) v = v < 0.f ? 0.f : v;  // NaN stays NaN, as in torch's ReLU
    out[c] = static_cast<T>(v);
  }
}

template <typename T, bool Relu>
void run(const at::Tensor& x, const at::Tensor& low, at::Tensor& out) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), h = low.size(2), w = low.size(3);
  std::vector<int64_t> sx(W);
  for (int64_t j = 0; j < W; ++j) sx[j] = at::native::nearest_idx(j, w, W, std::nullopt);
  const T* xs = x.data_ptr<T>();
  const T* ls = low.data_ptr<T>();
  T* os = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * C));  // rows of about 32k values
  at::parallel_for(0, N * H, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / H, y = r % H, sy = at::native::nearest_idx(y, h, H, std::nullopt);
      const T* low_row = ls + (n * h + sy) * w * C;
      for (int64_t j = 0; j < W; ++j)
        pixel<T, Relu>(xs + (r * W + j) * C, low_row + sx[j] * C, os + (r * W + j) * C, C);
    }
  });
}

bool fast(const at::Tensor& x, const at::Tensor& low) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  return x.device().is_cpu() && low.device().is_cpu() && x.dim() == 4 && low.dim() == 4 &&
         x.scalar_type() == low.scalar_type() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.size(0) == low.size(0) &&
         x.size(1) == low.size(1) && low.size(2) > 0 && low.size(3) > 0 && x.is_contiguous(cl) &&
         low.is_contiguous(cl);
}

void compute(const at::Tensor& x, const at::Tensor& low, bool relu, at::Tensor& out) {
  if (x.scalar_type() == at::kFloat) relu ? run<float, true>(x, low, out) : run<float, false>(x, low, out);
  else relu ? run<at::BFloat16, true>(x, low, out) : run<at::BFloat16, false>(x, low, out);
}

at::Tensor upsample_add_cpu(const at::Tensor& x, const at::Tensor& low, bool relu) {
  if (!fast(x, low)) {
    at::Tensor out = at::add(x, at::upsample_nearest2d(low, {x.size(2), x.size(3)}));
    return relu ? out.relu_() : out;
  }
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  compute(x, low, relu, out);
  return out;
}

void upsample_add__cpu(at::Tensor& x, const at::Tensor& low, bool relu) {
  if (!fast(x, low)) {
    x.add_(at::upsample_nearest2d(low, {x.size(2), x.size(3)}));
    if (relu) x.relu_();
    return;
  }
  compute(x, low, relu, x);
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(hrnet_mm, m) {
  m.def("upsample_add(Tensor x, Tensor low, bool relu) -> Tensor");
  m.def("upsample_add_(Tensor(a!) x, Tensor low, bool relu) -> ()");
}

TORCH_LIBRARY_IMPL(hrnet_mm, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("upsample_add_", &upsample_add__cpu);
}
