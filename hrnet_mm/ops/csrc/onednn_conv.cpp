// oneDNN's convolution, called directly (hrnet_mm.ops.onednn): the primitive, its reordered weights, bias, scales
// and zero point are made once per layer and input shape, and each call only wraps the input, summand and output
// tensors' memory and runs it. Built against the oneDNN of the onednn-cpu-gomp package, which shares torch's OpenMP
// runtime (and so its thread count).
//
// With an int8 weight (K, C, kh, kw), as torch.ops.onednn.qconv2d_pointwise with float32 output:
//   y = relu?( x_scale * w_scale[k] * sum((q - x_zero_point) * w) + bias[k] [+ summand] )
// q a uint8 (N, C, H, W) tensor, y float32; or, with y_scale > 0 (and no summand), y quantized for the next
// layer as uint8 clamp(round_half_even(y / y_scale) + y_zero_point, 0, 255). With a float32 or bfloat16 weight, as
// torch.ops.mkldnn._convolution_pointwise: y = relu?(conv(x, w) + bias [+ summand]), x and y in the weight's type.
// All tensors are channels_last. The summand is either added by oneDNN's sum post-op, which writes the result
// into it (summand mode 1), or read by a binary add post-op into a new output (mode 2).
#include <torch/extension.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <unordered_map>
#include <vector>

namespace {

using dnnl::memory;
using dt = memory::data_type;
using tag = memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpu_stream() {  // oneDNN streams are not to be shared by threads that run at once
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

memory filled(const memory::desc& desc, const void* data, size_t bytes) {
  memory m(desc, cpu_engine());
  std::memcpy(m.get_data_handle(), data, bytes);
  return m;
}

class Conv {
 public:
  Conv(std::vector<int64_t> input_shape, torch::Tensor weight, c10::optional<torch::Tensor> bias,
       std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation, bool relu,
       int64_t summand, c10::optional<torch::Tensor> w_scale, double x_scale, int64_t x_zero_point, double y_scale,
       int64_t y_zero_point)
      : summand_(summand), int8_(weight.scalar_type() == torch::kChar), quantized_out_(y_scale > 0) {
    TORCH_CHECK(input_shape.size() == 4 && weight.dim() == 4 && stride.size() == 2 && padding.size() == 2 &&
                    dilation.size() == 2,
                "Conv: a 2-D convolution of an (N, C, H, W) input");
    TORCH_CHECK(summand >= 0 && summand <= 2, "Conv: summand mode 0 (none), 1 (sum into it) or 2 (add)");
    const auto type = weight.scalar_type();
    TORCH_CHECK(type == torch::kChar || type == torch::kFloat || type == torch::kBFloat16,
                "Conv: the weight must be int8, float32 or bfloat16");
    TORCH_CHECK(weight.size(1) == input_shape[1], "Conv: the weight (K, C, kh, kw) must have the input's C");
    TORCH_CHECK(!quantized_out_ || (int8_ && summand == 0 && y_zero_point >= 0 && y_zero_point <= 255),
                "Conv: a uint8 output (y_scale > 0) needs an int8 weight, no summand and 0 <= y_zero_point <= 255");
    const int64_t n = input_shape[0], c = input_shape[1], h = input_shape[2], w = input_shape[3];
    const int64_t k = weight.size(0), kh = weight.size(2), kw = weight.size(3);
    const int64_t oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
    const int64_t ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
    TORCH_CHECK(oh > 0 && ow > 0, "Conv: the input is smaller than the kernel");
    input_shape_ = input_shape;
    output_shape_ = {n, k, oh, ow};
    const dt float_type = type == torch::kBFloat16 ? dt::bf16 : dt::f32;
    input_type_ = int8_ ? torch::kByte : type;
    output_type_ = quantized_out_ ? torch::kByte : int8_ ? torch::kFloat : type;
    src_ = memory::desc({n, c, h, w}, int8_ ? dt::u8 : float_type, tag::nhwc);
    dst_ = memory::desc({n, k, oh, ow}, quantized_out_ ? dt::u8 : float_type, tag::nhwc);
    const dt weight_type = int8_ ? dt::s8 : float_type;
    const memory::desc any_weight({k, c, kh, kw}, weight_type, tag::any);
    const memory::desc bias_desc({k}, dt::f32, tag::a);

    dnnl::primitive_attr attr;
    if (int8_) {
      TORCH_CHECK(w_scale.has_value() && w_scale->numel() == k && w_scale->scalar_type() == torch::kFloat,
                  "Conv: an int8 weight needs w_scale, one float32 per output channel");
      attr.set_scales_mask(DNNL_ARG_SRC, 0);
      attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1);  // per output channel
      attr.set_zero_points_mask(DNNL_ARG_SRC, 0);
    }
    if (quantized_out_) {
      attr.set_scales_mask(DNNL_ARG_DST, 0);
      attr.set_zero_points_mask(DNNL_ARG_DST, 0);
    }
    dnnl::post_ops ops;
    if (summand == 1) ops.append_sum(1.f);
    if (summand == 2) ops.append_binary(dnnl::algorithm::binary_add, dst_);
    if (relu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    const dnnl::convolution_forward::primitive_desc pd(
        cpu_engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_, any_weight,
        bias_desc, dst_, {stride[0], stride[1]}, {dilation[0] - 1, dilation[1] - 1}, {padding[0], padding[1]},
        {padding[0], padding[1]}, attr);
    primitive_ = dnnl::convolution_forward(pd);
    scratchpad_ = pd.scratchpad_desc();

    const torch::Tensor plain = weight.contiguous();
    memory user_weight(memory::desc({k, c, kh, kw}, weight_type, tag::oihw), cpu_engine(), plain.data_ptr());
    weight_ = memory(pd.weights_desc(), cpu_engine());
    dnnl::reorder(user_weight, weight_).execute(cpu_stream(), user_weight, weight_);
    cpu_stream().wait();
    std::vector<float> zeros(k, 0.f);
    const torch::Tensor b = bias.has_value() ? bias->to(torch::kFloat).contiguous() : torch::Tensor();
    TORCH_CHECK(!b.defined() || b.numel() == k, "Conv: the bias must hold one value per output channel");
    bias_ = filled(bias_desc, b.defined() ? b.data_ptr<float>() : zeros.data(), k * sizeof(float));
    if (int8_) {
      const float src_scale = static_cast<float>(x_scale);
      const int32_t src_zero_point = static_cast<int32_t>(x_zero_point);
      src_scale_ = filled(memory::desc({1}, dt::f32, tag::x), &src_scale, sizeof(float));
      weight_scale_ = filled(memory::desc({k}, dt::f32, tag::x), w_scale->contiguous().data_ptr<float>(),
                             k * sizeof(float));
      src_zero_point_ = filled(memory::desc({1}, dt::s32, tag::x), &src_zero_point, sizeof(int32_t));
    }
    if (quantized_out_) {
      const float dst_scale = static_cast<float>(y_scale);
      const int32_t dst_zero_point = static_cast<int32_t>(y_zero_point);
      dst_scale_ = filled(memory::desc({1}, dt::f32, tag::x), &dst_scale, sizeof(float));
      dst_zero_point_ = filled(memory::desc({1}, dt::s32, tag::x), &dst_zero_point, sizeof(int32_t));
    }
  }

  // x: the channels_last input of the shape given at construction (uint8 for an int8 weight, else the weight's
  // type); summand: a channels_last tensor of the output's shape and type (modes 1 and 2 only). Returns the
  // result: the summand itself in mode 1.
  torch::Tensor run(const torch::Tensor& x, c10::optional<torch::Tensor> summand) const {
    TORCH_CHECK(x.scalar_type() == input_type_ && x.sizes().vec() == input_shape_ &&
                    x.is_contiguous(at::MemoryFormat::ChannelsLast),
                "Conv: the input must be a channels_last ", input_type_, " tensor of shape ", input_shape_);
    TORCH_CHECK(summand.has_value() == (summand_ != 0), summand_ ? "Conv: this convolution adds a summand: pass it"
                                                                 : "Conv: this convolution takes no summand");
    if (summand_) {
      TORCH_CHECK(summand->scalar_type() == output_type_ && summand->sizes().vec() == output_shape_ &&
                      summand->is_contiguous(at::MemoryFormat::ChannelsLast),
                  "Conv: the summand must be a channels_last ", output_type_, " tensor of shape ", output_shape_);
    }
    const torch::Tensor out = summand_ == 1 ? *summand
        : torch::empty(output_shape_, torch::dtype(output_type_).memory_format(at::MemoryFormat::ChannelsLast));
    const torch::Tensor scratch = torch::empty({static_cast<int64_t>(scratchpad_.get_size())}, torch::kByte);
    const memory src(src_, cpu_engine(), x.data_ptr()), dst(dst_, cpu_engine(), out.data_ptr());
    const memory scratchpad(scratchpad_, cpu_engine(), scratch.data_ptr());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                         {DNNL_ARG_WEIGHTS, weight_},
                                         {DNNL_ARG_BIAS, bias_},
                                         {DNNL_ARG_DST, dst},
                                         {DNNL_ARG_SCRATCHPAD, scratchpad}};
    if (int8_) {
      args.insert({DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, src_scale_});
      args.insert({DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, weight_scale_});
      args.insert({DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, src_zero_point_});
    }
    if (quantized_out_) {
      args.insert({DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, dst_scale_});
      args.insert({DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, dst_zero_point_});
    }
    if (summand_ == 2) {
      const memory added(dst_, cpu_engine(), summand->data_ptr());
      args.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, added});
    }
    {
      pybind11::gil_scoped_release no_gil;
      primitive_.execute(cpu_stream(), args);
      cpu_stream().wait();
    }
    return out;
  }

  std::vector<int64_t> output_shape() const { return output_shape_; }

  // (address, bytes) of the reordered weight, for hrnet_mm.ops.winograd's timing to flush from the caches
  std::pair<int64_t, int64_t> weight_memory() const {
    return {reinterpret_cast<int64_t>(weight_.get_data_handle()), static_cast<int64_t>(weight_.get_desc().get_size())};
  }

 private:
  int64_t summand_;
  bool int8_, quantized_out_;
  torch::ScalarType input_type_, output_type_;
  std::vector<int64_t> input_shape_, output_shape_;
  memory::desc src_, dst_, scratchpad_;
  dnnl::convolution_forward primitive_;
  memory weight_, bias_, src_scale_, weight_scale_, src_zero_point_, dst_scale_, dst_zero_point_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Conv>(m, "Conv", "oneDNN's convolution, prepared for one input shape")
      .def(pybind11::init<std::vector<int64_t>, torch::Tensor, c10::optional<torch::Tensor>, std::vector<int64_t>,
                          std::vector<int64_t>, std::vector<int64_t>, bool, int64_t, c10::optional<torch::Tensor>,
                          double, int64_t, double, int64_t>(),
           pybind11::arg("input_shape"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("stride"),
           pybind11::arg("padding"), pybind11::arg("dilation"), pybind11::arg("relu"), pybind11::arg("summand"),
           pybind11::arg("w_scale") = pybind11::none(), pybind11::arg("x_scale") = 1.0,
           pybind11::arg("x_zero_point") = 0, pybind11::arg("y_scale") = 0.0, pybind11::arg("y_zero_point") = 0)
      .def("run", &Conv::run, pybind11::arg("x"), pybind11::arg("summand") = pybind11::none())
      .def_property_readonly("output_shape", &Conv::output_shape)
      .def_property_readonly("weight_memory", &Conv::weight_memory);
  m.def("version", []() {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  });
}
