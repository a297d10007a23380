#pragma once
// Test-only probe of the magic-number unpack (src/kernels/common/element.cuh) on the device: runs
// Element<T>::unpack with the run-time offsets of whole-number zero points (what
// QuantOp::kScaleAndZeros feeds the decode kernels' mma) for given words and zero-point pairs, and
// returns the four fragment registers of each case as floats.

#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "w4a16/format.h"

namespace w4a16::test {

struct UnpackCase {
  uint32_t word;        // eight 4-bit codes, slot s at bits [4s, 4s + 4)
  uint16_t zero_low;    // zero point of channel r (registers 0 and 2), bits of the element type
  uint16_t zero_high;   // zero point of channel r + 8 (registers 1 and 3)
};

// out[8 i + 2 j + h]: half h (0 low, 1 high) of register j of case i, as a float.
cudaError_t unpack_with_offsets(ElementType element, const std::vector<UnpackCase>& cases, std::vector<float>* out);

}  // namespace w4a16::test
