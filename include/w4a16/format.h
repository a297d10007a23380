#pragma once
// The two axes of a weight format, as in TensorRT-LLM's <ActivationType, WeightType, QuantOp>
// (the weight type is always 4-bit here):
//   ElementType  what A, C, bias, scales and zero points are stored as: fp16 or bf16;
//   QuantOp      how a stored 4-bit code q (0..15) becomes a weight:
//                  kScaleOnly           w = s * (q - 8)  (symmetric: the zero point is the constant 8)
//                  kScaleAndZeros       w = s * (q - z)  (z per group and channel, a whole number
//                                                          0..15: GPTQ, AWQ, compressed-tensors,
//                                                          quantize())
//                  kScaleAndFloatZeros  w = s * (q - z)  (z any 16-bit value, e.g. HQQ's)
//                A whole-number z is what every integer checkpoint format stores, and the decode
//                kernels fold it into the code unpack for free; a fractional one needs one more
//                mma and fma per group (src/kernels/common/dequant.cuh). Fractional zero points
//                given as kScaleAndZeros give unspecified results (the decode kernels round them
//                to their offsets' units, other configs use them as they are): the host tools
//                that see zero points refuse such ones (check_integer_zeros, w4a16/quantize.h).
// Plain C++: no CUDA types, so host code and the kernels' traits share it.

#include <cstdint>

namespace w4a16 {

enum class ElementType : uint8_t {
  kFloat16,   // IEEE binary16 (__half)
  kBFloat16,  // bfloat16 (__nv_bfloat16): fp32's exponent range with 8 significant bits
};

enum class QuantOp : uint8_t {
  kScaleOnly,           // FINEGRAINED_SCALE_ONLY
  kScaleAndZeros,       // FINEGRAINED_SCALE_AND_ZEROS, whole-number zero points
  kScaleAndFloatZeros,  // FINEGRAINED_SCALE_AND_ZEROS, any zero points
};

// Whether a quant op reads a zero-point array (both zero-point ops do; only its values differ).
constexpr bool has_zeros(QuantOp quant) { return quant != QuantOp::kScaleOnly; }

// The zero point the symmetric quant op implies: codes are stored as q = c + 8 for c in [-8, 7].
constexpr int kSymmetricZeroPoint = 8;
// The largest stored code (codes are unsigned nibbles 0..15).
constexpr int kMaxCode = 15;

struct Format {
  ElementType element = ElementType::kFloat16;
  QuantOp quant = QuantOp::kScaleOnly;

  bool operator==(const Format& other) const { return element == other.element && quant == other.quant; }
  bool operator!=(const Format& other) const { return !(*this == other); }
  bool operator<(const Format& other) const {
    return element != other.element ? element < other.element : quant < other.quant;
  }
};

// "fp16", "bf16"; "scale", "zeros", "float-zeros"; a format as "fp16", "fp16+zeros",
// "fp16+float-zeros", "bf16", "bf16+zeros", "bf16+float-zeros".
const char* to_string(ElementType element);
const char* to_string(QuantOp quant);
const char* format_name(const Format& format);

// Every format the library serves, fp16 scale-only (the reference format) first.
constexpr Format kAllFormats[] = {
    {ElementType::kFloat16, QuantOp::kScaleOnly},
    {ElementType::kFloat16, QuantOp::kScaleAndZeros},
    {ElementType::kFloat16, QuantOp::kScaleAndFloatZeros},
    {ElementType::kBFloat16, QuantOp::kScaleOnly},
    {ElementType::kBFloat16, QuantOp::kScaleAndZeros},
    {ElementType::kBFloat16, QuantOp::kScaleAndFloatZeros},
};

// Bytes of one element (both types are 2 bytes wide).
constexpr int element_bytes(ElementType) { return 2; }

// Host-side conversions of one element's bits (round to nearest even; NaN stays NaN).
float element_to_float(ElementType element, uint16_t bits);
uint16_t float_to_element(ElementType element, float value);

}  // namespace w4a16
