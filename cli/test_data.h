#pragma once
// Random problems for `w4a16 verify`: fresh random activations and weights, quantized and packed.

#include <cstdint>
#include <vector>

#include <cuda_fp16.h>

#include "w4a16/quantize.h"

namespace w4a16::cli {

struct HostProblem {
  int m = 0, n = 0, k = 0, group_size = 0;
  std::vector<__half> a;     // [m][k], uniform in [-1, 1)
  std::vector<__half> bias;  // [n], or empty
  QuantizedWeights weights;  // from uniform [-1, 1) weights
  std::vector<uint8_t> packed;
};

HostProblem make_problem(int m, int n, int k, int group_size, bool with_bias, uint64_t seed);

}  // namespace w4a16::cli
