#pragma once
// CPU reference: C = alpha * A * dequant(W)^T (+ bias), accumulated in double over the dequantized
// weights w = s * (q - z) (QuantizedWeights::dequantized). The ground truth every GPU result is
// compared with.

#include <cstdint>
#include <vector>

#include <cuda_fp16.h>

#include "w4a16/quantize.h"

namespace w4a16 {

// a: [m][k] row-major and bias: [n] or nullptr, both as bits of weights.element (fp16 or bf16: the
// activation type the layer runs with). Computes the rows of C listed in `rows` (all m rows when
// empty) into *c as [rows][n] doubles, in the order given. Rows are independent, so a check of a
// huge problem can sample rows instead of paying m * n * k on the CPU.
Status reference_gemm(const uint16_t* a, int m, const QuantizedWeights& weights, const uint16_t* bias, float alpha,
                      const std::vector<int>& rows, std::vector<double>* c);
// fp16 activations (weights.element must be kFloat16).
Status reference_gemm(const __half* a, int m, const QuantizedWeights& weights, const __half* bias, float alpha,
                      const std::vector<int>& rows, std::vector<double>* c);

}  // namespace w4a16
