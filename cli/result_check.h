#pragma once
// The verdict of `w4a16 verify`: a GPU result against the CPU reference. Its own unit so that the
// CPU tests can check the verdict itself (tests/test_result_check.cpp) without a GPU.

#include <cstdint>
#include <vector>

#include "w4a16/quantize.h"

namespace w4a16::cli {

// C (downloaded, bits of weights.element) against the reference over `a_reference` (A as the
// weights' k order sees it), over all m rows or a sample (first, last, random) when the CPU
// reference would take too long. Passes when every element is finite, the relative Frobenius error
// is within `tolerance`, and every element is within the bound the GPU tests use
// (tests/test_util.h, error_bound): |c - ref| <= 4u (|alpha| sum_i |a_i| |s_i| (|q_i - z_i| + |z_i|)
// + |ref|) + 2^-14, u the element type's unit roundoff (the |z| term only with zero points). The
// per-element bound catches what a global ratio can hide: one wrong output channel of 11008 moves
// the Frobenius error by only ~1/sqrt(11008). Prints two lines.
bool matches_reference(const std::vector<uint16_t>& out, const std::vector<uint16_t>& a_reference, int m,
                       const QuantizedWeights& weights, const uint16_t* bias, float alpha, double tolerance,
                       int sample_rows, uint64_t seed);

}  // namespace w4a16::cli
