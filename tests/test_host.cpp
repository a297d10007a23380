// Host-only tests: quantize, pack/unpack and the packed layout, the CPU reference, config names,
// statuses, the heuristic, and the runner's behaviour on a machine without a GPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/packed_layout.h"
#include "kernels/dequant_cublas/dequant_cublas.h"
#include "kernels/fused/warp_specialized/tensor_maps.h"
#include "runner/compiled_config.h"
#include "runner/config_hash.h"
#include "runner/heuristics.h"
#include "test_util.h"
#include "w4a16/w4a16.h"

namespace w4a16 {
namespace {

using test::Random;


// =============================================================================================
// check_group_size / quantize

TEST(GroupSize, SupportedAndUnsupported) {
  W4A16_EXPECT_OK(check_group_size(512, 32));
  W4A16_EXPECT_OK(check_group_size(512, 64));
  W4A16_EXPECT_OK(check_group_size(512, 128));
  W4A16_EXPECT_OK(check_group_size(512, 512));  // per-channel
  W4A16_EXPECT_OK(check_group_size(96, 96));    // per-channel needs no power of two
  for (int group : {48, 0, -1, -32, 256, 16, 1, 1024}) {
    SCOPED_TRACE("group_size " + std::to_string(group));
    W4A16_EXPECT_CODE(check_group_size(512, group), StatusCode::kUnsupportedGroupSize);
  }
  W4A16_EXPECT_CODE(check_group_size(96, 64), StatusCode::kUnsupportedGroupSize);   // k % group != 0
  W4A16_EXPECT_CODE(check_group_size(192, 128), StatusCode::kUnsupportedGroupSize);
}

// Every (group, element type, quant op): scales, zero points and codes follow quantize.h's
// definition exactly, and dequantized() is s * (q - z).
struct QuantizeCase {
  int group;  // 0 stands for k (per-channel)
  ElementType element;
  QuantOp quant;
};

class QuantizeFormats : public ::testing::TestWithParam<QuantizeCase> {};

TEST_P(QuantizeFormats, ScalesZerosCodesAndRoundingFollowTheDefinition) {
  W4A16_RANDOM(rng);
  const int n = 37, k = 512;
  const QuantizeCase param = GetParam();
  const int group = param.group == 0 ? k : param.group;
  const bool zeros = has_zeros(param.quant);
  std::vector<float> w = rng.weights(n, k);
  // One all-zero group, one group whose largest magnitude is negative, one group of positive
  // weights only (its zero point is 0) and one of negative weights only (zero point 15).
  for (int j = 0; j < group; ++j) w[size_t(5) * k + j] = 0.0f;
  w[size_t(9) * k + 3] = -3.5f;
  for (int j = 0; j < group; ++j) w[size_t(11) * k + j] = std::fabs(w[size_t(11) * k + j]) + 0.01f;
  for (int j = 0; j < group; ++j) w[size_t(12) * k + j] = -std::fabs(w[size_t(12) * k + j]) - 0.01f;

  QuantizeOptions options;
  options.group_size = group;
  options.element = param.element;
  options.quant = param.quant;
  QuantizedWeights q;
  W4A16_ASSERT_OK(quantize(w.data(), n, k, options, &q));
  ASSERT_EQ(q.n, n);
  ASSERT_EQ(q.k, k);
  ASSERT_EQ(q.group_size, group);
  ASSERT_EQ(q.element, param.element);
  ASSERT_EQ(q.quant(), param.quant);
  ASSERT_EQ(q.codes.size(), size_t(n) * k);
  ASSERT_EQ(q.scales.size(), size_t(k / group) * n);
  ASSERT_EQ(q.zeros.size(), zeros ? size_t(k / group) * n : size_t(0));

  int failures = 0;
  for (int row = 0; row < n && failures < 10; ++row) {
    for (int g = 0; g < k / group && failures < 10; ++g) {
      float lo = 0.0f, hi = 0.0f;
      for (int j = g * group; j < (g + 1) * group; ++j) {
        lo = std::min(lo, w[size_t(row) * k + j]);
        hi = std::max(hi, w[size_t(row) * k + j]);
      }
      const uint16_t stored = q.scales[size_t(g) * n + row];
      const float raw = zeros ? float((double(hi) - double(lo)) / 15.0) : std::max(hi, -lo) / 7.0f;
      const uint16_t expected = float_to_element(param.element, raw);
      if (stored != expected) {
        ADD_FAILURE() << "scale of row " << row << " group " << g << " is " << element_to_float(param.element, stored)
                      << ", expected " << to_string(param.element) << "(" << raw << ")";
        ++failures;
        continue;
      }
      const double scale = element_to_float(param.element, stored);
      double zero = 8.0;
      if (zeros) {
        zero = element_to_float(param.element, q.zeros[size_t(g) * n + row]);
        const double expected_zero = scale == 0.0 ? 0.0 : std::clamp(std::nearbyint(-lo / scale), 0.0, 15.0);
        if (zero != expected_zero) {
          ADD_FAILURE() << "zero point of row " << row << " group " << g << " is " << zero << ", expected "
                        << expected_zero;
          ++failures;
          continue;
        }
      }
      for (int j = g * group; j < (g + 1) * group; ++j) {
        const int code = q.codes[size_t(row) * k + j];
        const double value = w[size_t(row) * k + j];
        if (code < 0 || code > 15) {
          ADD_FAILURE() << "code " << code << " at [" << row << "][" << j << "] outside [0, 15]";
          ++failures;
          continue;
        }
        if (q.dequantized(row, j) != scale * (code - zero)) {
          ADD_FAILURE() << "dequantized(" << row << ", " << j << ") = " << q.dequantized(row, j) << ", not s (q - z)";
          ++failures;
        }
        if (scale == 0.0) {
          if (q.dequantized(row, j) != 0.0) {
            ADD_FAILURE() << "zero-scale group dequantizes to " << q.dequantized(row, j) << " at [" << row << "][" << j << "]";
            ++failures;
          }
          continue;
        }
        // Round to nearest with the stored scale (and zero point): error at most scale / 2 unless
        // the code was clamped (float division may be off by an ulp at exact ties), and no other
        // code is strictly closer.
        const double error = std::fabs(value - (code - zero) * scale);
        const double slack = 1e-6 * scale;
        const bool clamped = code == 0 || code == 15;
        if (error > scale / 2 + slack && !clamped) {
          ADD_FAILURE() << "[" << row << "][" << j << "]: w = " << value << ", (" << code << " - " << zero
                        << ") * scale " << scale << " is off by " << error << " > scale / 2";
          ++failures;
        }
        for (int other : {code - 1, code + 1}) {
          if (other < 0 || other > 15) continue;
          if (std::fabs(value - (other - zero) * scale) + slack < error) {
            ADD_FAILURE() << "[" << row << "][" << j << "]: code " << other << " is closer to " << value << " than "
                          << code;
            ++failures;
          }
        }
      }
    }
  }

  // The all-zero group: scale 0 and every weight 0.
  EXPECT_EQ(element_to_float(param.element, q.scales[size_t(0) * n + 5]), 0.0f);
  for (int j = 0; j < group; ++j) ASSERT_EQ(q.dequantized(5, j), 0.0) << "column " << j;
  if (!zeros) {
    // The group with -3.5: that element gets code 8 - 7 = 1.
    EXPECT_EQ(q.codes[size_t(9) * k + 3], 1);
    EXPECT_EQ(q.scales[size_t(3 / group) * n + 9], float_to_element(param.element, 3.5f / 7.0f));
  } else {
    // The range contains 0: positive-only groups get z = 0, negative-only ones z = 15.
    EXPECT_EQ(q.zero(11, 0), 0.0f);
    EXPECT_EQ(q.zero(12, 0), 15.0f);
  }
}

std::vector<QuantizeCase> quantize_cases() {
  std::vector<QuantizeCase> cases;
  for (int group : {32, 64, 128, 0})
    for (const Format& format : kAllFormats) cases.push_back({group, format.element, format.quant});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizeFormats, ::testing::ValuesIn(quantize_cases()),
                         [](const ::testing::TestParamInfo<QuantizeCase>& info) {
                           std::string name = info.param.group == 0 ? std::string("per_channel")
                                                                    : "g" + std::to_string(info.param.group);
                           name += std::string("_") + to_string(info.param.element) + "_" + to_string(info.param.quant);
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

TEST(Quantize, AllZeroWeights) {
  const int n = 16, k = 128;
  std::vector<float> w(size_t(n) * k, 0.0f);
  for (const Format& format : kAllFormats) {
    SCOPED_TRACE(format_name(format));
    QuantizedWeights q;
    W4A16_ASSERT_OK(quantize(w.data(), n, k, QuantizeOptions{64, format.element, format.quant}, &q));
    for (uint16_t s : q.scales) EXPECT_EQ(element_to_float(format.element, s), 0.0f);
    for (int row = 0; row < n; ++row)
      for (int col = 0; col < k; ++col) ASSERT_EQ(q.dequantized(row, col), 0.0);
  }
}

TEST(Quantize, FloatHalfAndBfloatInputsAgree) {
  W4A16_RANDOM(rng);
  const int n = 24, k = 256;
  for (int group : {32, 128, k}) {
    for (const Format& format : kAllFormats) {
      SCOPED_TRACE("group " + std::to_string(group) + ", " + format_name(format));
      const QuantizeOptions options{group, format.element, format.quant};
      const std::vector<float> source = rng.weights(n, k);
      std::vector<__half> h(source.size());
      std::vector<__nv_bfloat16> b(source.size());
      std::vector<float> from_h(source.size()), from_b(source.size());
      for (size_t i = 0; i < source.size(); ++i) {
        h[i] = __float2half(source[i]);
        from_h[i] = __half2float(h[i]);  // the same values, exactly
        b[i] = __float2bfloat16(source[i]);
        from_b[i] = __bfloat162float(b[i]);
      }
      QuantizedWeights float_h, half, float_b, bfloat;
      W4A16_ASSERT_OK(quantize(from_h.data(), n, k, options, &float_h));
      W4A16_ASSERT_OK(quantize(h.data(), n, k, options, &half));
      W4A16_ASSERT_OK(quantize(from_b.data(), n, k, options, &float_b));
      W4A16_ASSERT_OK(quantize(b.data(), n, k, options, &bfloat));
      EXPECT_EQ(float_h.codes, half.codes);
      EXPECT_EQ(float_h.scales, half.scales);
      EXPECT_EQ(float_h.zeros, half.zeros);
      EXPECT_EQ(float_b.codes, bfloat.codes);
      EXPECT_EQ(float_b.scales, bfloat.scales);
      EXPECT_EQ(float_b.zeros, bfloat.zeros);
    }
  }
}

// The asymmetric mode reproduces a group it can represent exactly: weights s * (q - z) for integer
// codes (both extremes present, so min/max recover s and z) come back bit for bit.
TEST(Quantize, ZeroPointsRecoverAnExactlyRepresentableGroup) {
  W4A16_RANDOM(rng);
  const int n = 16, k = 128, group = 64;
  for (ElementType element : {ElementType::kFloat16, ElementType::kBFloat16}) {
    SCOPED_TRACE(to_string(element));
    std::vector<float> w(size_t(n) * k);
    std::vector<int> zero_of(size_t(n) * (k / group));
    std::vector<float> scale_of(size_t(n) * (k / group));
    for (int row = 0; row < n; ++row) {
      for (int g = 0; g < k / group; ++g) {
        const float s = element_to_float(element, float_to_element(element, std::ldexp(1.0f, rng.uniform_int(-6, 0))));
        const int z = rng.uniform_int(1, 14);
        zero_of[size_t(row) * (k / group) + g] = z;
        scale_of[size_t(row) * (k / group) + g] = s;
        for (int j = 0; j < group; ++j) {
          const int code = j == 0 ? 0 : j == 1 ? 15 : rng.uniform_int(0, 15);
          w[size_t(row) * k + g * group + j] = s * float(code - z);
        }
      }
    }
    QuantizedWeights q;
    W4A16_ASSERT_OK(quantize(w.data(), n, k, QuantizeOptions{group, element, QuantOp::kScaleAndZeros}, &q));
    for (int row = 0; row < n; ++row)
      for (int col = 0; col < k; ++col)
        ASSERT_EQ(q.dequantized(row, col), double(w[size_t(row) * k + col])) << "[" << row << "][" << col << "]";
  }
}

TEST(Quantize, RejectsNonFiniteWeights) {
  W4A16_RANDOM(rng);
  const int n = 16, k = 128;
  const float specials[] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  for (float special : specials) {
    for (int position : {0, 1, rng.uniform_int(2, n * k - 1)}) {
      SCOPED_TRACE("weight " + std::to_string(special) + " at index " + std::to_string(position));
      std::vector<float> w = rng.weights(n, k);
      w[position] = special;
      QuantizedWeights q;
      W4A16_EXPECT_CODE(quantize(w.data(), n, k, 64, &q), StatusCode::kInvalidArgument);
      W4A16_EXPECT_CODE(quantize(w.data(), n, k, QuantizeOptions{64, ElementType::kBFloat16, QuantOp::kScaleAndZeros}, &q),
                        StatusCode::kInvalidArgument);
      std::vector<__half> h(w.size());
      for (size_t i = 0; i < w.size(); ++i) h[i] = __float2half(w[i]);
      W4A16_EXPECT_CODE(quantize(h.data(), n, k, 64, &q), StatusCode::kInvalidArgument);
    }
  }
}

TEST(Quantize, RejectsWeightsBeyondTheFp16ScaleRangeButNotBf16) {
  W4A16_RANDOM(rng);
  const int n = 16, k = 64;
  std::vector<float> w = rng.weights(n, k);
  w[rng.uniform_int(0, n * k - 1)] = 5.0e5f;  // scale 5e5 / 7 > 65504: not an fp16
  QuantizedWeights q;
  W4A16_EXPECT_CODE(quantize(w.data(), n, k, 32, &q), StatusCode::kInvalidArgument);
  // Zero points: the scale spans (max - min) / 15, so only a range beyond 15 * 65504 overflows.
  W4A16_EXPECT_OK(quantize(w.data(), n, k, QuantizeOptions{32, ElementType::kFloat16, QuantOp::kScaleAndZeros}, &q));
  w[rng.uniform_int(0, n * k - 1)] = -1.0e6f;
  W4A16_EXPECT_CODE(quantize(w.data(), n, k, QuantizeOptions{32, ElementType::kFloat16, QuantOp::kScaleAndZeros}, &q),
                    StatusCode::kInvalidArgument);
  // bf16 has fp32's exponent range.
  W4A16_EXPECT_OK(quantize(w.data(), n, k, QuantizeOptions{32, ElementType::kBFloat16, QuantOp::kScaleOnly}, &q));
}

TEST(Quantize, RejectsBadArguments) {
  W4A16_RANDOM(rng);
  const int n = 16, k = 512;
  const std::vector<float> w = rng.weights(n, k);
  QuantizedWeights q;
  for (int group : {48, 0, -1, 256, 1024}) {
    SCOPED_TRACE("group " + std::to_string(group));
    W4A16_EXPECT_CODE(quantize(w.data(), n, k, group, &q), StatusCode::kUnsupportedGroupSize);
  }
  // k not a multiple of the group.
  W4A16_EXPECT_CODE(quantize(w.data(), n, 96, 64, &q), StatusCode::kUnsupportedGroupSize);
  W4A16_EXPECT_CODE(quantize(w.data(), n, 320, 128, &q), StatusCode::kUnsupportedGroupSize);
  // Null pointers, non-positive sizes, unknown enums.
  W4A16_EXPECT_CODE(quantize(static_cast<const float*>(nullptr), n, k, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(static_cast<const __half*>(nullptr), n, k, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(static_cast<const __nv_bfloat16*>(nullptr), n, k, QuantizeOptions{}, &q),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), n, k, 64, nullptr), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), 0, k, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), -16, k, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), n, 0, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), n, -64, 64, &q), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), n, k, QuantizeOptions{64, static_cast<ElementType>(7), QuantOp::kScaleOnly}, &q),
                    StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(quantize(w.data(), n, k, QuantizeOptions{64, ElementType::kFloat16, static_cast<QuantOp>(9)}, &q),
                    StatusCode::kInvalidArgument);
}

// kScaleAndZeros' zero points are whole numbers 0..15; check_integer_zeros names the first that is
// not, in either element type.
TEST(Quantize, CheckIntegerZerosNamesTheFirstFractionalOrOutOfRange) {
  W4A16_RANDOM(rng);
  for (ElementType element : {ElementType::kFloat16, ElementType::kBFloat16}) {
    std::vector<uint16_t> zeros(300);
    for (auto& z : zeros) z = float_to_element(element, float(rng.uniform_int(0, kMaxCode)));
    W4A16_EXPECT_OK(check_integer_zeros(zeros.data(), zeros.size(), element));
    const int at = rng.uniform_int(0, 299);
    for (float bad : {0.5f, 7.25f, -1.0f, 16.0f, std::numeric_limits<float>::quiet_NaN()}) {
      std::vector<uint16_t> broken = zeros;
      broken[size_t(at)] = float_to_element(element, bad);
      const Status s = check_integer_zeros(broken.data(), broken.size(), element);
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
      EXPECT_NE(s.message().find("zero point " + std::to_string(at) + " "), std::string::npos) << s.message();
    }
  }
  // Whatever quantize() makes passes, for either zero-point op, and the op is kept.
  const std::vector<float> w = rng.weights(32, 256);
  for (QuantOp op : {QuantOp::kScaleAndZeros, QuantOp::kScaleAndFloatZeros}) {
    QuantizedWeights q;
    W4A16_ASSERT_OK(quantize(w.data(), 32, 256, QuantizeOptions{64, ElementType::kBFloat16, op}, &q));
    EXPECT_EQ(q.quant(), op);
    W4A16_EXPECT_OK(check_integer_zeros(q.zeros.data(), q.zeros.size(), q.element));
  }
}

TEST(Format, NamesAndConversions) {
  EXPECT_STREQ(format_name({ElementType::kFloat16, QuantOp::kScaleOnly}), "fp16");
  EXPECT_STREQ(format_name({ElementType::kFloat16, QuantOp::kScaleAndZeros}), "fp16+zeros");
  EXPECT_STREQ(format_name({ElementType::kBFloat16, QuantOp::kScaleOnly}), "bf16");
  EXPECT_STREQ(format_name({ElementType::kBFloat16, QuantOp::kScaleAndZeros}), "bf16+zeros");
  EXPECT_STREQ(format_name({ElementType::kFloat16, QuantOp::kScaleAndFloatZeros}), "fp16+float-zeros");
  EXPECT_STREQ(format_name({ElementType::kBFloat16, QuantOp::kScaleAndFloatZeros}), "bf16+float-zeros");
  EXPECT_STREQ(format_name({ElementType::kFloat16, static_cast<QuantOp>(7)}), "unknown");
  // Round to nearest even; integers up to 256 are exact in both types.
  for (ElementType element : {ElementType::kFloat16, ElementType::kBFloat16}) {
    for (int i = -256; i <= 256; ++i) EXPECT_EQ(element_to_float(element, float_to_element(element, float(i))), float(i));
  }
  EXPECT_EQ(float_to_element(ElementType::kBFloat16, 1.0f), 0x3F80);
  EXPECT_EQ(float_to_element(ElementType::kFloat16, 1.0f), 0x3C00);
  EXPECT_EQ(element_to_float(ElementType::kBFloat16, float_to_element(ElementType::kBFloat16, 3e4f)), 29952.0f);
  EXPECT_TRUE(std::isinf(element_to_float(ElementType::kFloat16, float_to_element(ElementType::kFloat16, 7e4f))));
  EXPECT_EQ(element_to_float(ElementType::kBFloat16, float_to_element(ElementType::kBFloat16, 1.0f + 1.0f / 256)), 1.0f);
}

// =============================================================================================
// pack / unpack

TEST(Pack, RoundTripIsExact) {
  W4A16_RANDOM(rng);
  const std::pair<int, int> shapes[] = {{16, 64}, {48, 192}, {4096, 128}, {32, 4096}, {272, 1088}, {80, 640}};
  for (const auto& [n, k] : shapes) {
    SCOPED_TRACE("n = " + std::to_string(n) + ", k = " + std::to_string(k));
    const std::vector<uint8_t> codes = rng.codes(size_t(n) * k);
    std::vector<uint8_t> packed;
    W4A16_ASSERT_OK(pack_weights(codes.data(), n, k, &packed));
    ASSERT_EQ(packed.size(), size_t(n) * k / 2);
    ASSERT_EQ(packed_weight_bytes(n, k), size_t(n) * k / 2);
    std::vector<uint8_t> unpacked;
    W4A16_ASSERT_OK(unpack_weights(packed.data(), n, k, &unpacked));
    ASSERT_EQ(unpacked.size(), codes.size());
    for (size_t i = 0; i < codes.size(); ++i)
      ASSERT_EQ(int(unpacked[i]), int(codes[i])) << "code [" << i / k << "][" << i % k << "]";
  }
}

TEST(Pack, QuantizedWeightsOverloadMatchesCodes) {
  W4A16_RANDOM(rng);
  const int n = 48, k = 256;
  const std::vector<float> w = rng.weights(n, k);
  QuantizedWeights q;
  W4A16_ASSERT_OK(quantize(w.data(), n, k, 64, &q));
  std::vector<uint8_t> from_struct, from_codes;
  W4A16_ASSERT_OK(pack_weights(q, &from_struct));
  W4A16_ASSERT_OK(pack_weights(q.codes.data(), n, k, &from_codes));
  EXPECT_EQ(from_struct, from_codes);

  q.codes.pop_back();  // codes no longer n * k
  W4A16_EXPECT_CODE(pack_weights(q, &from_struct), StatusCode::kInvalidArgument);
}

// Where the documented layout (src/common/packed_layout.h) puts code W[row][col], derived here from the
// text of the documentation, independently of nibble_position():
//   tile (row / 16, col / 64) at byte ((row / 16) * (k / 64) + col / 64) * 512; in the tile, r = row % 16,
//   c = col % 64: word c / 16; within the 16-wide slice cc = c % 16, fragment register
//   a_i with i = (r >= 8) + 2 * (cc >= 8), lane = 4 * (r % 8) + (cc % 8) / 2, low/high half = cc % 2,
//   slot = i + 4 * half; byte = lane * 16 + word * 4 + slot / 2, high nibble when slot is odd.
struct NibbleAddress {
  size_t byte;
  int shift;  // 0: low nibble, 4: high nibble
};
NibbleAddress documented_address(int row, int col, int k) {
  const int r = row % 16, c = col % 64;
  const size_t tile = (size_t(row / 16) * (k / 64) + col / 64) * 512;
  const int word = c / 16, cc = c % 16;
  const int reg = (r >= 8 ? 1 : 0) + (cc >= 8 ? 2 : 0);
  const int lane = 4 * (r % 8) + (cc % 8) / 2;
  const int slot = reg + 4 * (cc % 2);
  return {tile + size_t(lane) * 16 + size_t(word) * 4 + size_t(slot / 2), (slot % 2) * 4};
}

TEST(PackedLayout, NibblePositionIsABijectionMatchingTheDocumentation) {
  std::set<std::pair<int, int>> seen;
  for (int lane = 0; lane < 32; ++lane) {
    for (int word = 0; word < 4; ++word) {
      for (int slot = 0; slot < 8; ++slot) {
        const layout::TilePosition p = layout::nibble_position(lane, word, slot);
        ASSERT_GE(p.row, 0);
        ASSERT_LT(p.row, layout::kTileRows);
        ASSERT_GE(p.col, 0);
        ASSERT_LT(p.col, layout::kTileCols);
        EXPECT_TRUE(seen.insert({p.row, p.col}).second) << "position (" << p.row << ", " << p.col << ") twice";
        const NibbleAddress a = documented_address(p.row, p.col, 64);
        EXPECT_EQ(a.byte, size_t(lane) * 16 + size_t(word) * 4 + size_t(slot / 2))
            << "lane " << lane << " word " << word << " slot " << slot;
        EXPECT_EQ(a.shift, (slot % 2) * 4) << "lane " << lane << " word " << word << " slot " << slot;
      }
    }
  }
  EXPECT_EQ(seen.size(), size_t(16 * 64));
  // Hand-checked against the table in packed_layout.h: lane 0 / word 0 holds a0 = (W[0][0], W[0][1]),
  // a1 = (W[8][0], W[8][1]), a2 = (W[0][8], W[0][9]), a3 = (W[8][8], W[8][9]) in slots 0..3 (.x), 4..7 (.y).
  const int expected[8][2] = {{0, 0}, {8, 0}, {0, 8}, {8, 8}, {0, 1}, {8, 1}, {0, 9}, {8, 9}};
  for (int slot = 0; slot < 8; ++slot) {
    const layout::TilePosition p = layout::nibble_position(0, 0, slot);
    EXPECT_EQ(p.row, expected[slot][0]) << "slot " << slot;
    EXPECT_EQ(p.col, expected[slot][1]) << "slot " << slot;
  }
  const layout::TilePosition p = layout::nibble_position(/*lane=*/31, /*word=*/3, /*slot=*/7);  // r = 7, c = 6
  EXPECT_EQ(p.row, 15);
  EXPECT_EQ(p.col, 63);
  // Tiles run along k first, 512 bytes each.
  EXPECT_EQ(layout::tile_offset_bytes(0, 0, 256), 0);
  EXPECT_EQ(layout::tile_offset_bytes(0, 3, 256), 3 * 512);
  EXPECT_EQ(layout::tile_offset_bytes(2, 1, 256), (2 * 4 + 1) * 512);
}

TEST(PackedLayout, SingleCodeLandsInTheDocumentedNibble) {
  W4A16_RANDOM(rng);
  const int n = 48, k = 192;
  struct Case {
    int row, col;
    long long byte;  // computed by hand from the documentation, -1: from documented_address()
    int shift;
  };
  const Case cases[] = {
      {0, 0, 0, 0},                     // lane 0, word 0, slot 0
      {0, 1, 2, 0},                     // slot 4 (a0.y)
      {8, 0, 0, 4},                     // slot 1 (a1.x)
      {0, 8, 1, 0},                     // slot 2 (a2.x)
      {1, 2, 5 * 16, 0},                // lane 5 (r = 1, c = 2)
      {0, 16, 4, 0},                    // word 1
      {15, 63, 511, 4},                 // lane 31, word 3, slot 7
      {0, 64, 512, 0},                  // second k tile
      {16, 0, 3 * 512, 0},              // second row block: after k / 64 = 3 tiles
      {47, 191, 8 * 512 + 511, 4},      // last nibble of the buffer
      {9, 10, -1, 0},
      {rng.uniform_int(0, n - 1), rng.uniform_int(0, k - 1), -1, 0},
      {rng.uniform_int(0, n - 1), rng.uniform_int(0, k - 1), -1, 0},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("W[" + std::to_string(c.row) + "][" + std::to_string(c.col) + "]");
    NibbleAddress want = documented_address(c.row, c.col, k);
    if (c.byte >= 0) {
      ASSERT_EQ(want.byte, size_t(c.byte)) << "test's own derivation disagrees with the hand-computed value";
      ASSERT_EQ(want.shift, c.shift);
    }
    // The same address through the library's layout functions.
    {
      const int r = c.row % 16, col = c.col % 64;
      bool found = false;
      for (int lane = 0; lane < 32 && !found; ++lane)
        for (int word = 0; word < 4 && !found; ++word)
          for (int slot = 0; slot < 8 && !found; ++slot) {
            const layout::TilePosition p = layout::nibble_position(lane, word, slot);
            if (p.row == r && p.col == col) {
              found = true;
              const size_t byte = size_t(layout::tile_offset_bytes(c.row / 16, c.col / 64, k)) + size_t(lane) * 16 +
                                  size_t(word) * 4 + size_t(slot / 2);
              EXPECT_EQ(byte, want.byte);
              EXPECT_EQ((slot % 2) * 4, want.shift);
            }
          }
      EXPECT_TRUE(found);
    }
    // Pack all 8s with one code changed: exactly that nibble changes.
    for (int code : {0, 7, 11, 15}) {
      std::vector<uint8_t> codes(size_t(n) * k, 8);
      codes[size_t(c.row) * k + c.col] = uint8_t(code);
      std::vector<uint8_t> packed;
      W4A16_ASSERT_OK(pack_weights(codes.data(), n, k, &packed));
      ASSERT_EQ(packed.size(), size_t(n) * k / 2);
      std::vector<size_t> changed;
      for (size_t i = 0; i < packed.size(); ++i)
        if (packed[i] != 0x88) changed.push_back(i);
      ASSERT_EQ(changed.size(), 1u) << "code " << code;
      EXPECT_EQ(changed[0], want.byte) << "code " << code;
      const uint8_t expected_byte = want.shift == 0 ? uint8_t(0x80 | code) : uint8_t((code << 4) | 0x8);
      EXPECT_EQ(int(packed[want.byte]), int(expected_byte)) << "code " << code;
    }
  }
}

TEST(Pack, RejectsBadArguments) {
  W4A16_RANDOM(rng);
  std::vector<uint8_t> packed;
  std::vector<uint8_t> codes = rng.codes(size_t(64) * 256);
  // Shapes the layout cannot hold.
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 8, 64, &packed), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 24, 64, &packed), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 16, 96, &packed), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 16, 32, &packed), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 0, 64, &packed), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 16, 0, &packed), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), -16, 64, &packed), StatusCode::kInvalidArgument);
  // Null pointers.
  W4A16_EXPECT_CODE(pack_weights(static_cast<const uint8_t*>(nullptr), 16, 64, &packed), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(pack_weights(codes.data(), 16, 64, nullptr), StatusCode::kInvalidArgument);
  // Codes outside [0, 15], anywhere.
  for (int bad : {16, 17, 127, 255}) {
    std::vector<uint8_t> c = codes;
    c[size_t(rng.uniform_int(0, 64 * 256 - 1))] = uint8_t(bad);
    SCOPED_TRACE("code " + std::to_string(bad));
    W4A16_EXPECT_CODE(pack_weights(c.data(), 64, 256, &packed), StatusCode::kInvalidArgument);
  }
  // unpack: same shape rules and null checks.
  std::vector<uint8_t> bytes(size_t(64) * 256 / 2, 0x88);
  std::vector<uint8_t> out;
  W4A16_EXPECT_CODE(unpack_weights(bytes.data(), 8, 64, &out), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(unpack_weights(bytes.data(), 16, 96, &out), StatusCode::kUnsupportedShape);
  W4A16_EXPECT_CODE(unpack_weights(bytes.data(), 0, 64, &out), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(unpack_weights(nullptr, 16, 64, &out), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(unpack_weights(bytes.data(), 16, 64, nullptr), StatusCode::kInvalidArgument);
}

// =============================================================================================
// reference_gemm

// Naive triple loop straight from the definition, on the raw codes, scales and zero points.
std::vector<double> naive_gemm(const std::vector<uint16_t>& a, int m, const QuantizedWeights& w,
                               const std::vector<uint16_t>* bias, float alpha) {
  const ElementType e = w.element;
  std::vector<double> c(size_t(m) * w.n);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < w.n; ++j) {
      long double sum = 0;
      for (int t = 0; t < w.k; ++t) {
        const size_t g = size_t(t / w.group_size) * w.n + j;
        const long double zero = w.zeros.empty() ? 8.0L : (long double)element_to_float(e, w.zeros[g]);
        const long double weight =
            ((long double)w.codes[size_t(j) * w.k + t] - zero) * (long double)element_to_float(e, w.scales[g]);
        sum += (long double)element_to_float(e, a[size_t(i) * w.k + t]) * weight;
      }
      long double value = (long double)alpha * sum;
      if (bias != nullptr) value += (long double)element_to_float(e, (*bias)[j]);
      c[size_t(i) * w.n + j] = double(value);
    }
  }
  return c;
}

TEST(Reference, MatchesNaiveTripleLoop) {
  W4A16_RANDOM(rng);
  struct Shape {
    int m, n, k, group;
    bool bias;
    float alpha;
  };
  const Shape shapes[] = {
      {5, 16, 64, 32, true, 1.0f},    {3, 7, 96, 96, true, -0.75f}, {1, 33, 128, 64, false, 1.0f},
      {4, 48, 256, 128, true, 1.5f}, {7, 19, 160, 32, false, 0.3f},
  };
  for (const Shape& s : shapes) {
   for (const Format& format : kAllFormats) {
    SCOPED_TRACE("m " + std::to_string(s.m) + " n " + std::to_string(s.n) + " k " + std::to_string(s.k) + " group " +
                 std::to_string(s.group) + (s.bias ? " bias" : "") + " alpha " + std::to_string(s.alpha) + " " +
                 format_name(format));
    const std::vector<float> w = rng.weights(s.n, s.k);
    QuantizedWeights q;
    W4A16_ASSERT_OK(quantize(w.data(), s.n, s.k, QuantizeOptions{s.group, format.element, format.quant}, &q));
    if (format.quant == QuantOp::kScaleAndFloatZeros) {
      // Fractional zero points (HQQ-style) are part of the definition too.
      for (auto& z : q.zeros) z = float_to_element(format.element, element_to_float(format.element, z) + 0.375f);
    }
    const std::vector<uint16_t> a = rng.elements(format.element, size_t(s.m) * s.k, -1.0f, 1.0f);
    const std::vector<uint16_t> bias = rng.elements(format.element, size_t(s.n), -1.0f, 1.0f);
    std::vector<double> got;
    ASSERT_TRUE(reference_gemm(a.data(), s.m, q, s.bias ? bias.data() : nullptr, s.alpha, {}, &got).ok());
    const std::vector<double> want = naive_gemm(a, s.m, q, s.bias ? &bias : nullptr, s.alpha);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      // Both in (at least) double; the only difference is rounding of the double accumulation.
      EXPECT_NEAR(got[i], want[i], 1e-12 * (1.0 + std::fabs(want[i]) + s.k)) << "C[" << i / s.n << "][" << i % s.n << "]";
    }
   }
  }
}

TEST(Reference, RowSamplingReturnsTheSameRows) {
  W4A16_RANDOM(rng);
  const int m = 5, n = 32, k = 128;
  const std::vector<float> w = rng.weights(n, k);
  QuantizedWeights q;
  W4A16_ASSERT_OK(quantize(w.data(), n, k, 32, &q));
  const std::vector<__half> a = rng.halves(size_t(m) * k, -1.0f, 1.0f);
  const std::vector<__half> bias = rng.halves(size_t(n), -1.0f, 1.0f);
  const float alpha = rng.alpha();
  std::vector<double> full;
  ASSERT_TRUE(reference_gemm(a.data(), m, q, bias.data(), alpha, {}, &full).ok());
  ASSERT_EQ(full.size(), size_t(m) * n);
  for (const std::vector<int>& rows : {std::vector<int>{2, 0}, std::vector<int>{4}, std::vector<int>{1, 1, 3}}) {
    std::vector<double> sampled;
    ASSERT_TRUE(reference_gemm(a.data(), m, q, bias.data(), alpha, rows, &sampled).ok());
    ASSERT_EQ(sampled.size(), rows.size() * n);
    for (size_t r = 0; r < rows.size(); ++r)
      for (int j = 0; j < n; ++j)
        ASSERT_EQ(sampled[r * n + j], full[size_t(rows[r]) * n + j]) << "sampled row " << r << " (row " << rows[r]
                                                                      << "), column " << j;
  }
}

TEST(Reference, RejectsBadInput) {
  W4A16_RANDOM(rng);
  const int m = 3, n = 16, k = 64;
  const std::vector<float> w = rng.weights(n, k);
  QuantizedWeights q;
  W4A16_ASSERT_OK(quantize(w.data(), n, k, 32, &q));
  const std::vector<__half> a = rng.halves(size_t(m) * k, -1.0f, 1.0f);
  std::vector<double> c;
  W4A16_EXPECT_CODE(reference_gemm(static_cast<const __half*>(nullptr), m, q, nullptr, 1.0f, {}, &c), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, q, nullptr, 1.0f, {}, nullptr), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(reference_gemm(a.data(), 0, q, nullptr, 1.0f, {}, &c), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, q, nullptr, 1.0f, {m}, &c), StatusCode::kInvalidArgument);
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, q, nullptr, 1.0f, {-1}, &c), StatusCode::kInvalidArgument);
  QuantizedWeights no_group = q;
  no_group.group_size = 0;
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, no_group, nullptr, 1.0f, {}, &c), StatusCode::kUnsupportedGroupSize);
  QuantizedWeights short_codes = q;
  short_codes.codes.pop_back();
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, short_codes, nullptr, 1.0f, {}, &c), StatusCode::kInvalidArgument);
  QuantizedWeights short_zeros = q;
  short_zeros.zeros.assign(q.scales.size() - 1, 0);
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, short_zeros, nullptr, 1.0f, {}, &c), StatusCode::kInvalidArgument);
  QuantizedWeights bf16 = q;
  bf16.element = ElementType::kBFloat16;  // __half activations with bf16 scales
  W4A16_EXPECT_CODE(reference_gemm(a.data(), m, bf16, nullptr, 1.0f, {}, &c), StatusCode::kInvalidArgument);
}

// =============================================================================================
// The warp-specialized kernel's scale boxes (kernels/fused/warp_specialized/tensor_maps.h): the group rows a
// box of k-blocks spans, which its slots' byte count and scale offsets rely on.

TEST(TensorMaps, ScaleRowsPerBoxCoverTheBoxColumns) {
  // One k-block (64 columns): two rows for group 32, else one.
  EXPECT_EQ(fused::scale_rows_per_box(32, 1), 2);
  EXPECT_EQ(fused::scale_rows_per_box(64, 1), 1);
  EXPECT_EQ(fused::scale_rows_per_box(128, 1), 1);
  // Two k-blocks (a warp-specialized slot, 128 columns starting on a multiple of 128).
  EXPECT_EQ(fused::scale_rows_per_box(32, 2), 4);
  EXPECT_EQ(fused::scale_rows_per_box(64, 2), 2);
  EXPECT_EQ(fused::scale_rows_per_box(128, 2), 1);
  EXPECT_EQ(fused::scale_rows_per_box(4096, 2), 1);  // per-channel
  EXPECT_EQ(fused::scale_rows_per_box(1088, 2), 1);  // per-channel, k not a power of two
  // Every column of the box has its group's row: group of column c relative to the box's first
  // group is c / group, below the row count.
  for (int group : {32, 64, 128, 256, 1088})
    for (int k_blocks : {1, 2}) {
      const int rows = fused::scale_rows_per_box(group, k_blocks);
      for (int column = 0; column < 64 * k_blocks; ++column) EXPECT_LT(column / group, rows) << group;
    }
}

// =============================================================================================
// KernelConfig names

KernelConfig ms_config(int tile_m, int tile_n, int warps_m, int warps_n, int warps_k, int stages, int split_k) {
  KernelConfig c;
  c.family = KernelFamily::kMultistage;
  c.tile_m = tile_m;
  c.tile_n = tile_n;
  c.warps_m = warps_m;
  c.warps_n = warps_n;
  c.warps_k = warps_k;
  c.stages = stages;
  c.split_k = split_k;
  return c;
}

TEST(KernelConfigName, RoundTrips) {
  const KernelConfig ms = ms_config(16, 128, 1, 4, 1, 8, 4);
  const std::string name = ms.name();
  EXPECT_EQ(name.rfind("ms_m16n128_w1x4", 0), 0u) << name;
  EXPECT_EQ(name.substr(name.size() - 6), "_s8_k4") << name;
  KernelConfig parsed;
  ASSERT_TRUE(parse_kernel_config(name, &parsed)) << name;
  EXPECT_EQ(parsed, ms);
  EXPECT_EQ(parsed.family, KernelFamily::kMultistage);
  EXPECT_EQ(parsed.name(), name);
  // The streaming family: same fields, its own prefix, and the family is part of the identity.
  KernelConfig st = ms;
  st.family = KernelFamily::kStreaming;
  EXPECT_EQ(st.name(), "st" + name.substr(2));
  EXPECT_NE(st, ms);
  ASSERT_TRUE(parse_kernel_config(st.name(), &parsed)) << st.name();
  EXPECT_EQ(parsed, st);
  EXPECT_TRUE(parsed.fused());
  EXPECT_FALSE(parse_kernel_config("s_" + name.substr(2), &parsed));
  // And the warp-specialized wgmma family.
  KernelConfig ws = ms;
  ws.family = KernelFamily::kWarpSpecialized;
  EXPECT_EQ(ws.name(), "ws" + name.substr(2));
  EXPECT_NE(ws, ms);
  EXPECT_NE(ws, st);
  ASSERT_TRUE(parse_kernel_config(ws.name(), &parsed)) << ws.name();
  EXPECT_EQ(parsed, ws);
  EXPECT_TRUE(parsed.fused());
  EXPECT_STREQ(to_string(KernelFamily::kWarpSpecialized), "warp_specialized");
  EXPECT_FALSE(parse_kernel_config("wg" + name.substr(2), &parsed));  // the retired multistage wgmma family

  // Every field is part of the name: changing any one changes the name, and each name parses back.
  std::vector<KernelConfig> variants = {ms,
                                        ms_config(128, 256, 2, 4, 1, 3, 16),
                                        ms_config(8, 128, 1, 4, 1, 8, 4),
                                        ms_config(16, 64, 1, 4, 1, 8, 4),
                                        ms_config(16, 128, 2, 4, 1, 8, 4),
                                        ms_config(16, 128, 1, 8, 1, 8, 4),
                                        ms_config(16, 128, 1, 4, 1, 6, 4),
                                        ms_config(16, 128, 1, 4, 1, 8, 1),
                                        ms_config(16, 128, 1, 4, 2, 8, 4)};
  std::set<std::string> names;
  for (const KernelConfig& v : variants) {
    SCOPED_TRACE(v.name());
    EXPECT_TRUE(names.insert(v.name()).second) << "two configs share a name";
    KernelConfig back;
    ASSERT_TRUE(parse_kernel_config(v.name(), &back));
    EXPECT_EQ(back, v);
    EXPECT_EQ(back.name(), v.name());
  }
  EXPECT_NE(variants[0], variants[7]);  // split_k matters

  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  EXPECT_EQ(dequant.name(), "dequant_cublas");
  ASSERT_TRUE(parse_kernel_config("dequant_cublas", &parsed));
  EXPECT_EQ(parsed.family, KernelFamily::kDequantCublas);
  EXPECT_EQ(parsed, dequant);
  // For dequant_cublas only the family matters.
  KernelConfig dequant_with_fields = dequant;
  dequant_with_fields.tile_m = 64;
  EXPECT_EQ(dequant_with_fields, dequant);
  EXPECT_NE(dequant, ms);
  // ... and which cuBLAS algorithm: cublasGemmEx (0) or cuBLASLt's r-th candidate.
  KernelConfig lt = dequant;
  lt.dense_algorithm = 3;
  EXPECT_EQ(lt.name(), "dequant_cublas_lt3");
  EXPECT_NE(lt, dequant);
  ASSERT_TRUE(parse_kernel_config("dequant_cublas_lt3", &parsed));
  EXPECT_EQ(parsed, lt);
  EXPECT_EQ(parsed.dense_algorithm, 3);
  ASSERT_TRUE(parse_kernel_config("dequant_cublas_lt12", &parsed));
  EXPECT_EQ(parsed.name(), "dequant_cublas_lt12");
  KernelConfig ms_with_algorithm = ms;  // a fused config ignores it
  ms_with_algorithm.dense_algorithm = 3;
  EXPECT_EQ(ms_with_algorithm, ms);

  EXPECT_STREQ(to_string(KernelFamily::kMultistage), "multistage");
  EXPECT_STREQ(to_string(KernelFamily::kDequantCublas), "dequant_cublas");
  EXPECT_STREQ(to_string(KernelFamily::kStreaming), "streaming");
}

TEST(KernelConfigName, ParseRejectsGarbage) {
  const std::string good = ms_config(16, 128, 1, 4, 1, 8, 4).name();  // "ms_m16n128_..._s8_k4"
  KernelConfig untouched;
  untouched.tile_m = 12345;
  const std::string bad_names[] = {"",
                                   "garbage",
                                   "tc",
                                   "tc" + good.substr(2),  // the multistage family's old prefix
                                   "ms_m16n128",
                                   good.substr(0, good.size() - 3),  // "_k4" cut off
                                   good.substr(0, good.size() - 1),  // "_k" without its number
                                   good + "x",
                                   good + " ",
                                   good + "_",
                                   good + "0x",
                                   " " + good,
                                   good.substr(0, good.size() - 1) + "x",
                                   "ms_mxn128" + good.substr(10),
                                   "dequant_cublas ",
                                   "dequant_cublas2",
                                   "dequant_cublas_lt",
                                   "dequant_cublas_lt0",
                                   "dequant_cublas_lt03",
                                   "dequant_cublas_lt-1",
                                   "dequant_cublas_lt+1",
                                   "dequant_cublas_lt1 ",
                                   "dequant_cublas_lt1x",
                                   "dequant_cublas_lt100",
                                   "DEQUANT_CUBLAS",
                                   "dequant"};
  for (const std::string& name : bad_names) {
    SCOPED_TRACE("'" + name + "'");
    KernelConfig config = untouched;
    EXPECT_FALSE(parse_kernel_config(name, &config));
    EXPECT_EQ(config.tile_m, 12345) << "a failed parse must leave the config alone";
  }
  EXPECT_FALSE(parse_kernel_config("dequant_cublas", nullptr));
  EXPECT_FALSE(parse_kernel_config(good, nullptr));
}

// A name parses only if it is exactly what name() prints: no whitespace, signs or leading zeros in
// the numbers (sscanf's %d would take them).
TEST(KernelConfigName, ParseAcceptsOnlyCanonicalNames) {
  const std::string good = ms_config(16, 128, 1, 4, 1, 8, 4).name();
  ASSERT_EQ(good.rfind("ms_m16", 0), 0u) << good;
  const std::string rest = good.substr(6);  // after "ms_m16"
  const std::string last_digit_cut = good.substr(0, good.size() - 1);
  for (const std::string& name : {"ms_m 16" + rest, "ms_m+16" + rest, "ms_m016" + rest, "ms_m-16" + rest,
                                  last_digit_cut + "\n" + good.substr(good.size() - 1),
                                  last_digit_cut + " " + good.substr(good.size() - 1)}) {
    SCOPED_TRACE("'" + name + "'");
    KernelConfig config;
    const bool parsed = parse_kernel_config(name, &config);
    EXPECT_FALSE(parsed) << "accepted as " << config.name();
  }
}

// =============================================================================================
// Status

TEST(StatusTest, ToString) {
  const std::pair<StatusCode, const char*> names[] = {
      {StatusCode::kSuccess, "success"},
      {StatusCode::kInvalidArgument, "invalid argument"},
      {StatusCode::kMisalignedPointer, "misaligned pointer"},
      {StatusCode::kUnsupportedShape, "unsupported shape"},
      {StatusCode::kUnsupportedGroupSize, "unsupported group size"},
      {StatusCode::kWorkspaceTooSmall, "workspace too small"},
      {StatusCode::kUnsupportedArch, "unsupported architecture"},
      {StatusCode::kNoDevice, "no device"},
      {StatusCode::kCudaError, "CUDA error"},
      {StatusCode::kCublasError, "cuBLAS error"},
  };
  std::set<std::string> distinct;
  for (const auto& [code, name] : names) {
    EXPECT_STREQ(to_string(code), name);
    distinct.insert(to_string(code));
  }
  EXPECT_EQ(distinct.size(), std::size(names));

  const Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_TRUE(bool(ok));
  EXPECT_EQ(ok.code(), StatusCode::kSuccess);
  EXPECT_EQ(ok.to_string(), "success");
  EXPECT_TRUE(Status::success().ok());

  const Status bad(StatusCode::kWorkspaceTooSmall, "needs 42 bytes");
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(bool(bad));
  EXPECT_EQ(bad.code(), StatusCode::kWorkspaceTooSmall);
  EXPECT_EQ(bad.message(), "needs 42 bytes");
  EXPECT_EQ(bad.to_string(), "workspace too small: needs 42 bytes");
}

// =============================================================================================
// Heuristic (src/runner/heuristics.cpp), against a synthetic config list that contains every tile the
// table could name, so that the properties below hold whatever the table says.

std::vector<KernelConfig> every_config(bool with_dequant, bool with_warp_specialized = false,
                                       bool with_streaming = false) {
  std::vector<KernelConfig> all;
  for (int tile_m : {8, 16, 32, 64, 128, 256})
    for (int tile_n : {16, 32, 64, 128, 256})
      for (int warps_m : {1, 2, 4})
        for (int warps_n : {1, 2, 4, 8})
          for (int warps_k : {1, 2, 4, 8, 16})
            for (int stages = 2; stages <= 10; ++stages)
              for (int split : heuristics::split_k_choices()) {
                all.push_back(ms_config(tile_m, tile_n, warps_m, warps_n, warps_k, stages, split));
                const KernelConfig ms = all.back();
                if (with_warp_specialized && warps_k == 1) {
                  all.push_back(ms);
                  all.back().family = KernelFamily::kWarpSpecialized;
                }
                if (with_streaming && warps_m == 1) {
                  all.push_back(ms);
                  all.back().family = KernelFamily::kStreaming;
                }
              }
  if (with_dequant) {
    KernelConfig c;
    c.family = KernelFamily::kDequantCublas;
    all.push_back(c);
  }
  return all;
}

TEST(Heuristics, ChoicesAreValidForTheProblem) {
  const std::vector<int>& splits = heuristics::split_k_choices();
  ASSERT_FALSE(splits.empty());
  EXPECT_EQ(splits.front(), 1);
  for (const bool with_hopper : {false, true}) {
    SCOPED_TRACE(with_hopper ? "with the ws and streaming tiles" : "without the ws and streaming tiles");
    const std::vector<KernelConfig> available = every_config(true, with_hopper, /*with_streaming=*/with_hopper);
    const std::pair<int, int> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {80, 192},
                                          {1040, 320},  {272, 1088},   {16, 64},      {128, 65536}};
    for (const heuristics::DeviceTraits device : {heuristics::DeviceTraits{80, 108}, heuristics::DeviceTraits{90, 132},
                                                  heuristics::DeviceTraits{86, 84}}) {
      for (const auto& [n, k] : shapes) {
        int previous_tile_m = 0;
        for (int m : {1, 2, 3, 8, 9, 16, 17, 31, 33, 64, 65, 127, 128, 129, 511, 512, 1000, 4096, 65536}) {
          SCOPED_TRACE("sm_" + std::to_string(device.sm_version) + " x" + std::to_string(device.sm_count) + ": m " +
                       std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k));
          const KernelConfig c = heuristics::choose(m, n, k, device, available);
          ASSERT_NE(std::find(available.begin(), available.end(), c), available.end()) << c.name();
          if (c.family == KernelFamily::kDequantCublas) {
            EXPECT_GE(device.sm_version, 90) << "dequant_cublas chosen although a tensor-core tile was available";
            continue;
          }
          // What check() demands: split_k a listed choice and no larger than the k / 64 k-blocks.
          EXPECT_NE(std::find(splits.begin(), splits.end(), c.split_k), splits.end()) << c.name();
          EXPECT_LE(c.split_k, k / 64) << c.name();
          if (c.split_k > 1) {
            const long long tiles = (long long)((m + c.tile_m - 1) / c.tile_m) * ((n + c.tile_n - 1) / c.tile_n);
            // Split-K stops at the first factor that gives ~1.5 blocks per SM, so half of it fell short:
            // anything beyond 3 blocks per SM means it split further than filling the GPU needs.
            EXPECT_LT(tiles * c.split_k, 3LL * device.sm_count) << c.name() << ": split-K beyond filling the GPU";
          }
          EXPECT_GE(c.tile_m, previous_tile_m) << c.name() << ": a larger m got a smaller tile";
          previous_tile_m = c.tile_m;
        }
      }
    }
  }
}

TEST(Heuristics, ExtremeShapesStayInBounds) {
  // m beyond every table row (and near INT_MAX) must still land on a listed config.
  const std::vector<KernelConfig> available = every_config(true);
  for (const heuristics::DeviceTraits device : {heuristics::DeviceTraits{80, 108}, heuristics::DeviceTraits{90, 132}}) {
    for (int m : {(1 << 30) + 1, std::numeric_limits<int>::max()}) {
      const KernelConfig c = heuristics::choose(m, 4096, 4096, device, available);
      EXPECT_NE(std::find(available.begin(), available.end(), c), available.end()) << c.name() << " for m " << m;
    }
  }
}

TEST(Runner, WorkspaceSizeSaturatesInsteadOfWrapping) {
  // workspace_bytes is pure arithmetic: no device needed.
  GemmRunner runner;
  KernelConfig split = ms_config(128, 128, 2, 2, 1, 4, 16);
  const int big = std::numeric_limits<int>::max();
  EXPECT_EQ(runner.workspace_bytes(big, big, 4096, split), std::numeric_limits<size_t>::max());
  EXPECT_EQ(runner.workspace_bytes(8, 64, 4096, split), size_t(16) * 8 * 64 * sizeof(float));
  split.split_k = 1;
  EXPECT_EQ(runner.workspace_bytes(big, big, 4096, split), 0u);
}

// Programmatic launch where the grid cannot be placed badly (fills the GPU's block slots), and for
// streaming grids of at most one block per SM; streaming grids that fill the GPU also trigger
// their successor at entry. The block counts are the measured cases of bench/NOTES.md, entry 20.
TEST(Heuristics, LaunchOverlap) {
  struct Case {
    const char* shape;
    KernelFamily family;
    long long blocks;
    int resident_blocks_per_sm;  // 0: the occupancy query failed
    bool programmatic, at_entry;
  };
  const Case cases[] = {
      {"1x4096x4096, 16-warp streaming tile, one per SM", KernelFamily::kStreaming, 128, 1, true, true},
      {"1x11008x4096, 8-warp streaming tile, three per SM (52 free)", KernelFamily::kStreaming, 344, 3, true, true},
      {"128 streaming blocks, three per SM: programmatic, late trigger", KernelFamily::kStreaming, 128, 3,
       true, false},
      {"256 streaming blocks, three per SM (140 free)", KernelFamily::kStreaming, 256, 3, false, false},
      {"32x11008x4096, warp-specialized, two per SM", KernelFamily::kWarpSpecialized, 86, 2, false, false},
      {"128x28672x8192, warp-specialized, one per SM (20 free): never at entry", KernelFamily::kWarpSpecialized,
       112, 1, true, false},
      {"several waves: fills the GPU", KernelFamily::kMultistage, 896, 2, true, false},
      {"unknown occupancy never counts as filling", KernelFamily::kStreaming, 500, 0, false, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.shape);
    const heuristics::LaunchOverlap overlap =
        heuristics::launch_overlap(c.family, c.blocks, c.resident_blocks_per_sm, /*sm_count=*/132);
    EXPECT_EQ(overlap.programmatic_helps, c.programmatic);
    EXPECT_EQ(overlap.launch_dependents_at_entry, c.at_entry);
  }
}

TEST(Heuristics, FamilyAndFallback) {
  const heuristics::DeviceTraits hopper{90, 132}, ampere{80, 108};
  const std::vector<KernelConfig> everything = every_config(true);
  // Large m on Hopper: cuBLAS on dequantized weights; never on Ampere.
  EXPECT_EQ(heuristics::choose(4096, 4096, 4096, hopper, everything).family, KernelFamily::kDequantCublas);
  EXPECT_EQ(heuristics::choose(4096, 4096, 4096, ampere, everything).family, KernelFamily::kMultistage);
  // Without dequant_cublas in the list, Hopper keeps a tensor-core tile.
  EXPECT_EQ(heuristics::choose(4096, 4096, 4096, hopper, every_config(false)).family, KernelFamily::kMultistage);
  // Decode on a big GPU: the grid (tiles x split-K) still gives most SMs work although m = 1.
  const KernelConfig decode = heuristics::choose(1, 4096, 4096, hopper, everything);
  EXPECT_EQ(decode.family, KernelFamily::kMultistage);
  const long long decode_blocks = (long long)((4096 + decode.tile_n - 1) / decode.tile_n) * decode.split_k;
  EXPECT_GE(decode_blocks, hopper.sm_count / 2) << decode.name();
  // A mid-sized layer at decode: one kernel (in-block split along k), no split-K reduction.
  const KernelConfig mid = heuristics::choose(1, 11008, 4096, hopper, everything);
  EXPECT_EQ(mid.split_k, 1) << mid.name();
  EXPECT_EQ(mid.warps_k, 4) << mid.name();
  // ... but a big one splits k across blocks only where its tiles leave SMs idle.
  EXPECT_EQ(heuristics::choose(1, 28672, 8192, hopper, everything).split_k, 1);
  EXPECT_GT(heuristics::choose(1, 8192, 28672, hopper, everything).split_k, 1);
  // Hopper with the wgmma tiles: the warp-specialized ones from m = 17 (32-, 64-, 128-row tiles),
  // dequant_cublas from 3072.
  const std::vector<KernelConfig> with_ws = every_config(true, /*with_warp_specialized=*/true);
  for (const auto& [m, tile_m, tile_n] :
       {std::tuple{17, 32, 128}, {32, 32, 128}, {33, 64, 128}, {64, 64, 128}, {65, 128, 256}, {2048, 128, 256}}) {
    const KernelConfig c = heuristics::choose(m, 28672, 8192, hopper, with_ws);
    EXPECT_EQ(c.family, KernelFamily::kWarpSpecialized) << m << ": " << c.name();
    EXPECT_EQ(c.tile_m, tile_m) << m << ": " << c.name();
    // From m = 65 the 256-channel tile where its tiles use the waves well (112 tiles: 0.85 of one).
    EXPECT_EQ(c.tile_n, tile_n) << m << ": " << c.name();
    EXPECT_EQ(c.split_k, 1) << m << ": " << c.name();  // 224 (or 112 wide) tiles fill the GPU
  }
  // ... but not where they would leave most of a wave idle (172 tiles: 1.3 waves).
  EXPECT_EQ(heuristics::choose(512, 11008, 4096, hopper, with_ws).tile_n, 128);
  // ... and not when the list lacks them.
  std::vector<KernelConfig> without_wide;
  for (const KernelConfig& c : with_ws)
    if (!(c.family == KernelFamily::kWarpSpecialized && c.tile_n == 256)) without_wide.push_back(c);
  const KernelConfig narrow = heuristics::choose(128, 28672, 8192, hopper, without_wide);
  EXPECT_EQ(narrow.family, KernelFamily::kWarpSpecialized) << narrow.name();
  EXPECT_EQ(narrow.tile_n, 128) << narrow.name();
  EXPECT_EQ(heuristics::choose(4096, 28672, 8192, hopper, with_ws).family, KernelFamily::kDequantCublas);
  // Split-K: to 0.6 blocks per SM, and at m <= 64 until a slice has at most 128 k-blocks.
  EXPECT_EQ(heuristics::choose(64, 8192, 8192, hopper, with_ws).split_k, 2);
  EXPECT_EQ(heuristics::choose(64, 8192, 28672, hopper, with_ws).split_k, 4);
  EXPECT_EQ(heuristics::choose(128, 8192, 28672, hopper, with_ws).split_k, 2);
  // ... except that up to m = 128 a 128-row tile that would need split-K 4 hands over to two
  // 64-row tiles with half the split.
  const KernelConfig small_layer = heuristics::choose(128, 4096, 4096, hopper, with_ws);
  EXPECT_EQ(small_layer.tile_m, 64) << small_layer.name();
  EXPECT_EQ(small_layer.split_k, 2) << small_layer.name();
  EXPECT_EQ(heuristics::choose(256, 4096, 4096, hopper, with_ws).tile_m, 128);
  EXPECT_EQ(heuristics::choose(128, 11008, 4096, hopper, with_ws).tile_m, 128);
  // Not where the 64-row tile would need the same split anyway (long k: slices of <= 128 k-blocks).
  const KernelConfig long_k = heuristics::choose(128, 4096, 28672, hopper, with_ws);
  EXPECT_EQ(long_k.tile_m, 128) << long_k.name();
  EXPECT_EQ(long_k.split_k, 4) << long_k.name();
  // ... never on other GPUs, even if the list held them.
  EXPECT_EQ(heuristics::choose(1024, 28672, 8192, ampere, with_ws).family, KernelFamily::kMultistage);
  // Without them, Hopper hands m >= 512 to dequant_cublas.
  EXPECT_EQ(heuristics::choose(512, 28672, 8192, hopper, everything).family, KernelFamily::kDequantCublas);
  // With the streaming tiles, decode (m <= 16) follows the streaming rules in order: one-wave
  // 32-channel tiles with 16 warps, one-wave 64-channel tiles, 32-channel tiles up to three per SM,
  // and at m <= 8 the 64-channel 8-warp tile on the largest layers; the multistage tiles keep
  // m = 9..16 on the largest layers and on long k beyond the 32-channel rules' element limit.
  const std::vector<KernelConfig> with_streaming = every_config(true, true, true);
  const struct {
    int m, n, k;
    const char* config;
  } decode_cases[] = {
      {1, 4096, 4096, "st_m8n32_w1x1x16_s3_k1"},    {8, 4096, 11008, "st_m8n32_w1x1x16_s3_k1"},
      {16, 4096, 11008, "st_m16n32_w1x1x16_s3_k1"}, {1, 8192, 8192, "st_m8n64_w1x1x16_s3_k1"},
      {8, 8192, 28672, "st_m8n64_w1x1x16_s3_k1"},   {16, 8192, 8192, "st_m16n64_w1x1x8_s4_k1"},
      {16, 8192, 28672, "st_m16n64_w1x1x8_s4_k1"},  {1, 11008, 4096, "st_m8n32_w1x1x8_s3_k1"},
      {16, 11008, 4096, "st_m16n32_w1x1x8_s4_k1"},  {1, 28672, 8192, "st_m8n128_w1x2x4_s3_k1"},
      {8, 28672, 8192, "st_m8n128_w1x2x4_s3_k1"},
  };
  for (const auto& c : decode_cases) {
    EXPECT_EQ(heuristics::choose(c.m, c.n, c.k, hopper, with_streaming).name(), c.config)
        << c.m << "x" << c.n << "x" << c.k;
  }
  // The rules' bounds: 64-channel one-wave tiles only where they fill >= 90% of the SMs (6144
  // channels on 132 SMs would fill 73%: 32-channel tiles; on 108 SMs 4096 and 8192 channels stay
  // with the 32-channel 8-warp tile), and m = 9 takes the 16-row tiles.
  const struct {
    int m, n, k;
    const heuristics::DeviceTraits* device;
    const char* config;
  } bound_cases[] = {
      {1, 6144, 4096, &hopper, "st_m8n32_w1x1x8_s3_k1"},   {9, 8192, 8192, &hopper, "st_m16n64_w1x1x8_s4_k1"},
      {1, 4096, 4096, &ampere, "st_m8n32_w1x1x8_s3_k1"},   {16, 4096, 4096, &ampere, "st_m16n32_w1x1x8_s4_k1"},
      {1, 8192, 8192, &ampere, "st_m8n32_w1x1x8_s3_k1"},
  };
  for (const auto& c : bound_cases) {
    EXPECT_EQ(heuristics::choose(c.m, c.n, c.k, *c.device, with_streaming).name(), c.config)
        << c.m << "x" << c.n << "x" << c.k << " on " << c.device->sm_count << " SMs";
  }
  // Unmeasured with streaming tiles: m = 9..16 on the 28672-wide layer, and on a one-wave layer with
  // more weights than the 32-channel rules' limit; n between the 3-wave and the 2-wave rules, and
  // beyond 3.5 64-channel tiles per SM (a vocabulary head; 28672 on 108 SMs).
  for (const auto& [m, n, k] : {std::tuple{16, 28672, 8192}, {16, 4096, 28672}, {1, 14336, 4096}, {1, 32000, 4096}}) {
    const KernelConfig c = heuristics::choose(m, n, k, hopper, with_streaming);
    EXPECT_EQ(c.family, KernelFamily::kMultistage) << m << "x" << n << "x" << k << ": " << c.name();
  }
  EXPECT_EQ(heuristics::choose(1, 28672, 8192, ampere, with_streaming).family, KernelFamily::kMultistage);
  // A rule whose tile is not compiled here falls through to the next one that is.
  std::vector<KernelConfig> without_wide_one_wave;
  for (const KernelConfig& c : with_streaming) {
    if (!(c.family == KernelFamily::kStreaming && c.tile_n == 64 && c.warps_k == 16)) without_wide_one_wave.push_back(c);
  }
  EXPECT_EQ(heuristics::choose(1, 8192, 8192, hopper, without_wide_one_wave).name(), "st_m8n32_w1x1x8_s3_k1");

  // Nothing compiled that the table names: dequant_cublas.
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  EXPECT_EQ(heuristics::choose(16, 4096, 4096, ampere, {dequant}), dequant);
  EXPECT_EQ(heuristics::choose(16, 4096, 4096, ampere, {}).family, KernelFamily::kDequantCublas);
}

// The rules name tiles; the instantiation files decide which exist, and a rule whose tile is not
// compiled falls through to the next one at run time without a word. So over the benchmark's
// default grid, the configs this build really compiles (no device needed to list them) must give
// the same choice as a list holding every config.
// The instance table (src/kernels/fused/instances.def), read the way the registry compiles it.
struct TableTile {
  fused::TileShape shape;
  fused::TileRole role;
};
std::vector<TableTile> instance_table() {
  std::vector<TableTile> tiles;
#define W4A16_TILE(family, group, tile_m, tile_n, warps_m, warps_n, warps_k, stages, role) \
  tiles.push_back({{KernelFamily::family, tile_m, tile_n, warps_m, warps_n, warps_k, stages}, fused::TileRole::role});
#include "kernels/fused/instances.def"
#undef W4A16_TILE
  return tiles;
}

// The default grid: the devices and layers the heuristics were tuned on, m from 1 to 8192.
template <class Visit>
void for_each_default_problem(Visit visit) {
  const heuristics::DeviceTraits devices[] = {{90, 132}, {90, 114}, {80, 108}, {86, 84}, {89, 128}};
  const std::pair<int, int> layers[] = {{4096, 4096},  {11008, 4096}, {4096, 11008}, {8192, 8192},
                                        {28672, 8192}, {8192, 28672}, {14336, 4096}, {4096, 14336},
                                        {6144, 4096},  {1024, 4096},  {4096, 1024},  {2048, 2048},
                                        {16384, 1024}};
  for (const heuristics::DeviceTraits& device : devices)
    for (const auto& [n, k] : layers)
      for (int m : {1, 2, 3, 4, 8, 12, 16, 17, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 3072, 4096,
                    8192})
        visit(m, n, k, device);
}

std::vector<KernelConfig> table_configs() {
  std::vector<KernelConfig> available;
  for (const TableTile& tile : instance_table())
    for (int split : heuristics::split_k_choices()) available.push_back(config_of(tile.shape, split));
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  available.push_back(dequant);
  return available;
}

// The dequant_cublas_lt<r> configs a runner lists (r = 1..dequant_cublas::kLtAlgorithms).
std::vector<KernelConfig> cublas_lt_configs() {
  std::vector<KernelConfig> configs;
  for (int rank = 1; rank <= w4a16::dequant_cublas::kLtAlgorithms; ++rank) {
    KernelConfig lt;
    lt.family = KernelFamily::kDequantCublas;
    lt.dense_algorithm = rank;
    configs.push_back(lt);
  }
  return configs;
}

TEST(Heuristics, DefaultGridChoosesCompiledTiles) {
  const std::vector<KernelConfig> available = table_configs();
  const std::vector<KernelConfig> everything = every_config(true, true, true);
  for_each_default_problem([&](int m, int n, int k, const heuristics::DeviceTraits& device) {
    EXPECT_EQ(heuristics::choose(m, n, k, device, available).name(),
              heuristics::choose(m, n, k, device, everything).name())
        << m << "x" << n << "x" << k << " on sm_" << device.sm_version;
  });
}

// The cuBLASLt configs are for the profiler: untimed, Lt's first choice is no faster than
// cublasGemmEx (bench/NOTES.md, entry 29), so the heuristics never pick one, whatever the list
// holds, and where they pick dequant_cublas it is cublasGemmEx's.
TEST(Heuristics, NeverChooseACublasLtConfig) {
  std::vector<KernelConfig> available = table_configs();
  const std::vector<KernelConfig> lt = cublas_lt_configs();
  available.insert(available.begin(), lt.begin(), lt.end());  // ahead of everything else in the list
  int dequant_choices = 0;
  for_each_default_problem([&](int m, int n, int k, const heuristics::DeviceTraits& device) {
    const KernelConfig chosen = heuristics::choose(m, n, k, device, available);
    EXPECT_EQ(chosen.dense_algorithm, 0) << chosen.name() << " for " << m << "x" << n << "x" << k;
    dequant_choices += chosen.family == KernelFamily::kDequantCublas;
  });
  EXPECT_GT(dequant_choices, 0);  // the grid does reach dequant_cublas (m >= 3072 on sm_90)
}

// instances.def marks each tile kHeuristic or kProfilerOnly; the marks must match what the
// heuristics choose over the default grid (dense, and grouped with 8 experts and top-2 routing):
// every kHeuristic tile is chosen for some problem, and no kProfilerOnly tile ever is.
TEST(Heuristics, RolesMatchTheChoices) {
  const std::vector<TableTile> table = instance_table();
  const std::vector<KernelConfig> available = table_configs();
  std::set<std::string> chosen;
  for_each_default_problem([&](int m, int n, int k, const heuristics::DeviceTraits& device) {
    KernelConfig config = heuristics::choose(m, n, k, device, available);
    config.split_k = 1;
    chosen.insert(config.name());
    chosen.insert(heuristics::choose_grouped(2 * m, 8, n, k, device, available).name());
  });
  for (const TableTile& tile : table) {
    const std::string name = config_of(tile.shape, 1).name();
    if (tile.role == fused::TileRole::kHeuristic) {
      EXPECT_TRUE(chosen.count(name)) << name << " is marked kHeuristic but the heuristics never choose it";
    } else {
      EXPECT_FALSE(chosen.count(name)) << name << " is marked kProfilerOnly but the heuristics choose it";
    }
  }
  // And no two lines declare the same tile.
  std::set<std::string> names;
  for (const TableTile& tile : table) EXPECT_TRUE(names.insert(config_of(tile.shape, 1).name()).second);
}

TEST(RunnerWithoutGpu, ReportsNoDevice) {
  if (test::has_gpu()) GTEST_SKIP() << "a CUDA device is present; this test covers machines without one";
  GemmRunner runner;
  EXPECT_EQ(runner.status().code(), StatusCode::kNoDevice) << runner.status().to_string();
  EXPECT_NE(runner.status().message().find("no CUDA device is visible"), std::string::npos)
      << runner.status().message();
  EXPECT_TRUE(runner.configs().empty());
  // profile() answers with the same status, before touching CUDA.
  ProfileResult result;
  EXPECT_EQ(runner.profile(GemmArguments{}, nullptr, 0, nullptr, &result).code(), StatusCode::kNoDevice);
  GemmArguments args;
  args.m = 16;
  args.n = 64;
  args.k = 64;
  args.group_size = 64;
  const Status s = runner.gemm(args, nullptr, 0, nullptr);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), runner.status().code()) << s.to_string();
}


// The runner's per-call lookups (runner/config_hash.h) must agree with KernelConfig::operator==:
// equal configs hash equal (dequant_cublas ignores the tile fields, the fused families ignore
// dense_algorithm), so a hashed lookup finds exactly what the linear scan it replaced found. Over
// every compiled tile and split in every format, plus the dequant_cublas configs.
TEST(ConfigHash, AgreesWithEqualityAndFindsWhatAScanFinds) {
  std::vector<KernelConfig> configs = table_configs();
  const std::vector<KernelConfig> lt = cublas_lt_configs();
  configs.insert(configs.end(), lt.begin(), lt.end());
  const KernelConfigHash hash;
  for (const KernelConfig& config : configs) {
    KernelConfig same = config;
    if (config.fused()) {
      same.dense_algorithm = 7;  // ignored by operator== for the fused families
    } else {
      same.tile_m = 64;  // ignored for dequant_cublas
      same.stages = 3;
      same.split_k = 2;
    }
    ASSERT_EQ(same, config) << config.name();
    EXPECT_EQ(hash(same), hash(config)) << config.name();
  }
  // Distinct configs: the hash separates every one of them here (not required, but a hash that
  // collided on the real table would turn the lookup back into a scan).
  std::unordered_set<size_t> hashes;
  for (const KernelConfig& config : configs) hashes.insert(hash(config));
  EXPECT_EQ(hashes.size(), configs.size());

  // The (config, format) table as the runner builds it, looked up both ways.
  const Format formats[] = {{ElementType::kFloat16, QuantOp::kScaleOnly},     {ElementType::kFloat16, QuantOp::kScaleAndZeros},
                            {ElementType::kFloat16, QuantOp::kScaleAndFloatZeros}, {ElementType::kBFloat16, QuantOp::kScaleOnly},
                            {ElementType::kBFloat16, QuantOp::kScaleAndZeros},   {ElementType::kBFloat16, QuantOp::kScaleAndFloatZeros}};
  std::vector<std::pair<KernelConfig, Format>> entries;
  for (const KernelConfig& config : configs)
    if (config.fused())
      for (const Format& format : formats) entries.emplace_back(config, format);
  std::unordered_map<std::pair<KernelConfig, Format>, size_t, ConfigFormatHash> index;
  for (size_t i = 0; i < entries.size(); ++i) index.emplace(entries[i], i);
  const auto scan = [&](const std::pair<KernelConfig, Format>& key) {
    for (size_t i = 0; i < entries.size(); ++i)
      if (entries[i] == key) return static_cast<long>(i);
    return -1L;
  };
  const auto lookup = [&](const std::pair<KernelConfig, Format>& key) {
    const auto found = index.find(key);
    return found == index.end() ? -1L : static_cast<long>(found->second);
  };
  for (const auto& key : entries) EXPECT_EQ(lookup(key), scan(key)) << key.first.name();
  KernelConfig absent = entries.front().first;
  absent.tile_m = 7;
  EXPECT_EQ(lookup({absent, formats[0]}), -1L);
  KernelConfig dequant;
  dequant.family = KernelFamily::kDequantCublas;
  EXPECT_EQ(lookup({dequant, formats[0]}), -1L);  // dequant_cublas has no fused kernel

  // What a lookup costs, both ways (printed, not asserted: a test never asserts a time).
  const auto time_per_lookup = [&](auto find) {
    const auto start = std::chrono::steady_clock::now();
    long sum = 0;
    for (int round = 0; round < 20; ++round)
      for (size_t i = 0; i < entries.size(); i += 7) sum += find(entries[i]);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GT(sum, 0);
    return seconds * 1e9 / (20.0 * double((entries.size() + 6) / 7));
  };
  std::printf("%zu (config, format) entries: scan %.0f ns, hash %.0f ns per lookup\n", entries.size(),
              time_per_lookup(scan), time_per_lookup(lookup));
}

}  // namespace
}  // namespace w4a16
