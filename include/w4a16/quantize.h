#pragma once
// Host-side tools, run once per model, offline: quantize fp16/fp32 weights to int4 with per-group
// fp16 scales, pack the codes into the layout the GPU kernels read, and unpack them back (tests).
// Nothing here launches a kernel or needs a GPU.

#include <cstdint>
#include <vector>

#include <cuda_fp16.h>

#include "w4a16/status.h"

namespace w4a16 {

// Weights of one nn.Linear layer, quantized.
//   codes : [n][k] int4 codes stored one per int8, signed, in [-8, 7] (quantize() emits [-7, 7],
//           and -8 only for groups so small that their scale is an fp16 subnormal).
//   scales: [k / group_size][n] fp16, row-major (n contiguous), so one group row is contiguous
//           across output channels, as the kernels read it.
// Dequantized weight: w[i][j] = codes[i][j] * scales[j / group_size][i]   (symmetric, no zero point)
struct QuantizedWeights {
  int n = 0;
  int k = 0;
  int group_size = 0;
  std::vector<int8_t> codes;
  std::vector<__half> scales;

  float dequantized(int row, int col) const {
    return float(codes[size_t(row) * k + col]) * __half2float(scales[size_t(col / group_size) * n + row]);
  }
};

// Group sizes the kernels support: 32, 64, 128, or k itself (per-channel). k must be a multiple.
Status check_group_size(int k, int group_size);

// Symmetric round-to-nearest quantization over groups of `group_size` consecutive weights along k:
//   scale = fp16(max|w| / 7)   (a group of zeros gets scale 0 and codes 0; weights whose scale
//                               would overflow fp16, |w| > 7 * 65504, or non-finite weights are an error)
//   code  = clamp(round(w / scale), -8, 7), computed with the fp16-rounded scale so that
//           code * scale is the value nearest w the stored scale can express.
// weights: [n][k] row-major (nn.Linear: out x in).
Status quantize(const float* weights, int n, int k, int group_size, QuantizedWeights* out);
Status quantize(const __half* weights, int n, int k, int group_size, QuantizedWeights* out);

// Packed layout for the SM80-class kernels (tensor_core_sm80 and dequant_cublas); see
// docs/ARCHITECTURE.md. Requires n % 16 == 0 and k % 64 == 0. Size: n * k / 2 bytes.
size_t packed_weight_bytes(int n, int k);
Status pack_weights(const int8_t* codes, int n, int k, std::vector<uint8_t>* packed);
Status pack_weights(const QuantizedWeights& weights, std::vector<uint8_t>* packed);
// Exact inverse of pack_weights.
Status unpack_weights(const uint8_t* packed, int n, int k, std::vector<int8_t>* codes);

}  // namespace w4a16
