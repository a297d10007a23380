// Format names and host-side element conversions.
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16/format.h"

namespace w4a16 {

const char* to_string(ElementType element) {
  switch (element) {
    case ElementType::kFloat16: return "fp16";
    case ElementType::kBFloat16: return "bf16";
  }
  return "unknown";
}

const char* to_string(QuantOp quant) {
  switch (quant) {
    case QuantOp::kScaleOnly: return "scale";
    case QuantOp::kScaleAndZeros: return "zeros";
    case QuantOp::kScaleAndFloatZeros: return "float-zeros";
  }
  return "unknown";
}

const char* format_name(const Format& format) {
  const bool bf16 = format.element == ElementType::kBFloat16;
  if (!bf16 && format.element != ElementType::kFloat16) return "unknown";
  switch (format.quant) {
    case QuantOp::kScaleOnly: return bf16 ? "bf16" : "fp16";
    case QuantOp::kScaleAndZeros: return bf16 ? "bf16+zeros" : "fp16+zeros";
    case QuantOp::kScaleAndFloatZeros: return bf16 ? "bf16+float-zeros" : "fp16+float-zeros";
  }
  return "unknown";
}

float element_to_float(ElementType element, uint16_t bits) {
  if (element == ElementType::kBFloat16) {
    // bf16 is the top half of an fp32.
    const uint32_t wide = uint32_t(bits) << 16;
    float value;
    std::memcpy(&value, &wide, sizeof(value));
    return value;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

uint16_t float_to_element(ElementType element, float value) {
  if (element == ElementType::kBFloat16) {
    const __nv_bfloat16_raw raw = __nv_bfloat16(__float2bfloat16_rn(value));
    return raw.x;
  }
  const __half_raw raw = __half(__float2half_rn(value));
  return raw.x;
}

}  // namespace w4a16
