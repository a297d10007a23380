// CPU reference GEMM: double accumulation over dequantized weights (host only).
#include <algorithm>
#include <string>
#include <thread>

#include "host/parallel.h"
#include "w4a16/reference.h"

namespace w4a16 {

Status reference_gemm(const uint16_t* a, int m, const QuantizedWeights& weights, const uint16_t* bias, float alpha,
                      const std::vector<int>& rows_in, std::vector<double>* out) {
  const int n = weights.n;
  const int k = weights.k;
  if (a == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, "reference_gemm: null pointer");
  if (m <= 0 || n <= 0 || k <= 0) {
    return Status(StatusCode::kInvalidArgument, "reference_gemm: m, n and k must be positive");
  }
  if (Status s = check_group_size(k, weights.group_size); !s.ok()) return s;
  const size_t group_rows = size_t(k / weights.group_size) * n;
  if (weights.codes.size() != size_t(n) * k || weights.scales.size() != group_rows ||
      (!weights.zeros.empty() && weights.zeros.size() != group_rows)) {
    return Status(StatusCode::kInvalidArgument,
                  "reference_gemm: codes/scales/zeros sizes do not match n, k, group_size");
  }
  const ElementType element = weights.element;
  for (int row : rows_in) {
    if (row < 0 || row >= m) {
      return Status(StatusCode::kInvalidArgument, "reference_gemm: row " + std::to_string(row) + " outside [0, m)");
    }
  }
  std::vector<int> rows = rows_in;
  if (rows.empty()) {
    rows.resize(m);
    for (int i = 0; i < m; ++i) rows[i] = i;
  }
  const size_t row_count = rows.size();

  // A rows as double once; each weight row is dequantized once (exact in double) and dotted with
  // every selected A row.
  std::vector<double> a_rows(row_count * k);
  for (size_t r = 0; r < row_count; ++r)
    for (int j = 0; j < k; ++j) a_rows[r * k + j] = double(element_to_float(element, a[size_t(rows[r]) * k + j]));

  std::vector<double>& c = *out;
  c.assign(row_count * n, 0.0);
  auto work = [&](int n_begin, int n_end) {
    std::vector<double> w(k);
    for (int col = n_begin; col < n_end; ++col) {
      for (int j = 0; j < k; ++j) w[j] = weights.dequantized(col, j);
      const double b = bias ? double(element_to_float(element, bias[col])) : 0.0;
      for (size_t r = 0; r < row_count; ++r) {
        const double* x = &a_rows[r * k];
        double sum = 0.0;
        for (int j = 0; j < k; ++j) sum += x[j] * w[j];
        c[r * n + col] = double(alpha) * sum + b;
      }
    }
  };
  parallel_ranges(n, work);
  return Status::success();
}

Status reference_gemm(const __half* a, int m, const QuantizedWeights& weights, const __half* bias, float alpha,
                      const std::vector<int>& rows, std::vector<double>* c) {
  if (weights.element != ElementType::kFloat16) {
    return Status(StatusCode::kInvalidArgument, "reference_gemm: __half activations with non-fp16 scales");
  }
  static_assert(sizeof(__half) == sizeof(uint16_t), "fp16 is 16 bits");
  return reference_gemm(reinterpret_cast<const uint16_t*>(a), m, weights, reinterpret_cast<const uint16_t*>(bias),
                        alpha, rows, c);
}

}  // namespace w4a16
