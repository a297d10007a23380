#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "w4a16/reference.h"
#include "host/parallel.h"

namespace w4a16 {

void PrintTo(StatusCode code, std::ostream* os) { *os << to_string(code); }
void PrintTo(const Status& status, std::ostream* os) { *os << status.to_string(); }
void PrintTo(const KernelConfig& config, std::ostream* os) { *os << config.name(); }

}  // namespace w4a16

namespace w4a16::test {

::testing::AssertionResult IsOk(const Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected success, got " << status.to_string();
}

::testing::AssertionResult HasCode(const Status& status, StatusCode expected) {
  if (status.code() == expected) return ::testing::AssertionSuccess() << status.to_string();
  return ::testing::AssertionFailure() << "expected status code '" << to_string(expected) << "', got "
                                       << (status.ok() ? std::string("success") : status.to_string());
}

bool has_gpu() {
  static const bool present = [] {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess) {
      cudaGetLastError();  // clear the error the probe left behind
      return false;
    }
    return count > 0;
  }();
  return present;
}

// ---------------------------------------------------------------------------------------------
namespace {

uint64_t fresh_seed() {
  if (const char* forced = std::getenv("W4A16_TEST_SEED"); forced != nullptr && *forced != '\0') {
    return std::strtoull(forced, nullptr, 0);
  }
  std::random_device device;
  return (uint64_t(device()) << 32) ^ uint64_t(device());
}

}  // namespace

Random::Random() : Random(fresh_seed()) {}

std::string Random::describe() const {
  return "random seed " + std::to_string(seed_) + " (replay with W4A16_TEST_SEED=" + std::to_string(seed_) + ")";
}

std::vector<uint16_t> Random::elements(ElementType element, size_t count, float lo, float hi) {
  std::vector<uint16_t> out(count);
  std::uniform_real_distribution<float> distribution(lo, hi);
  for (auto& value : out) value = float_to_element(element, distribution(engine_));
  return out;
}

std::vector<__half> Random::halves(size_t count, float lo, float hi) {
  std::vector<__half> out(count);
  std::uniform_real_distribution<float> distribution(lo, hi);
  for (auto& value : out) value = __float2half(distribution(engine_));
  return out;
}

std::vector<float> Random::weights(int n, int k) {
  std::vector<float> out(size_t(n) * k);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::uniform_real_distribution<float> exponent(-3.0f, 1.0f);
  for (int row = 0; row < n; ++row) {
    for (int col = 0; col < k; col += 32) {
      const float magnitude = std::exp2(exponent(engine_));
      const int end = std::min(k, col + 32);
      for (int j = col; j < end; ++j) out[size_t(row) * k + j] = value(engine_) * magnitude;
    }
  }
  return out;
}

std::vector<uint8_t> Random::codes(size_t count) {
  std::vector<uint8_t> out(count);
  std::uniform_int_distribution<int> distribution(0, 15);
  for (auto& code : out) code = uint8_t(distribution(engine_));
  return out;
}

float Random::alpha() {
  const float magnitude = uniform(0.25f, 2.0f);
  return coin() ? magnitude : -magnitude;
}

// ---------------------------------------------------------------------------------------------
double error_bound(ElementType element, double reference, double magnitude) {
  const int unit_roundoff_exponent = element == ElementType::kBFloat16 ? -8 : -11;
  return std::ldexp(magnitude + std::fabs(reference), unit_roundoff_exponent + 2) + std::ldexp(1.0, -14);
}

std::string format_tag(const Format& format) {
  const char* quant = format.quant == QuantOp::kScaleAndZeros        ? "_zeros"
                      : format.quant == QuantOp::kScaleAndFloatZeros ? "_float_zeros"
                                                                     : "";
  return std::string(to_string(format.element)) + quant;
}

std::vector<double> reference_magnitude(const std::vector<uint16_t>& a, int m, const QuantizedWeights& weights,
                                        float alpha, const std::vector<int>& rows_in) {
  const int n = weights.n, k = weights.k;
  std::vector<int> rows = rows_in;
  if (rows.empty()) {
    rows.resize(m);
    for (int i = 0; i < m; ++i) rows[i] = i;
  }
  std::vector<double> abs_a(rows.size() * size_t(k));
  for (size_t r = 0; r < rows.size(); ++r)
    for (int j = 0; j < k; ++j)
      abs_a[r * k + j] = std::fabs(double(element_to_float(weights.element, a[size_t(rows[r]) * k + j])));
  const bool zeros = !weights.zeros.empty();
  std::vector<double> out(rows.size() * size_t(n), 0.0);
  auto work = [&](int n_begin, int n_end) {
    std::vector<double> w(k);
    for (int col = n_begin; col < n_end; ++col) {
      for (int j = 0; j < k; ++j) {
        const double s = std::fabs(double(weights.scale(col, j))), z = weights.zero(col, j);
        w[j] = s * (std::fabs(double(weights.codes[size_t(col) * k + j]) - z) + (zeros ? std::fabs(z) : 0.0));
      }
      for (size_t r = 0; r < rows.size(); ++r) {
        double sum = 0.0;
        for (int j = 0; j < k; ++j) sum += abs_a[r * k + j] * w[j];
        out[r * n + col] = std::fabs(double(alpha)) * sum;
      }
    }
  };
  parallel_ranges(n, work);
  return out;
}

::testing::AssertionResult matches_reference(ElementType element, const std::vector<uint16_t>& c, int m, int n,
                                             const std::vector<int>& rows_in, const std::vector<double>& reference,
                                             const std::vector<double>& magnitude) {
  std::vector<int> rows = rows_in;
  if (rows.empty()) {
    rows.resize(m);
    for (int i = 0; i < m; ++i) rows[i] = i;
  }
  if (c.size() != size_t(m) * n) {
    return ::testing::AssertionFailure() << "result has " << c.size() << " elements, expected " << size_t(m) * n;
  }
  if (reference.size() != rows.size() * n || magnitude.size() != rows.size() * n) {
    return ::testing::AssertionFailure() << "reference has " << reference.size() << " elements, expected "
                                         << rows.size() * n;
  }
  size_t bad = 0, non_finite = 0;
  double max_abs = 0.0, max_rel = 0.0, max_rel_magnitude = 0.0, worst_ratio = 0.0;
  std::ostringstream first_bad;
  int reported = 0;
  std::ostringstream worst;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int col = 0; col < n; ++col) {
      const double got = double(element_to_float(element, c[size_t(rows[r]) * n + col]));
      const double want = reference[r * n + col];
      const double scale = magnitude[r * n + col];
      const double bound = error_bound(element, want, scale);
      const bool finite = std::isfinite(got);
      const double error = finite ? std::fabs(got - want) : INFINITY;
      if (!finite) ++non_finite;
      if (finite) {
        max_abs = std::max(max_abs, error);
        if (std::fabs(want) >= 1e-3) max_rel = std::max(max_rel, error / std::fabs(want));
        if (scale > 0) max_rel_magnitude = std::max(max_rel_magnitude, error / scale);
      }
      const double ratio = error / bound;
      if (!(error <= bound)) {
        ++bad;
        if (reported < 5) {
          first_bad << "\n    C[" << rows[r] << "][" << col << "] = " << got << ", reference " << want
                    << ", |error| " << error << " > bound " << bound << " (sum|a*w| = " << scale << ")";
          ++reported;
        }
      }
      if (ratio > worst_ratio || (r == 0 && col == 0)) {
        worst_ratio = ratio;
        worst.str("");
        worst << "C[" << rows[r] << "][" << col << "] = " << got << " vs " << want << " (bound " << bound << ")";
      }
    }
  }
  std::ostringstream summary;
  summary << rows.size() << " rows x " << n << " checked: max |error| " << max_abs << ", max |error|/|ref| " << max_rel
          << " (|ref| >= 1e-3), max |error|/sum|a*w| " << max_rel_magnitude << ", worst error/bound " << worst_ratio
          << " at " << worst.str();
  if (bad == 0) {
    // W4A16_TEST_VERBOSE=1 prints the error summary of passing checks too (to see the margins).
    if (const char* verbose = std::getenv("W4A16_TEST_VERBOSE"); verbose != nullptr && *verbose != '\0' && *verbose != '0')
      std::printf("  [check] %s\n", summary.str().c_str());
    return ::testing::AssertionSuccess() << summary.str();
  }
  return ::testing::AssertionFailure() << bad << " elements out of bounds (" << non_finite
                                       << " not finite: NaN is the poison of unwritten outputs); " << summary.str()
                                       << "; first ones:" << first_bad.str();
}

::testing::AssertionResult all_finite(ElementType element, const std::vector<uint16_t>& c, int m, int n) {
  if (c.size() != size_t(m) * n) {
    return ::testing::AssertionFailure() << "result has " << c.size() << " elements, expected " << size_t(m) * n;
  }
  size_t count = 0;
  size_t first = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (!std::isfinite(element_to_float(element, c[i]))) {
      if (count++ == 0) first = i;
    }
  }
  if (count == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << count << " of " << c.size() << " outputs are not finite (unwritten "
                                       << "outputs keep the NaN poison), first at C[" << first / n << "][" << first % n
                                       << "] = " << element_to_float(element, c[first]);
}

::testing::AssertionResult all_bytes_equal(const void* data, size_t bytes, uint8_t value) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    if (p[i] != value) {
      return ::testing::AssertionFailure() << "byte " << i << " of " << bytes << " is 0x" << std::hex << int(p[i])
                                           << ", expected untouched 0x" << int(value);
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<int> sample_rows(Random& rng, int m, int n, int k, double full_limit, int extra) {
  if (double(m) * n * k <= full_limit) return {};
  std::vector<int> rows = {0, m / 2, m - 1};
  for (int i = 0; i < extra; ++i) rows.push_back(rng.uniform_int(0, m - 1));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

bool family_selected(KernelFamily family) {
  // A comma-separated list of family names, e.g. "multistage,warp_specialized".
  const char* only = std::getenv("W4A16_TEST_FAMILY");
  if (only == nullptr || *only == '\0') return true;
  const std::string list = std::string(",") + only + ",";
  return list.find(std::string(",") + to_string(family) + ",") != std::string::npos;
}

}  // namespace w4a16::test
