// Symmetric per-group int4 quantization (host only).
#include <algorithm>
#include <cmath>
#include <string>

#include "w4a16/quantize.h"

namespace w4a16 {

Status check_group_size(int k, int group_size) {
  if (group_size <= 0) {
    return Status(StatusCode::kUnsupportedGroupSize, "group_size must be positive, got " + std::to_string(group_size));
  }
  if (group_size != 32 && group_size != 64 && group_size != 128 && group_size != k) {
    return Status(StatusCode::kUnsupportedGroupSize,
                  "group_size " + std::to_string(group_size) + " not supported: use 32, 64, 128 or k (per-channel)");
  }
  if (k % group_size != 0) {
    return Status(StatusCode::kUnsupportedGroupSize,
                  "k = " + std::to_string(k) + " is not a multiple of group_size " + std::to_string(group_size));
  }
  return Status::success();
}

namespace {

template <typename Load>
Status quantize_impl(const void* weights, int n, int k, int group_size, QuantizedWeights* out, Load load) {
  if (weights == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, "quantize: null pointer");
  if (n <= 0 || k <= 0) {
    return Status(StatusCode::kInvalidArgument, "quantize: n and k must be positive");
  }
  if (Status s = check_group_size(k, group_size); !s.ok()) return s;

  const int groups = k / group_size;
  out->n = n;
  out->k = k;
  out->group_size = group_size;
  out->codes.assign(size_t(n) * k, 0);
  out->scales.assign(size_t(groups) * n, __float2half(0.0f));

  for (int row = 0; row < n; ++row) {
    for (int group = 0; group < groups; ++group) {
      const size_t begin = size_t(row) * k + size_t(group) * group_size;
      float max_abs = 0.0f;
      for (int i = 0; i < group_size; ++i) {
        const float w = load(begin + i);
        // Checked per weight: std::max would silently drop a NaN.
        if (!std::isfinite(w)) {
          return Status(StatusCode::kInvalidArgument, "quantize: weight [" + std::to_string(row) + "][" +
                                                          std::to_string(group * group_size + i) + "] is not finite");
        }
        max_abs = std::max(max_abs, std::fabs(w));
      }
      // 7, not 8: symmetric, so +max and -max both land on a code ([-7, 7]); -8 stays unused
      // unless the scale falls into fp16's subnormal range and rounds down.
      const __half scale_half = __float2half(max_abs / 7.0f);
      if (!std::isfinite(__half2float(scale_half))) {
        return Status(StatusCode::kInvalidArgument, "quantize: weights of row " + std::to_string(row) +
                                                        " exceed 7 * 65504, the largest an fp16 scale can express");
      }
      out->scales[size_t(group) * n + row] = scale_half;
      const float scale = __half2float(scale_half);
      if (scale == 0.0f) continue;  // all-zero group (or below fp16 range): codes stay 0
      for (int i = 0; i < group_size; ++i) {
        const float q = std::nearbyint(load(begin + i) / scale);
        out->codes[begin + i] = int8_t(std::clamp(q, -8.0f, 7.0f));
      }
    }
  }
  return Status::success();
}

}  // namespace

Status quantize(const float* weights, int n, int k, int group_size, QuantizedWeights* out) {
  return quantize_impl(weights, n, k, group_size, out, [weights](size_t i) { return weights[i]; });
}

Status quantize(const __half* weights, int n, int k, int group_size, QuantizedWeights* out) {
  return quantize_impl(weights, n, k, group_size, out, [weights](size_t i) { return __half2float(weights[i]); });
}

}  // namespace w4a16
