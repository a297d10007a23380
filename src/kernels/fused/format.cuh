#pragma once
// A kernel's format as compile-time traits: the element type (common/element.cuh) and the quant
// op (common/dequant.cuh). Every fused kernel is Kernel<Tile, KernelFormat<...>>; this is the one
// place the two axes meet.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common/dequant.cuh"
#include "kernels/common/element.cuh"
#include "w4a16/format.h"

namespace w4a16::fused {

template <class ElementT, QuantOp kQuant>
struct KernelFormat {
  using E = Element<ElementT>;
  using Scalar = typename E::Scalar;
  using Dequant = w4a16::Dequant<E, kQuant>;
  static constexpr QuantOp kQuantOp = kQuant;
  static constexpr bool kZeros = has_zeros(kQuant);  // a zero-point array (either zero-point op)
  // Per-group arrays the kernel streams alongside the weights: scales, and zero points.
  static constexpr int kGroupArrays = kZeros ? 2 : 1;
  static constexpr Format kFormat = {E::kType, kQuant};
};

// The six formats by their public names (CMakeLists.txt's W4A16_FORMATS).
using Fp16ScaleOnly = KernelFormat<__half, QuantOp::kScaleOnly>;
using Fp16ScaleAndZeros = KernelFormat<__half, QuantOp::kScaleAndZeros>;
using Fp16ScaleAndFloatZeros = KernelFormat<__half, QuantOp::kScaleAndFloatZeros>;
using Bf16ScaleOnly = KernelFormat<__nv_bfloat16, QuantOp::kScaleOnly>;
using Bf16ScaleAndZeros = KernelFormat<__nv_bfloat16, QuantOp::kScaleAndZeros>;
using Bf16ScaleAndFloatZeros = KernelFormat<__nv_bfloat16, QuantOp::kScaleAndFloatZeros>;

}  // namespace w4a16::fused
