// The Python module of hrnet_mm's CPU kernels: the weight transform and the training passes that
// hrnet_mm.ops.winograd times one by one. The operators (torch.ops.hrnet_mm) are registered with the dispatcher by
// forward.cpp (the deploy convolution), train.cpp and norm.cpp.
#include "winograd.h"

using namespace hrnet_mm_winograd;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_supported", &bf16_supported, "whether the bfloat16 Winograd convolution runs here (AVX512_BF16)");
  m.def("winograd_weight", &winograd_weight, "packed transformed weight (flip: of the input-gradient convolution)");
  m.def("winograd_conv_weight_grad", &winograd_conv_weight_grad,
        "weight gradient (K, C, 3, 3) of the 3x3 convolution of x given the output gradient dy");
  m.def("winograd_train_forward", &train_forward,
        "hrnet_mm::train_conv3x3's forward pass conv2d(x, weight, padding=1) by oneDNN (0) or Winograd (2, 4)");
  m.def("winograd_train_input_grad", &train_input_grad,
        "hrnet_mm::train_conv3x3's input gradient from dy by oneDNN (0) or Winograd (2, 4)");
  m.def("winograd_train_gradients", &train_gradients,
        "hrnet_mm::train_conv3x3's two gradients (input, weight) from dy, side by side or not (together)");
  m.def("winograd_train_weight_grad", &train_weight_grad,
        "hrnet_mm::train_conv3x3's weight gradient by oneDNN (0) or Winograd (2, 4), laid out like weight");
}
