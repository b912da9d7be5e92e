// The training convolution conv2d(x, weight, padding=1): its passes by oneDNN or Winograd (the input gradient is the
// convolution with the weight transposed and turned by 180 degrees, the weight gradient weight_grad.cpp's), and the
// operator hrnet_mm::train_conv3x3 with its CPU, backward and autograd kernels.
#include <ATen/ThreadLocalState.h>

#include "winograd.h"

namespace hrnet_mm_winograd {
bool is_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

void check_train_tile(int64_t tile, const char* name) {
  TORCH_CHECK(tile == 0 || tile == 2 || tile == 4, name, ": tile must be 0 (oneDNN), 2 or 4, got ", tile);
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
}  // namespace hrnet_mm_winograd

using namespace hrnet_mm_winograd;

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
