// The Python module of hrnet_mm's CPU kernels: the weight transform and the training passes that
// hrnet_mm.ops.winograd times one by one, and the cache flush that its deploy timing uses. The operators
// (torch.ops.hrnet_mm) are registered with the dispatcher by forward.cpp (the deploy convolution), train.cpp and
// norm.cpp.
#include "winograd.h"
#if defined(__x86_64__) || defined(__i386__)
#include <emmintrin.h>
#endif

using namespace hrnet_mm_winograd;

namespace {
// Writes back and drops the cache lines of [address, address + bytes) from every cache level, so that the next
// read of those bytes comes from memory (as a deploy layer's weight does inside a whole forward pass). Returns
// whether this processor has such an instruction here (x86-64: clflush; AArch64: dc civac).
bool flush_cache(int64_t address, int64_t bytes) {
  const auto* p = reinterpret_cast<const char*>(address);
#if defined(__x86_64__) || defined(__i386__)
  for (int64_t i = 0; i < bytes; i += 64) _mm_clflush(p + i);
  _mm_mfence();
  return true;
#elif defined(__aarch64__)
  for (int64_t i = 0; i < bytes; i += 64) asm volatile("dc civac, %0" : : "r"(p + i) : "memory");
  asm volatile("dsb ish" : : : "memory");
  return true;
#else
  (void)p;
  (void)bytes;
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_supported", &bf16_supported, "whether the bfloat16 Winograd convolution runs here (AVX512_BF16)");
  m.def("flush_cache", &flush_cache, "drop the bytes [address, address + bytes) from the caches; false: cannot here",
        pybind11::arg("address"), pybind11::arg("bytes"));
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
