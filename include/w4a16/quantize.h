#pragma once
// Host-side tools, run once per model, offline: quantize fp32/fp16/bf16 weights to 4-bit codes with
// per-group scales (and zero points), pack the codes into the layout the GPU kernels read, and
// unpack them back (tests). Nothing here launches a kernel or needs a GPU.

#include <cstdint>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a16/format.h"
#include "w4a16/status.h"

namespace w4a16 {

// Weights of one nn.Linear layer, quantized.
//   codes : [n][k] stored 4-bit codes q, one per byte, in [0, 15].
//   scales: [k / group_size][n], row-major (n contiguous): one group row is contiguous across
//           output channels, as the kernels read it. Stored as the bits of `element` (fp16 or bf16,
//           the activation type the layer runs with).
//   zeros : empty for QuantOp::kScaleOnly; else [k / group_size][n] like scales, same type.
// Dequantized weight: w[i][j] = s * (q - z), s = scales[j / group_size][i], q = codes[i][j],
//   z = zeros[j / group_size][i], or 8 when there are none (symmetric).
struct QuantizedWeights {
  int n = 0;
  int k = 0;
  int group_size = 0;
  ElementType element = ElementType::kFloat16;
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  std::vector<uint16_t> zeros;
  // The zero points may be fractional (QuantOp::kScaleAndFloatZeros); quantize() only makes
  // whole ones, and sets this when asked for the float-zeros op.
  bool float_zeros = false;

  QuantOp quant() const {
    if (zeros.empty()) return QuantOp::kScaleOnly;
    return float_zeros ? QuantOp::kScaleAndFloatZeros : QuantOp::kScaleAndZeros;
  }
  Format format() const { return {element, quant()}; }
  float scale(int row, int col) const { return element_to_float(element, scales[size_t(col / group_size) * n + row]); }
  float zero(int row, int col) const {
    return zeros.empty() ? float(kSymmetricZeroPoint)
                         : element_to_float(element, zeros[size_t(col / group_size) * n + row]);
  }
  // Exact in double: a 4-bit code minus a 16-bit zero point times a 16-bit scale.
  double dequantized(int row, int col) const {
    return double(scale(row, col)) * (double(codes[size_t(row) * k + col]) - double(zero(row, col)));
  }
};

// Group sizes the kernels support: 32, 64, 128, or k itself (per-channel). k must be a multiple.
Status check_group_size(int k, int group_size);

struct QuantizeOptions {
  int group_size = 128;
  ElementType element = ElementType::kFloat16;  // type of the scales (and zero points)
  QuantOp quant = QuantOp::kScaleOnly;
};

// Round-to-nearest quantization over groups of `group_size` consecutive weights along k.
//  kScaleOnly (symmetric):
//    s = round(max|w| / 7)   (a group of zeros gets s = 0 and codes 8)
//    q = clamp(round(w / s) + 8, 0, 15)
//  kScaleAndZeros and kScaleAndFloatZeros (asymmetric, min/max per group, GPTQ-style range that always contains 0 so that
//  z lands in [0, 15] and w = 0 is exact):
//    lo = min(min w, 0), hi = max(max w, 0)
//    s = round((hi - lo) / 15),  z = clamp(round(-lo / s), 0, 15)   (integer, exact in either type)
//    q = clamp(round(w / s) + z, 0, 15)
// round() of s is to the scale's element type, and codes are computed with the rounded scale so
// that s * (q - z) is the value nearest w the stored scale can express. Non-finite weights, and
// groups whose scale overflows the element type (fp16: |w| beyond ~7 * 65504), are an error.
// weights: [n][k] row-major (nn.Linear: out x in).
Status quantize(const float* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out);
Status quantize(const __half* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out);
Status quantize(const __nv_bfloat16* weights, int n, int k, const QuantizeOptions& options, QuantizedWeights* out);
// Symmetric with fp16 scales (QuantizeOptions{group_size}).
Status quantize(const float* weights, int n, int k, int group_size, QuantizedWeights* out);
Status quantize(const __half* weights, int n, int k, int group_size, QuantizedWeights* out);

// QuantOp::kScaleAndZeros takes whole-number zero points (w4a16/format.h): this checks that each
// of `count` zero points (bits of `element`) is one of 0, 1, ..., 15, and names the first that is
// not. load_packed_layer uses it to choose the op; the importers' zero points are whole by
// construction (4-bit fields).
Status check_integer_zeros(const uint16_t* zeros, size_t count, ElementType element);

// Packed layout for the fused kernels and dequant_cublas; see common/packed_layout.h and
// docs/ARCHITECTURE.md. Requires n % 16 == 0 and k % 64 == 0. Size: n * k / 2 bytes. The same
// packed buffer serves every format: only scales and zero points differ.
size_t packed_weight_bytes(int n, int k);
Status pack_weights(const uint8_t* codes, int n, int k, std::vector<uint8_t>* packed);
Status pack_weights(const QuantizedWeights& weights, std::vector<uint8_t>* packed);
// Exact inverse of pack_weights.
Status unpack_weights(const uint8_t* packed, int n, int k, std::vector<uint8_t>* codes);

}  // namespace w4a16
