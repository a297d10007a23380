#include "kernels/fused/warp_specialized/tensor_maps.h"

#include <cstdint>

#include <cudaTypedefs.h>

#include "common/element_type.h"
#include "common/packed_layout.h"

namespace w4a16::fused {

namespace {

PFN_cuTensorMapEncodeTiled_v12000 lookup_encode() {
  void* function = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
}

PFN_cuTensorMapEncodeTiled_v12000 encode_function() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = lookup_encode();  // once; thread-safe
  return encode;
}

}  // namespace

bool tensor_maps_supported() { return encode_function() != nullptr; }

namespace {

// The maps over `a_rows` rows of A, `weight_rows` rows of packed weights (n per expert, experts
// stacked) and `group_rows` rows of scales and zeros (k / group per expert, stacked); n is one
// expert's channel count, the scales' row length.
cudaError_t encode_maps(TensorMaps* maps, ElementType element, const void* a, const void* packed_weights,
                        const void* scales, const void* zeros, long long a_rows, long long weight_rows,
                        long long group_rows, int n, int k, int group_size, int box_rows, int box_row_blocks,
                        int box_k_blocks) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = encode_function();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint32_t unit_strides[3] = {1, 1, 1};
  const CUtensorMapDataType data_type = tensor_map_data_type(element);
  const cuuint64_t element_size = static_cast<cuuint64_t>(element_bytes(element));

  const cuuint64_t a_dimensions[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(a_rows)};
  const cuuint64_t a_strides[1] = {static_cast<cuuint64_t>(k) * element_size};
  const cuuint32_t a_box[2] = {layout::kTileCols, static_cast<cuuint32_t>(box_rows)};
  CUresult result = encode(&maps->activations, data_type, 2, const_cast<void*>(a),
                           a_dimensions, a_strides, a_box, unit_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                           CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) return cudaErrorInvalidValue;

  constexpr int kWordsPerTile = layout::kTileBytes / 4;
  const cuuint64_t k_blocks = static_cast<cuuint64_t>(k / layout::kTileCols);
  const cuuint64_t w_dimensions[3] = {kWordsPerTile, k_blocks, static_cast<cuuint64_t>(weight_rows / layout::kTileRows)};
  const cuuint64_t w_strides[2] = {layout::kTileBytes, k_blocks * layout::kTileBytes};
  const cuuint32_t w_box[3] = {kWordsPerTile, static_cast<cuuint32_t>(box_k_blocks),
                               static_cast<cuuint32_t>(box_row_blocks)};
  result = encode(&maps->weights, CU_TENSOR_MAP_DATA_TYPE_UINT32, 3, const_cast<void*>(packed_weights), w_dimensions,
                  w_strides, w_box, unit_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) return cudaErrorInvalidValue;

  const cuuint64_t s_dimensions[2] = {static_cast<cuuint64_t>(n), static_cast<cuuint64_t>(group_rows)};
  const cuuint64_t s_strides[1] = {static_cast<cuuint64_t>(n) * element_size};
  const cuuint32_t s_box[2] = {static_cast<cuuint32_t>(box_row_blocks * layout::kTileRows),
                               static_cast<cuuint32_t>(scale_rows_per_box(group_size, box_k_blocks))};
  auto encode_group_rows = [&](CUtensorMap* map, const void* rows) {
    return encode(map, data_type, 2, const_cast<void*>(rows), s_dimensions, s_strides, s_box, unit_strides,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  };
  result = encode_group_rows(&maps->scales, scales);
  if (result == CUDA_SUCCESS && zeros != nullptr) result = encode_group_rows(&maps->zeros, zeros);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t encode_tensor_maps(TensorMaps* maps, ElementType element, const void* a, const void* packed_weights,
                               const void* scales, const void* zeros, int m, int n, int k, int group_size,
                               int box_rows, int box_row_blocks, int box_k_blocks) {
  return encode_maps(maps, element, a, packed_weights, scales, zeros, m, n, k / group_size, n, k, group_size, box_rows,
                     box_row_blocks, box_k_blocks);
}

cudaError_t encode_grouped_tensor_maps(TensorMaps* maps, ElementType element, const void* a,
                                       const void* packed_weights, const void* scales, const void* zeros, int rows,
                                       int experts, int n, int k, int group_size, int box_rows, int box_row_blocks,
                                       int box_k_blocks) {
  return encode_maps(maps, element, a, packed_weights, scales, zeros, rows, static_cast<long long>(experts) * n,
                     static_cast<long long>(experts) * (k / group_size), n, k, group_size, box_rows, box_row_blocks,
                     box_k_blocks);
}

}  // namespace w4a16::fused
