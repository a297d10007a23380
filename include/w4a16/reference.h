#pragma once
// CPU reference: C = alpha * A * dequant(W)^T (+ bias), accumulated in double over the dequantized
// weights. The ground truth every GPU result is compared with.

#include <vector>

#include <cuda_fp16.h>

#include "w4a16/quantize.h"

namespace w4a16 {

// a: [m][k] fp16 row-major; bias: [n] or nullptr. Computes the rows of C listed in `rows` (all m
// rows when empty) into *c as [rows][n] doubles, in the order given. Rows are independent, so a
// check of a huge problem can sample rows instead of paying m * n * k on the CPU.
Status reference_gemm(const __half* a, int m, const QuantizedWeights& weights, const __half* bias, float alpha,
                      const std::vector<int>& rows, std::vector<double>* c);

}  // namespace w4a16
