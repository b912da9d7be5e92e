// hrnet_mm::quantize_u8: the activations of the int8 deploy model (hrnet_mm/deploy/precision.py) as oneDNN's int8
// convolutions read them, q = clamp(round_half_even(x / scale) + zero_point, 0, 255), in one pass that keeps the
// input's memory format (torch's own per-tensor quantization makes a quantized tensor and then a copy of its
// integers).
#include <cmath>

#include "winograd.h"

namespace {
at::Tensor quantize_u8_cpu(const at::Tensor& x, double scale, int64_t zero_point) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "hrnet_mm::quantize_u8: x must be a float32 CPU tensor, got ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(scale > 0 && zero_point >= 0 && zero_point <= 255,
              "hrnet_mm::quantize_u8: need scale > 0 and 0 <= zero_point <= 255, got ", scale, " and ", zero_point);
  const auto format = x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous()
                          ? at::MemoryFormat::ChannelsLast
                          : at::MemoryFormat::Contiguous;
  const at::Tensor src = x.contiguous(format);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte).memory_format(format));
  const float inv = static_cast<float>(1.0 / scale), zp = static_cast<float>(zero_point);
  const float* s = src.data_ptr<float>();
  uint8_t* d = out.data_ptr<uint8_t>();
  at::parallel_for(0, src.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
#ifdef HRNET_MM_AVX2
    const __m256 vinv = _mm256_set1_ps(inv), vzp = _mm256_set1_ps(zp), lo = _mm256_setzero_ps(),
                 hi = _mm256_set1_ps(255.0f);
    for (; i + 32 <= end; i += 32) {  // clamped first (packus_epi16 reads signed words); cvtps rounds half to even
      __m256i q[4];
      for (int j = 0; j < 4; ++j) {
        const __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(s + i + 8 * j), vinv), vzp);
        q[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      }
      const __m256i w01 = _mm256_packus_epi32(q[0], q[1]), w23 = _mm256_packus_epi32(q[2], q[3]);
      const __m256i b = _mm256_packus_epi16(w01, w23);  // lanes interleaved by 128-bit halves: put them in order
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i),
                          _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
#endif
    for (; i < end; ++i) {
      const float v = std::nearbyint(s[i] * inv) + zp;
      d[i] = static_cast<uint8_t>(std::min(std::max(v, 0.0f), 255.0f));
    }
  });
  return out;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(hrnet_mm, m) { m.def("quantize_u8(Tensor x, float scale, int zero_point) -> Tensor"); }

TORCH_LIBRARY_IMPL(hrnet_mm, CPU, m) { m.impl("quantize_u8", &quantize_u8_cpu); }
