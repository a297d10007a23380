#pragma once
// Host side of the element-type traits (the device side is kernels/common/element.cuh): the type
// codes the libraries the kernels hand operands to know an ElementType by.

#include <cuda.h>
#include <library_types.h>

#include "w4a16/format.h"

namespace w4a16 {

// cuBLAS / cuBLASLt (dequant_cublas, the benchmark's dense baseline).
inline cudaDataType_t cuda_data_type(ElementType element) {
  return element == ElementType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
}

// TMA descriptors (fused/warp_specialized/tensor_maps.cpp).
inline CUtensorMapDataType tensor_map_data_type(ElementType element) {
  return element == ElementType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

}  // namespace w4a16
