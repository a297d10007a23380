// Per-group int4 quantization, symmetric or with zero points (host only).
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

Status check_integer_zeros(const uint16_t* zeros, size_t count, ElementType element) {
  if (count > 0 && zeros == nullptr) return Status(StatusCode::kInvalidArgument, "check_integer_zeros: null zeros");
  for (size_t i = 0; i < count; ++i) {
    const float z = element_to_float(element, zeros[i]);
    if (!(z >= 0.0f && z <= float(kMaxCode) && z == std::nearbyint(z))) {
      return Status(StatusCode::kInvalidArgument,
                    "zero point " + std::to_string(i) + " is " + std::to_string(z) +
                        ", not a whole number in [0, 15]: fractional zero points need QuantOp::kScaleAndFloatZeros "
                        "(GemmArguments::float_zeros)");
    }
  }
  return Status::success();
}

namespace {

template <typename Load>
Status quantize_impl(const void* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out,
                     Load load) {
  if (weights == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, "quantize: null pointer");
  if (n <= 0 || k <= 0) {
    return Status(StatusCode::kInvalidArgument, "quantize: n and k must be positive");
  }
  if (options.element != ElementType::kFloat16 && options.element != ElementType::kBFloat16) {
    return Status(StatusCode::kInvalidArgument, "quantize: unknown element type");
  }
  if (options.quant != QuantOp::kScaleOnly && options.quant != QuantOp::kScaleAndZeros &&
      options.quant != QuantOp::kScaleAndFloatZeros) {
    return Status(StatusCode::kInvalidArgument, "quantize: unknown quant op");
  }
  const int group_size = options.group_size;
  if (Status s = check_group_size(k, group_size); !s.ok()) return s;
  const ElementType element = options.element;
  const bool zeros = has_zeros(options.quant);

  const int groups = k / group_size;
  QuantizedWeights q;
  q.n = n;
  q.k = k;
  q.group_size = group_size;
  q.element = element;
  q.float_zeros = options.quant == QuantOp::kScaleAndFloatZeros;
  q.codes.assign(size_t(n) * k, uint8_t(kSymmetricZeroPoint));
  q.scales.assign(size_t(groups) * n, float_to_element(element, 0.0f));
  if (zeros) q.zeros.assign(size_t(groups) * n, float_to_element(element, 0.0f));

  for (int row = 0; row < n; ++row) {
    for (int group = 0; group < groups; ++group) {
      const size_t begin = size_t(row) * k + size_t(group) * group_size;
      // The range always includes 0 (see quantize.h); for the symmetric op only max|w| matters.
      float lo = 0.0f, hi = 0.0f;
      for (int i = 0; i < group_size; ++i) {
        const float w = load(begin + i);
        // Checked per weight: std::min/max would silently drop a NaN.
        if (!std::isfinite(w)) {
          return Status(StatusCode::kInvalidArgument, "quantize: weight [" + std::to_string(row) + "][" +
                                                          std::to_string(group * group_size + i) + "] is not finite");
        }
        lo = std::min(lo, w);
        hi = std::max(hi, w);
      }
      // Symmetric: 7, not 8, so +max and -max both land on a code (q in [1, 15]); q = 0 stays
      // unused unless the scale is subnormal and rounds down. Asymmetric: 15 steps span [lo, hi].
      const float raw_scale = zeros ? (double(hi) - double(lo)) / kMaxCode : std::max(hi, -lo) / 7.0f;
      const uint16_t scale_bits = float_to_element(element, raw_scale);
      const float scale = element_to_float(element, scale_bits);
      if (!std::isfinite(scale)) {
        return Status(StatusCode::kInvalidArgument, "quantize: weights of row " + std::to_string(row) +
                                                        " need a scale beyond the range of " +
                                                        std::string(to_string(element)));
      }
      q.scales[size_t(group) * n + row] = scale_bits;
      float zero = float(kSymmetricZeroPoint);
      if (zeros) {
        zero = scale == 0.0f ? 0.0f : std::clamp(std::nearbyint(-lo / scale), 0.0f, float(kMaxCode));
        q.zeros[size_t(group) * n + row] = float_to_element(element, zero);  // an integer: exact
      }
      if (scale == 0.0f) {
        // All-zero group (or a scale below the type's range): every weight dequantizes to 0.
        for (int i = 0; i < group_size; ++i) q.codes[begin + i] = uint8_t(zero);
        continue;
      }
      for (int i = 0; i < group_size; ++i) {
        const float code = std::nearbyint(load(begin + i) / scale) + zero;
        q.codes[begin + i] = uint8_t(std::clamp(code, 0.0f, float(kMaxCode)));
      }
    }
  }
  *out = std::move(q);
  return Status::success();
}

}  // namespace

Status quantize(const float* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out) {
  return quantize_impl(weights, n, k, options, out, [weights](size_t i) { return weights[i]; });
}

Status quantize(const __half* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out) {
  return quantize_impl(weights, n, k, options, out, [weights](size_t i) { return __half2float(weights[i]); });
}

Status quantize(const __nv_bfloat16* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out) {
  return quantize_impl(weights, n, k, options, out, [weights](size_t i) { return __bfloat162float(weights[i]); });
}

Status quantize(const float* weights, int n, int k, int group_size, QuantizedWeights* out) {
  QuantizeOptions options;
  options.group_size = group_size;
  return quantize(weights, n, k, options, out);
}

Status quantize(const __half* weights, int n, int k, int group_size, QuantizedWeights* out) {
  QuantizeOptions options;
  options.group_size = group_size;
  return quantize(weights, n, k, options, out);
}

}  // namespace w4a16
