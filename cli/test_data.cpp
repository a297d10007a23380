#include "cli/test_data.h"

#include "cli/cli_support.h"

namespace w4a16::cli {

namespace {

// splitmix64: fast, good enough for test data, and reproducible from the printed seed.
struct Random {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)
};

}  // namespace

HostProblem make_problem(int m, int n, int k, int group_size, Format format, bool with_bias, uint64_t seed) {
  HostProblem problem;
  problem.m = m;
  problem.n = n;
  problem.k = k;
  problem.group_size = group_size;
  problem.format = format;
  Random random{seed};
  problem.a.resize(size_t(m) * k);
  for (auto& x : problem.a) x = float_to_element(format.element, random.uniform());
  if (with_bias) {
    problem.bias.resize(n);
    for (auto& x : problem.bias) x = float_to_element(format.element, random.uniform());
  }
  std::vector<float> weights(size_t(n) * k);
  for (auto& w : weights) w = random.uniform();
  QuantizeOptions options;
  options.group_size = group_size;
  options.element = format.element;
  options.quant = format.quant;
  check_status(quantize(weights.data(), n, k, options, &problem.weights), "quantize");
  // quantize() centres the zero points near 8 on these weights; a third of them move, so that
  // the check sees the whole code range (whole numbers) or fractions (float zero points).
  for (uint16_t& zero : problem.weights.zeros) {
    if (random.next() % 3 != 0) continue;
    const float value = format.quant == QuantOp::kScaleAndFloatZeros
                            ? element_to_float(format.element, zero) + 0.25f * float(1 + random.next() % 3)
                            : float(random.next() % (kMaxCode + 1));
    zero = float_to_element(format.element, value);
  }
  check_status(pack_weights(problem.weights, &problem.packed), "pack_weights");
  return problem;
}

}  // namespace w4a16::cli
