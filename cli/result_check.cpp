// The verdict of `w4a16 verify` (cli/result_check.h).
#include "cli/result_check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "cli/cli_support.h"
#include "host/parallel.h"
#include "w4a16/reference.h"

namespace w4a16::cli {

bool matches_reference(const std::vector<uint16_t>& out, const std::vector<uint16_t>& a_reference, int m,
                       const QuantizedWeights& weights, const uint16_t* bias, float alpha, double tolerance,
                       int sample_rows, uint64_t seed) {
  const int n = weights.n, k = weights.k;
  const ElementType element = weights.element;
  size_t non_finite = 0;
  for (uint16_t x : out) non_finite += !std::isfinite(element_to_float(element, x));
  std::vector<int> rows;
  const bool sample = double(m) * n * k > 4e9 && m > sample_rows;
  if (sample) {
    std::mt19937 pick{static_cast<uint32_t>(seed)};
    rows = {0, m - 1};
    while (int(rows.size()) < sample_rows) rows.push_back(int(pick() % uint32_t(m)));
  }
  const auto begin = std::chrono::steady_clock::now();
  std::vector<double> reference;
  check_status(reference_gemm(a_reference.data(), m, weights, bias, alpha, rows, &reference), "reference_gemm");
  const int checked_rows = sample ? int(rows.size()) : m;
  // The bound's magnitude per checked element: |A| of the checked rows once, then one weight row
  // of |s| (|q - z| + |z|) terms at a time, over the CPU's threads (as the reference itself).
  const bool zeros = !weights.zeros.empty();
  std::vector<double> a_abs(size_t(checked_rows) * k);
  for (int r = 0; r < checked_rows; ++r) {
    const int row = sample ? rows[r] : r;
    for (int i = 0; i < k; ++i) {
      a_abs[size_t(r) * k + i] = std::fabs(double(element_to_float(element, a_reference[size_t(row) * k + i])));
    }
  }
  std::vector<double> magnitude(size_t(checked_rows) * n, 0.0);
  parallel_ranges(n, [&](int col_begin, int col_end) {
    std::vector<double> terms(k);
    for (int col = col_begin; col < col_end; ++col) {
      for (int i = 0; i < k; ++i) {
        const double s = std::fabs(double(weights.scale(col, i))), z = double(weights.zero(col, i));
        terms[i] = s * (std::fabs(double(weights.codes[size_t(col) * k + i]) - z) + (zeros ? std::fabs(z) : 0.0));
      }
      for (int r = 0; r < checked_rows; ++r) {
        double sum = 0.0;
        for (int i = 0; i < k; ++i) sum += a_abs[size_t(r) * k + i] * terms[i];
        magnitude[size_t(r) * n + col] = std::fabs(double(alpha)) * sum;
      }
    }
  });
  const double reference_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  const int unit_roundoff_exponent = element == ElementType::kBFloat16 ? -8 : -11;
  double max_abs = 0.0, error_squares = 0.0, reference_squares = 0.0;
  size_t beyond_bound = 0;
  for (int r = 0; r < checked_rows; ++r) {
    const int row = sample ? rows[r] : r;
    for (int col = 0; col < n; ++col) {
      const double got = element_to_float(element, out[size_t(row) * n + col]);
      const double want = reference[size_t(r) * n + col];
      const double error = std::fabs(got - want);
      max_abs = std::isfinite(error) ? std::max(max_abs, error) : INFINITY;
      error_squares += error * error;
      reference_squares += want * want;
      const double bound =
          std::ldexp(magnitude[size_t(r) * n + col] + std::fabs(want), unit_roundoff_exponent + 2) + std::ldexp(1.0, -14);
      beyond_bound += !(error <= bound);
    }
  }
  const double relative = std::sqrt(error_squares / std::max(reference_squares, 1e-300));
  const bool pass = non_finite == 0 && std::isfinite(relative) && relative <= tolerance && beyond_bound == 0;
  std::printf("checked %d of %d rows (reference %.1f s); non-finite outputs: %zu; beyond the per-element bound: %zu\n",
              checked_rows, m, reference_seconds, non_finite, beyond_bound);
  std::printf("max abs error %.3e   relative error (Frobenius) %.3e   tolerance %.1e   %s\n", max_abs, relative,
              tolerance, pass ? "PASS" : "FAIL");
  return pass;
}

}  // namespace w4a16::cli
