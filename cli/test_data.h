#pragma once
// Random problems for `w4a16 verify`: fresh random activations and weights, quantized and packed.

#include <cstdint>
#include <vector>

#include "w4a16/quantize.h"

namespace w4a16::cli {

struct HostProblem {
  int m = 0, n = 0, k = 0, group_size = 0;
  Format format;
  std::vector<uint16_t> a;     // [m][k], uniform in [-1, 1), bits of format.element
  std::vector<uint16_t> bias;  // [n], or empty
  QuantizedWeights weights;    // from uniform [-1, 1) weights, in `format`
  std::vector<uint8_t> packed;
};

HostProblem make_problem(int m, int n, int k, int group_size, Format format, bool with_bias, uint64_t seed);

}  // namespace w4a16::cli
