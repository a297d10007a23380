// The verdict of `w4a16 verify` (cli/result_check.h) on results made on the host: the reference
// rounded to the element type passes; one wrong output channel, one NaN, or one element just past
// the per-element bound fails, in both element types.
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "cli/result_check.h"
#include "test_util.h"
#include "w4a16/reference.h"

namespace w4a16 {
namespace {

TEST(VerifyVerdict, PassesTheRoundedReferenceAndFailsAWrongChannelANanOrOneBadElement) {
  W4A16_RANDOM(rng);
  const int m = 17, n = 272, k = 1088, group = 64;
  for (const Format& format : kAllFormats) {
    SCOPED_TRACE(format_name(format));
    const ElementType element = format.element;
    const std::vector<float> values = rng.weights(n, k);
    QuantizedWeights q;
    W4A16_ASSERT_OK(quantize(values.data(), n, k, QuantizeOptions{group, element, format.quant}, &q));
    const std::vector<uint16_t> a = rng.elements(element, size_t(m) * k, -1.0f, 1.0f);
    std::vector<double> reference;
    W4A16_ASSERT_OK(reference_gemm(a.data(), m, q, nullptr, 1.0f, {}, &reference));
    std::vector<uint16_t> rounded(reference.size());
    for (size_t i = 0; i < reference.size(); ++i) rounded[i] = float_to_element(element, float(reference[i]));
    const double tolerance = element == ElementType::kBFloat16 ? 1.6e-2 : 2e-3;
    auto verdict = [&](const std::vector<uint16_t>& c) {
      return cli::matches_reference(c, a, m, q, nullptr, 1.0f, tolerance, 16, rng.seed());
    };
    EXPECT_TRUE(verdict(rounded));

    std::vector<uint16_t> wrong_channel = rounded;  // channel 5 negated in every row
    for (int r = 0; r < m; ++r) {
      uint16_t& x = wrong_channel[size_t(r) * n + 5];
      x = float_to_element(element, -element_to_float(element, x));
    }
    EXPECT_FALSE(verdict(wrong_channel));

    std::vector<uint16_t> not_a_number = rounded;
    not_a_number[size_t(m / 2) * n + 7] = 0xFFFF;  // NaN in fp16 and bf16
    EXPECT_FALSE(verdict(not_a_number));

    // One element moved by 64 units in the last place of its (largest) magnitude: far inside the
    // Frobenius tolerance over 17 x 272 elements, outside its own bound.
    size_t largest = 0;
    for (size_t i = 0; i < reference.size(); ++i) largest = std::fabs(reference[i]) > std::fabs(reference[largest]) ? i : largest;
    std::vector<uint16_t> one_bad = rounded;
    const double ulp = std::ldexp(std::fabs(reference[largest]), element == ElementType::kBFloat16 ? -7 : -10);
    one_bad[largest] = float_to_element(element, float(reference[largest] + 64 * ulp));
    EXPECT_FALSE(verdict(one_bad));
  }
}

}  // namespace
}  // namespace w4a16
