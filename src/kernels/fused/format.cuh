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
  static constexpr bool kZeros = kQuant == QuantOp::kScaleAndZeros;
  // Per-group arrays the kernel streams alongside the weights: scales, and zero points.
  static constexpr int kGroupArrays = kZeros ? 2 : 1;
  static constexpr Format kFormat = {E::kType, kQuant};
};

// The four formats by their public names (instances.def's format column).
using Fp16ScaleOnly = KernelFormat<__half, QuantOp::kScaleOnly>;
using Fp16ScaleAndZeros = KernelFormat<__half, QuantOp::kScaleAndZeros>;
using Bf16ScaleOnly = KernelFormat<__nv_bfloat16, QuantOp::kScaleOnly>;
using Bf16ScaleAndZeros = KernelFormat<__nv_bfloat16, QuantOp::kScaleAndZeros>;

}  // namespace w4a16::fused
