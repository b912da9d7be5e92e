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
// to share out, slices of the output channels) are spread over torch's intra-op threads. The input and output
// transforms work on 16 channels at a time on AVX-512 (one register, lane masks at the edges), 8 otherwise; the
// weight transforms on 8 (one AVX2 register); the products use a 6x16 register-blocked FMA kernel on AVX2, 12x16
// on AVX-512 (one 512-bit register per row of a 16-column panel).
//
// This header holds what the files of the kernel share: the lanes, the geometry of a convolution, a raw weight, and
// the entry points of forward.cpp, weight_grad.cpp and train.cpp. transforms.h and gemm.h hold the building blocks.
#pragma once
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
#if defined(__AVX512F__)
#define HRNET_MM_AVX512 1  // the 16-column products on one 512-bit register per row (gemm.h)
#endif
#endif

namespace hrnet_mm_winograd {
constexpr int L = 8;  // channel lanes per step (one AVX2 register)

// In-register 1-D transforms on L lanes: x[i*xs] -> y[p*ys] (strides in units of L floats).
#define LOOP for (int c = 0; c < L; ++c)

struct Geometry {
  int64_t N, H, W, C, K, K8, th, tw, T;
};

// A 3x3 weight to be transformed: w (K0, C0, 3, 3, element strides st), for the convolution with w' = w, or with
// flip, w transposed to (C0, K0) and turned by 180 degrees (the input gradient's): rows input channels of w',
// cols its output channels, cols8 rounded up to a multiple of 8.
struct RawWeight {
  const float* w;
  int64_t st[4];
  bool flip;
  int64_t rows, cols, cols8;
};

constexpr int64_t kBlockFloats = 64 * 1024;  // V and M of one block: 256 KB, half of a Zen 3 core's L2

// The jobs of a forward pass: blocks of TB tiles (a multiple of rows, the product kernel's row block, unless one
// block holds all T tiles) times slices of kstep output channels, nb x nk of them, sized so that a block's V and M
// stay in L2.
struct Blocks {
  int64_t TB, kstep, nb, nk;
};

// forward.cpp
Blocks blocks(int64_t P, const Geometry& g, int64_t rows);
Geometry geometry(const at::Tensor& x, int64_t K, int64_t tile);
RawWeight raw_weight(const at::Tensor& weight, int64_t tile, bool flip);
bool raw_fits(int64_t P, const Geometry& g);
at::Tensor winograd_conv3x3(const at::Tensor& x, const at::Tensor& weight, int64_t tile, bool flip);
// bf16.cpp: the bfloat16 forward (x, U, residual and out bfloat16; out (N, K, H, W) channels_last, preallocated;
// the caller checks the shapes), and whether this processor runs it
bool bf16_supported();
void winograd_conv_bf16(const at::Tensor& x, const at::Tensor& U, const float* bias, const at::Tensor* residual,
                        bool relu, int64_t tile, at::Tensor& out);
// train.cpp (exported for hrnet_mm.ops.winograd.choose_training_algorithm to time)
at::Tensor train_forward(const at::Tensor& x, const at::Tensor& weight, int64_t tile);
at::Tensor train_input_grad(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, int64_t tile);
at::Tensor train_weight_grad(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& weight, int64_t tile);
std::tuple<at::Tensor, at::Tensor> train_gradients(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                                   int64_t tile, int64_t weight_tile, bool together);
}  // namespace hrnet_mm_winograd

// forward.cpp
at::Tensor winograd_conv(const at::Tensor& x, const at::Tensor& U, int64_t K, const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& residual, bool relu, int64_t tile, bool inplace);
at::Tensor winograd_weight(const at::Tensor& weight, int64_t tile, bool flip);
void check_map(const at::Tensor& x, const char* name);
// weight_grad.cpp
at::Tensor winograd_conv_weight_grad(const at::Tensor& x, const at::Tensor& dy, int64_t tile,
                                     const at::Tensor& weight);
