// Batch norm, with the residual sum and ReLU that follow it, for channels_last float32 CPU tensors
// (hrnet_mm/fused_norm.py; built into the same extension as winograd.cpp).
//
//   y = relu?(x * scale + shift [+ residual]),  scale = weight / sqrt(var + eps),  shift = bias - mean * scale
//
// with the batch's statistics (training; the running statistics are updated as torch.nn.BatchNorm2d does) or the
// running ones (a BN layer kept in eval mode while the rest trains), and the backward pass of all of it.
//
// A channels_last tensor is an (M, C) row-major matrix, M = N * H * W. torch's own kernels walk it 8 channels at
// a time, which leaves lanes idle and runs scalar tails when C is not a multiple of 8 (HRNet-W18's 18, 36 and 72
// channels). Here the matrix is read as a flat array in periods of lcm(8, C) floats: element j of every period
// belongs to channel j % C, so each pass is a flat loop over full vectors against per-period patterns of the
// per-channel constants. Reductions add a few periods at a time in float, then into double accumulators; the mean
// and the centred sum of squares are two separate passes, so the variance does not cancel.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

void check_map(const at::Tensor& x, const char* name);  // forward.cpp: a float32 channels_last 4-D CPU map

namespace hrnet_mm_norm {
namespace {

struct Layout {
  int64_t M;     // rows (N * H * W)
  int64_t C;     // channels
  int64_t P;     // floats per period: lcm(8, C)
  int64_t nper;  // full periods
  int64_t tail;  // floats after the last full period (whole rows, fewer than a period)
};

Layout layout(int64_t numel, int64_t C) {
  Layout l;
  l.C = C;
  l.M = numel / C;
  l.P = C / std::gcd(C, int64_t(8)) * 8;
  l.nper = numel / l.P;
  l.tail = numel - l.nper * l.P;
  return l;
}

// p[j] = v[j % C] for the P floats of a period
std::vector<float> pattern(const Layout& l, const std::vector<double>& v) {
  std::vector<float> p(l.P);
  for (int64_t j = 0; j < l.P; ++j) p[j] = static_cast<float>(v[j % l.C]);
  return p;
}

// Eight floats, one AVX2 register where the build has AVX2 (GCC / Clang vector extension: portable otherwise).
typedef float v8 __attribute__((vector_size(32)));
typedef int i8 __attribute__((vector_size(32)));

// Loads and stores of 8 floats (Full: the hot paths, one instruction each) or of the first n < 8 of them (the
// partial last vector of a tensor; the other lanes load as zero).
using Full = std::integral_constant<int64_t, 8>;
inline v8 load(const float* p, Full = Full()) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline v8 load(const float* p, int64_t n) {
  v8 v = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(&v, p, sizeof(float) * n);
  return v;
}
inline void store(float* p, v8 v, Full) { std::memcpy(p, &v, sizeof(v)); }
inline void store(float* p, v8 v, int64_t n) { std::memcpy(p, &v, sizeof(float) * n); }
inline v8 positive(v8 test, v8 v) {  // v where test > 0, else 0: no branch
  const i8 m = test > 0;
  return reinterpret_cast<v8>(m & reinterpret_cast<i8>(v));
}
inline v8 max0(v8 v) { return positive(v, v); }
inline v8 lanes(int64_t n) {  // 1 in the first n lanes, 0 after
  v8 v;
  for (int k = 0; k < 8; ++k) v[k] = k < n ? 1.f : 0.f;
  return v;
}

constexpr int64_t kSerial = 32768;

// Per-channel sums of Q quantities over every element: fn(j, col, n, t) sets t[0 .. Q-1] to the terms of the 8
// elements from flat index j (column col = j % P), of which the first n exist. Returns the Q * C sums, quantity-major.
// Each column of 8 floats is summed down a block of periods in float, 4 periods at a time (independent additions),
// then into per-thread double accumulators.
template <int Q, class Fn>
std::vector<double> reduce(const Layout& l, const Fn& fn) {
  const int64_t P = l.P;
  const int64_t block = std::max<int64_t>(16, 4096 / P);  // periods per float partial sum
  // one thread per kSerial floats at most: below that, waking the thread pool costs more than the pass
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), l.nper * P / kSerial));
  std::vector<double> part(chunks * Q * P, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t p0 = l.nper * ch / chunks, p1 = l.nper * (ch + 1) / chunks;
      double* d = part.data() + ch * Q * P;
      for (int64_t b = p0; b < p1; b += block) {
        const int64_t e = std::min(p1, b + block);
        for (int64_t col = 0; col < P; col += 8) {
          v8 a[4][Q] = {};
          v8 t[4][Q];
          int64_t p = b;
          for (; p + 4 <= e; p += 4) {
            for (int u = 0; u < 4; ++u) fn((p + u) * P + col, col, Full(), t[u]);
            for (int u = 0; u < 4; ++u)
              for (int q = 0; q < Q; ++q) a[u][q] += t[u][q];
          }
          for (; p < e; ++p) {
            fn(p * P + col, col, Full(), t[0]);
            for (int q = 0; q < Q; ++q) a[0][q] += t[0][q];
          }
          for (int q = 0; q < Q; ++q) {
            const v8 sum = (a[0][q] + a[1][q]) + (a[2][q] + a[3][q]);
            for (int k = 0; k < 8; ++k) d[q * P + col + k] += sum[k];
          }
        }
      }
    }
  });
  std::vector<double> out(Q * l.C, 0.0);
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int q = 0; q < Q; ++q)
      for (int64_t j = 0; j < P; ++j) out[q * l.C + j % l.C] += part[(ch * Q + q) * P + j];
  for (int64_t col = 0; col < l.tail; col += 8) {  // the last rows, fewer than a period
    const int64_t n = std::min<int64_t>(8, l.tail - col);
    v8 t[Q];
    fn(l.nper * P + col, col, n, t);
    const v8 mask = lanes(n);
    for (int q = 0; q < Q; ++q)
      for (int64_t k = 0; k < n; ++k) out[q * l.C + (col + k) % l.C] += (t[q] * mask)[k];
  }
  return out;
}

// fn(j, col, n) for the 8 elements from flat index j (column col = j % P), of which the first n exist, over every element
template <class Fn>
void elementwise(const Layout& l, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, kSerial / l.P);
  at::parallel_for(0, l.nper, grain, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t col = 0; col < l.P; col += 8) fn(p * l.P + col, col, Full());
  });
  for (int64_t col = 0; col < l.tail; col += 8) fn(l.nper * l.P + col, col, std::min<int64_t>(8, l.tail - col));
}

std::vector<double> channel_vector(const c10::optional<at::Tensor>& t, int64_t C, double fill, const char* name) {
  std::vector<double> v(C, fill);
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->numel() == C, name, " must have ", C, " elements, got ", t->numel());
    const at::Tensor f = t->to(at::kFloat).contiguous();
    const float* p = f.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) v[c] = p[c];
  }
  return v;
}

at::Tensor float_vector(const std::vector<double>& v) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kFloat);
  float* p = t.data_ptr<float>();
  for (size_t c = 0; c < v.size(); ++c) p[c] = static_cast<float>(v[c]);
  return t;
}

}  // namespace

// Returns (y, mean, invstd): the statistics used (the batch's, or the running ones when batch_stats is false).
std::vector<at::Tensor> batch_norm_act_forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                               const c10::optional<at::Tensor>& bias,
                                               const c10::optional<at::Tensor>& running_mean,
                                               const c10::optional<at::Tensor>& running_var, bool batch_stats,
                                               double momentum, double eps,
                                               const c10::optional<at::Tensor>& residual, bool relu) {
  check_map(x, "x");
  const int64_t C = x.size(1);
  const Layout l = layout(x.numel(), C);
  const bool has_running = running_mean.has_value() && running_mean->defined() && running_var.has_value() &&
                           running_var->defined();
  TORCH_CHECK(batch_stats || has_running, "batch_norm_act_forward: no running statistics to normalise with");
  TORCH_CHECK(!batch_stats || l.M > 1, "batch norm needs more than 1 value per channel when training, got ", l.M);
  const float* xp = x.data_ptr<float>();
  std::vector<double> mean(C), invstd(C);
  if (batch_stats) {
    mean = reduce<1>(l, [&](int64_t j, int64_t, auto n, v8* t) { t[0] = load(xp + j, n); });
    for (auto& m : mean) m /= static_cast<double>(l.M);
    const std::vector<float> mp = pattern(l, mean);
    std::vector<double> var = reduce<2>(l, [&](int64_t j, int64_t col, auto n, v8* t) {
      const v8 d = load(xp + j, n) - load(mp.data() + col);
      t[0] = d;
      t[1] = d * d;
    });
    for (int64_t c = 0; c < C; ++c) {
      // corrected two-pass variance: the first sum takes out the rounding of the float mean
      const double d = var[c] / static_cast<double>(l.M);
      mean[c] = static_cast<double>(mp[c]) + d;
      var[c] = std::max(0.0, var[C + c] / static_cast<double>(l.M) - d * d);
      invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    }
    var.resize(C);
    if (has_running) {
      TORCH_CHECK(running_mean->numel() == C && running_var->numel() == C &&
                      running_mean->scalar_type() == at::kFloat && running_var->scalar_type() == at::kFloat &&
                      running_mean->is_contiguous() && running_var->is_contiguous(),
                  "running statistics must be contiguous float32 vectors of ", C, " elements");
      float* rm = running_mean->data_ptr<float>();
      float* rv = running_var->data_ptr<float>();
      const double unbias = static_cast<double>(l.M) / static_cast<double>(l.M - 1);
      for (int64_t c = 0; c < C; ++c) {
        rm[c] = static_cast<float>((1.0 - momentum) * rm[c] + momentum * mean[c]);
        rv[c] = static_cast<float>((1.0 - momentum) * rv[c] + momentum * var[c] * unbias);
      }
    }
  } else {
    mean = channel_vector(running_mean, C, 0.0, "running_mean");
    const std::vector<double> var = channel_vector(running_var, C, 1.0, "running_var");
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
  }
  const std::vector<double> w = channel_vector(weight, C, 1.0, "weight"), b = channel_vector(bias, C, 0.0, "bias");
  std::vector<double> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - mean[c] * scale[c];
  }
  const std::vector<float> sp = pattern(l, scale), hp = pattern(l, shift);
  at::Tensor y = at::empty_like(x);
  float* yp = y.data_ptr<float>();
  const float* rp = nullptr;
  if (residual.has_value() && residual->defined()) {
    check_map(*residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), "residual must have the shape of x, ", x.sizes(), ", got ",
                residual->sizes());
    rp = residual->data_ptr<float>();
  }
  elementwise(l, [&](int64_t j, int64_t col, auto n) {
    v8 v = load(xp + j, n) * load(sp.data() + col) + load(hp.data() + col);
    if (rp) v += load(rp + j, n);
    store(yp + j, relu ? max0(v) : v, n);
  });
  return {y, float_vector(mean), float_vector(invstd)};
}

// Gradients of batch_norm_act_forward: (dx, dweight, dbias, dz) for the output gradient dy, where dz is the
// gradient of the pre-ReLU sum, i.e. the residual's gradient (returned only when relu is true: otherwise it is dy).
// y (the forward's output) gives the ReLU's mask; mean and invstd are the statistics the forward used.
std::vector<at::Tensor> batch_norm_act_backward(const at::Tensor& dy, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& y,
                                                const c10::optional<at::Tensor>& weight, const at::Tensor& mean,
                                                const at::Tensor& invstd, bool batch_stats, bool relu, bool need_dx,
                                                bool need_dweight, bool need_dz) {
  check_map(x, "x");
  check_map(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy must have the shape of x");
  const int64_t C = x.size(1);
  const Layout l = layout(x.numel(), C);
  const float* xp = x.data_ptr<float>();
  const float* gp = dy.data_ptr<float>();
  const float* yp = nullptr;
  if (relu) {
    TORCH_CHECK(y.has_value() && y->defined(), "batch_norm_act_backward: the ReLU needs the forward's output");
    check_map(*y, "y");
    yp = y->data_ptr<float>();
  }
  const std::vector<double> m = channel_vector(mean, C, 0.0, "mean"), is = channel_vector(invstd, C, 1.0, "invstd");
  const std::vector<double> w = channel_vector(weight, C, 1.0, "weight");
  const std::vector<float> mp = pattern(l, m);
  std::vector<double> sums(2 * C, 0.0);  // sum dz, sum dz * (x - mean)
  if (need_dweight || (need_dx && batch_stats)) {
    sums = reduce<2>(l, [&](int64_t j, int64_t col, auto n, v8* t) {
      v8 g = load(gp + j, n);
      if (yp) g = positive(load(yp + j, n), g);
      t[0] = g;
      t[1] = g * (load(xp + j, n) - load(mp.data() + col));
    });
  }
  at::Tensor dx, dw, db, dz;
  if (need_dweight) {
    std::vector<double> gw(C), gb(C);
    for (int64_t c = 0; c < C; ++c) {
      gw[c] = sums[C + c] * is[c];
      gb[c] = sums[c];
    }
    dw = float_vector(gw);
    db = float_vector(gb);
  }
  const bool write_dz = need_dz && relu;
  if (need_dx || write_dz) {
    // dx = dz * A + (x - mean) * B + D
    std::vector<double> A(C), B(C, 0.0), D(C, 0.0);
    const double M = static_cast<double>(l.M);
    for (int64_t c = 0; c < C; ++c) {
      A[c] = w[c] * is[c];
      if (batch_stats) {
        B[c] = -w[c] * is[c] * is[c] * is[c] * sums[C + c] / M;
        D[c] = -A[c] * sums[c] / M;
      }
    }
    const std::vector<float> ap = pattern(l, A), bp = pattern(l, B), dp = pattern(l, D);
    float* dxp = nullptr;
    float* dzp = nullptr;
    if (need_dx) {
      dx = at::empty_like(x);
      dxp = dx.data_ptr<float>();
    }
    if (write_dz) {
      dz = at::empty_like(x);
      dzp = dz.data_ptr<float>();
    }
    elementwise(l, [&](int64_t j, int64_t col, auto n) {
      v8 g = load(gp + j, n);
      if (yp) g = positive(load(yp + j, n), g);
      if (dzp) store(dzp + j, g, n);
      if (dxp)
        store(dxp + j, g * load(ap.data() + col) + (load(xp + j, n) - load(mp.data() + col)) * load(bp.data() + col) +
                           load(dp.data() + col), n);
    });
  }
  return {dx, dw, db, dz};
}

namespace {

c10::optional<at::Tensor> opt(const at::Tensor& t) { return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt; }
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

// ---- the operator hrnet_mm::batch_norm_act ------------------------------------------------------------------------
// relu?(batch_norm(x) [+ residual]) of a channels_last float32 map, returning (y, mean, invstd) and updating the
// running statistics in place (batch_stats). Registered with the dispatcher: CPU kernels for the forward and the
// backward pass (an operator of its own, so that torch.compile can trace it through its fake kernel,
// hrnet_mm/ops/fake.py) and an autograd kernel in C++, so that a training step pays no Python call per layer.

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool batch_stats, double momentum, double eps, bool relu) {
  std::vector<at::Tensor> out = batch_norm_act_forward(x, weight, bias, running_mean, running_var, batch_stats,
                                                       momentum, eps, residual, relu);
  return {out[0], out[1], out[2]};
}

// (dx, dweight, dbias, dz), each an empty tensor where not asked for; dz is the residual's gradient with relu.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& y,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd, bool batch_stats,
    bool relu, bool need_dx, bool need_dweight, bool need_dz) {
  std::vector<at::Tensor> g = batch_norm_act_backward(dy.contiguous(at::MemoryFormat::ChannelsLast), x, y, weight,
                                                      mean, invstd, batch_stats, relu, need_dx, need_dweight,
                                                      need_dz);
  return {or_empty(g[0], x), or_empty(g[1], mean), or_empty(g[2], mean), or_empty(g[3], x)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_batch_norm_act(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool batch_stats, double momentum, double eps, bool relu) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hrnet_mm::batch_norm_act", "")
                       .typed<decltype(batch_norm_act_cpu)>();
  return op.call(x, weight, bias, residual, running_mean, running_var, batch_stats, momentum, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_batch_norm_act_backward(
    const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& y,
    const c10::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& invstd, bool batch_stats,
    bool relu, bool need_dx, bool need_dweight, bool need_dz) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hrnet_mm::batch_norm_act_backward", "")
                       .typed<decltype(batch_norm_act_backward_cpu)>();
  return op.call(dy, x, y, weight, mean, invstd, batch_stats, relu, need_dx, need_dweight, need_dz);
}

// The autograd node: gradients of x, weight, bias and residual.
struct BatchNormAct : public torch::autograd::Function<BatchNormAct> {
  // optional tensors: an undefined at::Tensor cannot be an input of a C++ autograd function
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& weight,
                                                const c10::optional<at::Tensor>& bias,
                                                const c10::optional<at::Tensor>& residual,
                                                const c10::optional<at::Tensor>& running_mean,
                                                const c10::optional<at::Tensor>& running_var, bool batch_stats,
                                                double momentum, double eps, bool relu) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mean, invstd] =
        call_batch_norm_act(x, weight, bias, residual, running_mean, running_var, batch_stats, momentum, eps, relu);
    ctx->save_for_backward({x, relu ? y : at::Tensor(), weight.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["batch_stats"] = batch_stats;
    ctx->saved_data["relu"] = relu;
    // needs_input_grad counts the tensor inputs that exist: x, then weight, bias, residual where given
    const auto given = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
    ctx->saved_data["weight"] = given(weight);
    ctx->saved_data["bias"] = given(bias);
    ctx->saved_data["residual"] = given(residual);
    ctx->mark_non_differentiable({mean, invstd});
    return {y, mean, invstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool relu = ctx->saved_data["relu"].toBool(), has_residual = ctx->saved_data["residual"].toBool();
    const bool has_weight = ctx->saved_data["weight"].toBool(), has_bias = ctx->saved_data["bias"].toBool();
    size_t edge = 1;
    const bool need_dx = ctx->needs_input_grad(0);
    const bool need_dw = has_weight && ctx->needs_input_grad(edge++);
    const bool need_db = has_bias && ctx->needs_input_grad(edge++);
    const bool need_dr = has_residual && ctx->needs_input_grad(edge++);
    const at::Tensor dy = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
    auto [dx, dweight, dbias, dz] =
        call_batch_norm_act_backward(dy, saved[0], opt(saved[1]), opt(saved[2]), saved[3], saved[4],
                                     ctx->saved_data["batch_stats"].toBool(), relu, need_dx, need_dw || need_db,
                                     need_dr && relu);
    at::Tensor dr;
    if (need_dr) dr = relu ? dz : dy;
    return {need_dx ? dx : at::Tensor(), need_dw ? dweight : at::Tensor(), need_db ? dbias : at::Tensor(), dr,
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_autograd(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& running_mean,
    const c10::optional<at::Tensor>& running_var, bool batch_stats, double momentum, double eps, bool relu) {
  auto out = BatchNormAct::apply(x, weight, bias, residual, running_mean, running_var, batch_stats, momentum, eps,
                                 relu);
  return {out[0], out[1], out[2]};
}

}  // namespace

}  // namespace hrnet_mm_norm

TORCH_LIBRARY_FRAGMENT(hrnet_mm, m) {
  m.def("batch_norm_act(Tensor x, Tensor? weight, Tensor? bias, Tensor? residual, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, bool batch_stats, float momentum, float eps, bool relu) -> (Tensor, Tensor, Tensor)");
  m.def("batch_norm_act_backward(Tensor dy, Tensor x, Tensor? y, Tensor? weight, Tensor mean, Tensor invstd, "
        "bool batch_stats, bool relu, bool need_dx, bool need_dweight, bool need_dz) -> (Tensor, Tensor, Tensor, "
        "Tensor)");
}

TORCH_LIBRARY_IMPL(hrnet_mm, CPU, m) {
  m.impl("batch_norm_act", &hrnet_mm_norm::batch_norm_act_cpu);
  m.impl("batch_norm_act_backward", &hrnet_mm_norm::batch_norm_act_backward_cpu);
}

TORCH_LIBRARY_IMPL(hrnet_mm, Autograd, m) { m.impl("batch_norm_act", &hrnet_mm_norm::batch_norm_act_autograd); }
