#pragma once
// Element-type traits: everything in the kernels that depends on whether activations (and with
// them C, bias, scales and zero points) are fp16 or bf16. A kernel names the type once, as
// Element<__half> or Element<__nv_bfloat16>; the mainloops, the epilogue and the reductions only
// talk to these traits. (The host side of the same axis, the TMA and cuBLAS type codes, is
// common/element_type.h.)
//
// What differs between the types:
//  - the tensor-core instruction (mma.sync ... .f16.f16 vs .bf16.bf16; for wgmma the CuTe atom,
//    warp_specialized/wgmma_math.cuh);
//  - the magic number that turns a 4-bit code into a float without a conversion instruction
//    (see unpack() below): the bit layouts differ, so does the number of shifts;
//  - conversions to and from fp32 for the epilogue, bias, scales and zero points.

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common/ptx.cuh"
#include "w4a16/format.h"

namespace w4a16 {

template <class T>
struct Element;

// (a & b) | c in one lop3: the mask-and-OR of every magic-number unpack.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  return ptx::lop3<(0xF0 & 0xCC) | 0xAA>(a, b, c);
}

template <>
struct Element<__half> {
  using Scalar = __half;
  using Pair = __half2;
  static constexpr ElementType kType = ElementType::kFloat16;

  static __device__ __forceinline__ Pair as_pair(uint32_t bits) { return *reinterpret_cast<Pair*>(&bits); }
  static __device__ __forceinline__ uint32_t as_bits(Pair value) { return *reinterpret_cast<uint32_t*>(&value); }
  static __device__ __forceinline__ float to_float(Scalar value) { return __half2float(value); }
  static __device__ __forceinline__ Scalar from_float(float value) { return __float2half_rn(value); }
  static __device__ __forceinline__ Scalar from_bits(unsigned short bits) { return __ushort_as_half(bits); }
  static __device__ __forceinline__ Pair pair(float low, float high) { return __floats2half2_rn(low, high); }
  // The pair (1, 1): an all-ones mma operand sums the other operand (float zero points on the
  // decode tiles' scale-after-mma path, common/dequant.cuh).
  static constexpr uint32_t kOnesBits = 0x3C003C00;

  // D = A * B + D, A 16x16 (row), B 16x8 (col), D 16x8 fp32.
  static __device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }

  // The four fragment registers of one packed word (common/packed_layout.h: register i holds the
  // codes of nibble slots i and i + 4, 16 bits apart) as exact pairs (q - kOffset), q the code.
  //
  // The magic number. fp16 1024.0 is 0x6400: exponent 10, so the 10 mantissa bits count units of
  // 1.0. OR-ing a nibble q into the low mantissa bits gives exactly 1024 + q, and subtracting
  // 1024 + kOffset leaves q - kOffset with no rounding. The mask 0x00f000f0 picks slots 1 and 5 in
  // place, 4 bits higher: 1024 + 16q, and (1024 + 16q) / 16 - (64 + kOffset) = q - kOffset, one
  // exact fma. So a word costs one shift (>> 8 brings slots 2, 3, 6, 7 down), four lop3 and four
  // add/fma for eight codes.
  template <int kOffset>
  static __device__ __forceinline__ void unpack(uint32_t word, uint32_t (&fragment)[4]) {
    // Constants as bit patterns (the conversion intrinsics do not fold at compile time). Both
    // sums are exact: 1024 + j is 0x6400 + j (unit 1), 64 + j is 0x5400 + 16 j (unit 1/16);
    // the sign bit 0x8000 negates.
    static_assert(kOffset >= 0 && kOffset <= 15, "an offset in the code range");
    constexpr uint32_t kMinusLow = 0xE400u + kOffset;          // -(1024 + kOffset)
    constexpr uint32_t kMinusHigh = 0xD400u + 16u * kOffset;   // -(64 + kOffset)
    unpack(word, CodeOffsets{as_pair(kMinusLow * 0x10001u), as_pair(kMinusHigh * 0x10001u)}, fragment);
  }

  // What unpack subtracts, per channel: `low` for channel r (registers 0 and 2, the low-nibble
  // trick: -(1024 + z)), `high` for channel r + 8 (registers 1 and 3, the high-nibble trick:
  // -(64 + z)). The packed layout puts channel r's codes in slots 0, 2, 4, 6 and channel r + 8's
  // in slots 1, 3, 5, 7, so each channel needs only one of the two tricks.
  struct CodeOffsets {
    Pair low, high;
  };
  // The offsets of whole-number zero points z_low (channel r) and z_high (channel r + 8):
  // -1024 - z and -64 - z are exact in fp16 for z in 0..15 (units 1 and 1/16 there), so the
  // unpack still yields q - z with no rounding. A fractional z would be rounded to those units.
  static __device__ __forceinline__ CodeOffsets code_offsets(Scalar zero_low, Scalar zero_high) {
    return {__hsub2(as_pair(0xE400E400u), Pair(zero_low, zero_low)),    // -1024 - z
            __hsub2(as_pair(0xD400D400u), Pair(zero_high, zero_high))};  // -64 - z
  }

  static __device__ __forceinline__ void unpack(uint32_t word, const CodeOffsets& offsets, uint32_t (&fragment)[4]) {
    constexpr uint32_t kLowNibbles = 0x000f000f;   // slots 0 and 4 (2 and 6 after >> 8)
    constexpr uint32_t kHighNibbles = 0x00f000f0;  // slots 1 and 5 (3 and 7 after >> 8), times 16
    constexpr uint32_t kMagic = 0x64006400;        // (1024, 1024)
    const Pair one_sixteenth = as_pair(0x2C002C00u);  // (1/16, 1/16)
    const uint32_t shifted = word >> 8;
    fragment[0] = as_bits(__hadd2(as_pair(and_or(word, kLowNibbles, kMagic)), offsets.low));
    fragment[1] = as_bits(__hfma2(as_pair(and_or(word, kHighNibbles, kMagic)), one_sixteenth, offsets.high));
    fragment[2] = as_bits(__hadd2(as_pair(and_or(shifted, kLowNibbles, kMagic)), offsets.low));
    fragment[3] = as_bits(__hfma2(as_pair(and_or(shifted, kHighNibbles, kMagic)), one_sixteenth, offsets.high));
  }
};

template <>
struct Element<__nv_bfloat16> {
  using Scalar = __nv_bfloat16;
  using Pair = __nv_bfloat162;
  static constexpr ElementType kType = ElementType::kBFloat16;

  static __device__ __forceinline__ Pair as_pair(uint32_t bits) { return *reinterpret_cast<Pair*>(&bits); }
  static __device__ __forceinline__ uint32_t as_bits(Pair value) { return *reinterpret_cast<uint32_t*>(&value); }
  static __device__ __forceinline__ float to_float(Scalar value) { return __bfloat162float(value); }
  static __device__ __forceinline__ Scalar from_float(float value) { return __float2bfloat16_rn(value); }
  static __device__ __forceinline__ Scalar from_bits(unsigned short bits) { return __ushort_as_bfloat16(bits); }
  static __device__ __forceinline__ Pair pair(float low, float high) { return __floats2bfloat162_rn(low, high); }
  static constexpr uint32_t kOnesBits = 0x3F803F80;  // (1, 1)

  static __device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }

  // As Element<__half>::unpack, with bf16's magic number. bf16 128.0 is 0x4300: exponent 7, so
  // its 7 mantissa bits count units of 1.0, and OR-ing a nibble q into the low 4 gives exactly
  // 128 + q. fp16's second trick (a nibble 4 bits higher, 1024 + 16q) has no room here: 16q needs
  // mantissa bits 4..7 and bf16 has only 7. So each register gets its own shift (word >> 4i
  // brings slots i and i + 4 down): three shifts, four lop3 and four subtractions per word, one
  // more instruction per four codes than fp16.
  template <int kOffset>
  static __device__ __forceinline__ void unpack(uint32_t word, uint32_t (&fragment)[4]) {
    // -(128 + kOffset) as bits (unit 1 at 128; 0x8000 is the sign), exact.
    static_assert(kOffset >= 0 && kOffset <= 15, "an offset in the code range");
    const Pair minus = as_pair((0xC300u + kOffset) * 0x10001u);
    unpack(word, CodeOffsets{minus, minus}, fragment);
  }

  // As Element<__half>::CodeOffsets: `low` for channel r (registers 0 and 2), `high` for r + 8
  // (1 and 3); here both are -(128 + z).
  struct CodeOffsets {
    Pair low, high;
  };
  // -128 - z is exact in bf16 for whole numbers z in 0..15 (unit 1 at 128).
  static __device__ __forceinline__ CodeOffsets code_offsets(Scalar zero_low, Scalar zero_high) {
    return {__hsub2(as_pair(0xC300C300u), Pair(zero_low, zero_low)), __hsub2(as_pair(0xC300C300u), Pair(zero_high, zero_high))};
  }

  static __device__ __forceinline__ void unpack(uint32_t word, const CodeOffsets& offsets, uint32_t (&fragment)[4]) {
    constexpr uint32_t kLowNibbles = 0x000f000f;
    constexpr uint32_t kMagic = 0x43004300;  // (128, 128)
    fragment[0] = as_bits(__hadd2(as_pair(and_or(word, kLowNibbles, kMagic)), offsets.low));
    fragment[1] = as_bits(__hadd2(as_pair(and_or(word >> 4, kLowNibbles, kMagic)), offsets.high));
    fragment[2] = as_bits(__hadd2(as_pair(and_or(word >> 8, kLowNibbles, kMagic)), offsets.low));
    fragment[3] = as_bits(__hadd2(as_pair(and_or(word >> 12, kLowNibbles, kMagic)), offsets.high));
  }
};

// Runs f(Element<T>{}) for the T an ElementType names: the one place a run-time element type
// becomes a compile-time one (host code choosing which kernel instantiation to launch).
template <class F>
decltype(auto) with_element(ElementType element, F&& f) {
  if (element == ElementType::kBFloat16) return f(Element<__nv_bfloat16>{});
  return f(Element<__half>{});
}

}  // namespace w4a16
