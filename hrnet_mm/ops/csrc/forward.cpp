// The Winograd convolution's forward pass: over blocks of tiles with a prepared weight (run, the deploy model's
// winograd_conv), or with the weight transformed a panel at a time inside the products (run_raw, a training step's
// low-resolution maps), and the checks and entry points around them.
#include "gemm.h"
#include "transforms.h"

namespace hrnet_mm_winograd {
Blocks blocks(int64_t P, const Geometry& g, int64_t rows) {
  const int64_t threads = std::max(1, at::get_num_threads());
  auto round16 = [](int64_t v) { return (v + 15) / 16 * 16; };  // slices start on a 16-column panel
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
    TB = std::max<int64_t>(rows, kBlockFloats / (P * (g.C + kstep)) / rows * rows);
    TB = std::min(TB, g.T);
  }
  kstep = std::min(kstep, g.K8);
  const int64_t nb = (g.T + TB - 1) / TB;
  int64_t nk = (g.K8 + kstep - 1) / kstep;
  if (nb == 1 && nk % threads) {
    // One block of tiles: slices of the output channels in a multiple of the threads, so that none waits for
    // another's extra slice (256 channels at 8x6 in 3 slices on 2 threads took 1.5x the time of 4 slices)
    nk = (nk + threads - 1) / threads * threads;
    kstep = std::min(g.K8, std::max<int64_t>(16, round16((g.K8 + nk - 1) / nk)));
    nk = (g.K8 + kstep - 1) / kstep;
  }
  return {TB, kstep, nb, nk};
}

template <int MT>
void run(const float* in, const float* U, const float* bias, const float* res, bool relu, float* out,
         const Geometry& g) {
  constexpr int64_t P = (MT + 2) * (MT + 2);
  const Blocks b = blocks(P, g, 6);
  const int64_t TB = b.TB, kstep = b.kstep, nb = b.nb, nk = b.nk;
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
}  // namespace hrnet_mm_winograd

using namespace hrnet_mm_winograd;

// x: (N, C, H, W) channels_last, float32 or bfloat16; U: (P, C, K8) contiguous, of x's type (bf16.cpp's layout
// for bfloat16), P = (tile + 2)^2, K8 = K rounded up to a multiple of 8; bias: (K,) float32 (or bfloat16) or None;
// residual: (N, K, H, W) channels_last of x's type, or None. With inplace, the result is written into residual.
at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& U, int64_t K, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& residual, bool relu, int64_t tile, bool inplace) {
  TORCH_CHECK(tile == 2 || tile == 4, "winograd_conv: tile must be 2 or 4, got ", tile);
  const auto dtype = x.scalar_type();
  const bool bf16 = dtype == at::kBFloat16;
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && (dtype == at::kFloat || bf16) &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_conv: x must be a float32 or bfloat16 channels_last 4-D CPU tensor");
  const int64_t P = (tile + 2) * (tile + 2), N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K8 = (K + 7) / 8 * 8;
  TORCH_CHECK(K > 0 && U.device().is_cpu() && U.scalar_type() == dtype && U.dim() == 3 && U.size(0) == P &&
                  U.size(1) == C && U.size(2) == K8 && U.is_contiguous(),
              "winograd_conv: the transformed weight must be a contiguous ", x.scalar_type(), " (", P, ", ", C, ", ",
              K8, ") tensor, got ", U.scalar_type(), " ", U.sizes());
  TORCH_CHECK(!bf16 || C % 2 == 0, "winograd_conv: bfloat16 needs an even number of input channels, got ", C);
  at::Tensor b32;  // the bias as float32 (a copy only for a bfloat16 bias)
  if (bias.has_value()) {
    TORCH_CHECK((bias->scalar_type() == at::kFloat || (bf16 && bias->scalar_type() == at::kBFloat16)) &&
                    bias->numel() == K && bias->is_contiguous(),
                "winograd_conv: bias must be a contiguous tensor of ", K, " values, float32",
                bf16 ? " or bfloat16" : "");
    b32 = bias->scalar_type() == at::kFloat ? *bias : bias->to(at::kFloat);
  }
  const float* b = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (residual.has_value()) {
    const auto& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef({N, K, H, W}) && r.scalar_type() == dtype &&
                    r.is_contiguous(at::MemoryFormat::ChannelsLast),
                "winograd_conv: residual must be a channels_last tensor of the output's shape and x's type");
  }
  TORCH_CHECK(!inplace || residual.has_value(), "winograd_conv: inplace needs a residual");
  at::Tensor out = inplace ? *residual
                           : at::empty({N, K, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (bf16) {
    winograd_conv_bf16(x, U, b, residual.has_value() ? &*residual : nullptr, relu, tile, out);
    return out;
  }
  const float* res = residual.has_value() ? residual->data_ptr<float>() : nullptr;
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

// The deploy model's convolution as operators: hrnet_mm::winograd_conv3x3 returns a new tensor;
// hrnet_mm::winograd_conv3x3_add_ writes relu?(conv3x3(x) + bias + residual) into residual (declared mutated).
namespace {
at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& U, int64_t K,
                                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                bool relu, int64_t tile) {
  return winograd_conv(x, U, K, bias, residual, relu, tile, false);
}

void winograd_conv3x3_add_cpu(const at::Tensor& x, const at::Tensor& U, int64_t K,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& residual, bool relu,
                              int64_t tile) {
  winograd_conv(x, U, K, bias, residual, relu, tile, true);
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(hrnet_mm, m) {
  m.def("winograd_conv3x3(Tensor x, Tensor u, int out_channels, Tensor? bias, Tensor? residual, bool relu, "
        "int tile) -> Tensor");
  m.def("winograd_conv3x3_add_(Tensor x, Tensor u, int out_channels, Tensor? bias, Tensor(a!) residual, "
        "bool relu, int tile) -> ()");
}

TORCH_LIBRARY_IMPL(hrnet_mm, CPU, m) {
  m.impl("winograd_conv3x3", &winograd_conv3x3_cpu);
  m.impl("winograd_conv3x3_add_", &winograd_conv3x3_add_cpu);
}
