#pragma once
// int4 -> fp16 conversion of one packed word (eight codes) into the four registers of an
// mma.m16n8k16 fragment. The nibble order it relies on is defined in common/packed_layout.h.

#include <cstdint>

#include <cuda_fp16.h>

#include "kernels/common/ptx.cuh"

namespace w4a16 {

__device__ __forceinline__ __half2 as_half2(uint32_t bits) { return *reinterpret_cast<__half2*>(&bits); }
__device__ __forceinline__ uint32_t as_bits(__half2 value) { return *reinterpret_cast<uint32_t*>(&value); }

// The magic-number trick. fp16 1024.0 is 0x6400: exponent 10, so the 10 mantissa bits count units
// of 1.0. OR-ing a nibble u into the low mantissa bits gives exactly 1024 + u; OR-ing it in 4 bits
// higher gives 1024 + 16u. Subtracting 1024 + 8 (the code offset) yields the signed code u - 8 with
// no rounding; for the high nibble, (1024 + 16u) / 16 - 72 = u - 8, one exact fma. So each
// fragment register costs one lop3 and one sub/fma, and holds two exact signed codes.
//   slot 0,4 -> a0 (row r)      slot 1,5 -> a1 (row r+8)
//   slot 2,6 -> a2 (row r, +8k) slot 3,7 -> a3 (row r+8, +8k)
__device__ __forceinline__ void dequantize_codes(uint32_t word, uint32_t (&fragment)[4]) {
  constexpr uint32_t kLowNibbles = 0x000f000f;   // slots 0 and 4 (or 2 and 6 after >> 8)
  constexpr uint32_t kHighNibbles = 0x00f000f0;  // slots 1 and 5 (or 3 and 7 after >> 8)
  constexpr uint32_t kFp16Exponent1024 = 0x64006400;
  constexpr int kAndOr = (0xF0 & 0xCC) | 0xAA;   // lop3 truth table of (a & b) | c
  const __half2 kMinus1032 = as_half2(0xE408E408);   // -(1024 + 8)
  const __half2 kOneSixteenth = as_half2(0x2C002C00);
  const __half2 kMinus72 = as_half2(0xD480D480);     // -(64 + 8)

  const uint32_t shifted = word >> 8;
  const __half2 q0 = as_half2(ptx::lop3<kAndOr>(word, kLowNibbles, kFp16Exponent1024));
  const __half2 q1 = as_half2(ptx::lop3<kAndOr>(word, kHighNibbles, kFp16Exponent1024));
  const __half2 q2 = as_half2(ptx::lop3<kAndOr>(shifted, kLowNibbles, kFp16Exponent1024));
  const __half2 q3 = as_half2(ptx::lop3<kAndOr>(shifted, kHighNibbles, kFp16Exponent1024));
  fragment[0] = as_bits(__hadd2(q0, kMinus1032));
  fragment[1] = as_bits(__hfma2(q1, kOneSixteenth, kMinus72));
  fragment[2] = as_bits(__hadd2(q2, kMinus1032));
  fragment[3] = as_bits(__hfma2(q3, kOneSixteenth, kMinus72));
}

// Codes times the group scale, rounded once to fp16, as dequant(W) in fp16 would be.
// scale_row_low scales rows r (a0, a2), scale_row_high rows r + 8 (a1, a3).
__device__ __forceinline__ void dequantize_fragment(uint32_t word, __half2 scale_row_low, __half2 scale_row_high,
                                                    uint32_t (&fragment)[4]) {
  dequantize_codes(word, fragment);
  fragment[0] = as_bits(__hmul2(as_half2(fragment[0]), scale_row_low));
  fragment[1] = as_bits(__hmul2(as_half2(fragment[1]), scale_row_high));
  fragment[2] = as_bits(__hmul2(as_half2(fragment[2]), scale_row_low));
  fragment[3] = as_bits(__hmul2(as_half2(fragment[3]), scale_row_high));
}

}  // namespace w4a16
