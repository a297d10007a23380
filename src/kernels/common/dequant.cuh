#pragma once
// Quant-op traits: how the codes of one packed word become mma operands, for each QuantOp
// (w4a16/format.h), on top of an element type's magic-number unpack (element.cuh). Two places
// the group scale (and zero point) can enter:
//
//  1. Before the mma ("weights"): the fragment is dequantized to w in the element type.
//       kScaleOnly:          w = (q - 8) * s       the 8 folded into unpack's magic subtraction; 1 mul
//       kScaleAndZeros:      w = (q - z) * s       z folded the same way, per group (a whole
//                                                  number: the subtraction stays exact); 1 mul
//       kScaleAndFloatZeros: w = fma(q, s, -z s)   unpack with offset 0, then one fma instead of the mul
//     Same instruction count for all three. The first two round once (the product); the float
//     op rounds twice (-z s, then the fma), so w can differ from the correctly rounded s (q - z)
//     by up to about one unit in the last place of the group's largest weights (|z s| <= 15 |s|
//     for the zero points the checkpoint formats produce): the size of the 16-bit rounding every
//     dequantized weight carries anyway, and inside the tests' bound (tests/test_util.h counts
//     |z s| in the magnitude).
//
//  2. After the mma ("codes", the decode loops): the codes go in as exact small integers, the
//     products of one group accumulate in fp32, and the group's scale multiplies that partial sum
//     once. A whole-number zero point joins the magic subtraction, as 8 does for the symmetric op,
//     so the codes go in as exact q - z and kScaleAndZeros costs no more math than kScaleOnly:
//     only the offsets, formed once per group (element.cuh's code_offsets). A fractional zero
//     point cannot: 1024 + z has no bits for its fraction. So kScaleAndFloatZeros feeds q (0..15)
//     and uses
//         sum_k s (q - z) a = s * sum_k q a  -  z s * sum_k a
//     with the group's activation sum sum_k a of each row: one more mma per k slice and 8-row
//     fragment, with an all-ones weight operand, shared by all of the warp's channel fragments,
//     and one more fma per accumulator when the group is folded. No 16-bit rounding of z, z s or
//     the weights: the only roundings are fp32 ones, for any zero point (the two sums cancel to
//     the result, which costs a few fp32 bits of the larger term, far below the 16-bit output's).
//     On the decode tiles, which are issue-bound, that extra mma and fma measured +7-16% (+24% on
//     a multistage m = 16 tile) over scale-only (bench/NOTES.md entry 23); the folded offsets are
//     why whole-number zero points are the op of their own.

#include <cstdint>

#include "kernels/common/element.cuh"
#include "w4a16/format.h"

namespace w4a16 {

template <class ElementT, QuantOp kQuantOp>
struct Dequant {
  using E = ElementT;
  using Scalar = typename E::Scalar;
  using Pair = typename E::Pair;
  using CodeOffsets = typename E::CodeOffsets;
  static constexpr bool kZeros = has_zeros(kQuantOp);                        // reads a zero-point array
  static constexpr bool kFloatZeros = kQuantOp == QuantOp::kScaleAndFloatZeros;
  static constexpr bool kFoldedZeros = kQuantOp == QuantOp::kScaleAndZeros;  // z in the unpack offsets
  // Path 2 needs the group's activation sums (the all-ones mma) only for fractional zero points.
  static constexpr bool kActivationSums = kFloatZeros;
  // What unpack() subtracts at compile time: the symmetric zero point, folded into the magic
  // number; the float op nothing (its zero points enter per group, see above). The folded op's
  // offsets are run-time values (offsets()).
  static constexpr int kCodeOffset = kFloatZeros ? 0 : kSymmetricZeroPoint;

  // Per-group unpack offsets of channel r ("low") and r + 8 ("high") for the whole-number zero
  // points of kScaleAndZeros; the other ops subtract compile-time constants and get an unused
  // empty value.
  static __device__ __forceinline__ CodeOffsets offsets(Scalar zero_low, Scalar zero_high) {
    if constexpr (kFoldedZeros) {
      return E::code_offsets(zero_low, zero_high);
    } else {
      (void)zero_low;
      (void)zero_high;
      return CodeOffsets{};
    }
  }

  // Exact codes for the mma, path 2: q - 8 (scale-only), q - z (kScaleAndZeros, `offsets` of the
  // current group) or q (float zeros).
  static __device__ __forceinline__ void codes(uint32_t word, const CodeOffsets& group_offsets, uint32_t (&fragment)[4]) {
    if constexpr (kFoldedZeros) {
      E::unpack(word, group_offsets, fragment);
    } else {
      (void)group_offsets;
      E::template unpack<kCodeOffset>(word, fragment);
    }
  }

  // Path 1: one group's terms for the two channels of a fragment's rows, r ("low", registers 0
  // and 2) and r + 8 ("high", registers 1 and 3), each broadcast to a pair.
  struct GroupTerms {
    Pair scale_low, scale_high;
    Pair bias_low, bias_high;  // -z s (float zero points)
    CodeOffsets offsets;       // -(magic + z) (whole-number zero points)
  };
  static __device__ __forceinline__ GroupTerms terms(Scalar scale_low, Scalar scale_high, Scalar zero_low,
                                                     Scalar zero_high) {
    GroupTerms t;
    t.scale_low = Pair(scale_low, scale_low);
    t.scale_high = Pair(scale_high, scale_high);
    if constexpr (kFloatZeros) {
      // -z s in one 16-bit multiply per pair: the product of two 16-bit values is exact in fp32
      // (at most 22 significant bits), so rounding it once in the pair multiply gives the same bits
      // as forming it in fp32 and converting, for four instructions fewer per group row.
      t.bias_low = __hmul2(__hneg2(Pair(zero_low, zero_low)), t.scale_low);
      t.bias_high = __hmul2(__hneg2(Pair(zero_high, zero_high)), t.scale_high);
    }
    if constexpr (kFoldedZeros) t.offsets = E::code_offsets(zero_low, zero_high);
    return t;
  }
  static __device__ __forceinline__ GroupTerms terms(Scalar scale_low, Scalar scale_high) {
    static_assert(!kZeros, "zero points need terms(scale_low, scale_high, zero_low, zero_high)");
    return terms(scale_low, scale_high, scale_low, scale_high);
  }

  // Path 1: the fragment of dequantized weights, rounded once to the element type (twice for
  // float zero points, see above).
  static __device__ __forceinline__ void weights(uint32_t word, const GroupTerms& t, uint32_t (&fragment)[4]) {
    codes(word, t.offsets, fragment);  // q - 8, q - z exactly, or q (float zero points)
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool high = i & 1;
      const Pair q = E::as_pair(fragment[i]);
      if constexpr (kFloatZeros) {
        fragment[i] = E::as_bits(__hfma2(q, high ? t.scale_high : t.scale_low, high ? t.bias_high : t.bias_low));
      } else {
        fragment[i] = E::as_bits(__hmul2(q, high ? t.scale_high : t.scale_low));
      }
    }
  }

  // Path 2: folds one group's fp32 partial sums of an mma accumulator fragment ([0], [1]: channel
  // r; [2], [3]: channel r + 8) into the accumulators. `sums` is the group's activation sum
  // fragment from the all-ones mma (float zero points only; same layout, equal across channels).
  static __device__ __forceinline__ void fold(float (&accumulators)[4], const float (&partial)[4], const float* sums,
                                              Scalar scale_low, Scalar scale_high, Scalar zero_low,
                                              Scalar zero_high) {
    const float s_low = E::to_float(scale_low), s_high = E::to_float(scale_high);
    accumulators[0] = fmaf(partial[0], s_low, accumulators[0]);
    accumulators[1] = fmaf(partial[1], s_low, accumulators[1]);
    accumulators[2] = fmaf(partial[2], s_high, accumulators[2]);
    accumulators[3] = fmaf(partial[3], s_high, accumulators[3]);
    if constexpr (kActivationSums) {
      const float bias_low = -E::to_float(zero_low) * s_low, bias_high = -E::to_float(zero_high) * s_high;
      accumulators[0] = fmaf(sums[0], bias_low, accumulators[0]);
      accumulators[1] = fmaf(sums[1], bias_low, accumulators[1]);
      accumulators[2] = fmaf(sums[2], bias_high, accumulators[2]);
      accumulators[3] = fmaf(sums[3], bias_high, accumulators[3]);
    } else {
      (void)sums;
      (void)zero_low;
      (void)zero_high;
    }
  }
};

// The all-ones weight fragment of path 2: mma(ones, activations) gives every channel row the sum
// of the activations over the 16-wide k slice.
template <class E>
__device__ __forceinline__ void ones_fragment(uint32_t (&fragment)[4]) {
  #pragma unroll
  for (int i = 0; i < 4; ++i) fragment[i] = E::kOnesBits;
}

}  // namespace w4a16
