#include "kernels/dequant_cublas/dequant_cublas.h"

#include <cstdint>
#include <string>

#include "common/element_type.h"
#include "common/packed_layout.h"
#include "kernels/common/element.cuh"
#include "kernels/common/launch.cuh"

namespace w4a16::dequant_cublas {

namespace {

constexpr int kTilesPerBlock = 4;  // one warp per packed 16 x 64 tile

// Each warp expands one packed tile: lane L reads its 16 bytes (32 codes), scatters the dequantized
// weights into a 16 x 64 shared tile via the layout's nibble_position(), then the warp writes the
// tile back row by row with 16-byte stores, so global writes stay coalesced whatever the nibble
// order is. w = s * (q - z) in fp32 (exact for integer zero points, whose q - z is a small
// integer), then rounded to the element type (z = 8 without zeros).
template <class E, bool kZeros>
__global__ void __launch_bounds__(32 * kTilesPerBlock) dequantize_kernel(const __grid_constant__ Params params,
                                                                          typename E::Scalar* dense) {
  using Scalar = typename E::Scalar;
  __shared__ __align__(16) Scalar tile[kTilesPerBlock][layout::kTileRows][layout::kTileCols];
  const Scalar* scales = static_cast<const Scalar*>(params.scales);
  const Scalar* zeros = static_cast<const Scalar*>(params.zeros);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int k_blocks = params.k / layout::kTileCols;
  const long long tile_index = static_cast<long long>(blockIdx.x) * kTilesPerBlock + warp;
  const long long tiles = static_cast<long long>(params.n / layout::kTileRows) * k_blocks;
  if (tile_index >= tiles) return;  // whole warp leaves together; no block-wide barrier below
  const int row_block = static_cast<int>(tile_index / k_blocks);
  const int k_block = static_cast<int>(tile_index % k_blocks);

  const uint8_t* packed = static_cast<const uint8_t*>(params.packed_weights) +
                          layout::tile_offset_bytes(row_block, k_block, params.k);
  const uint4 bytes = reinterpret_cast<const uint4*>(packed)[lane];
  const uint32_t words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
  #pragma unroll
  for (int word = 0; word < 4; ++word) {
    #pragma unroll
    for (int slot = 0; slot < 8; ++slot) {
      const layout::TilePosition p = layout::nibble_position(lane, word, slot);
      const float code = static_cast<float>((words[word] >> (4 * slot)) & 0xF);
      const int row = row_block * layout::kTileRows + p.row;
      const int col = k_block * layout::kTileCols + p.col;
      const long long group_index = static_cast<long long>(col / params.group_size) * params.n + row;
      const float zero = kZeros ? E::to_float(zeros[group_index]) : static_cast<float>(kSymmetricZeroPoint);
      tile[warp][p.row][p.col] = E::from_float(E::to_float(scales[group_index]) * (code - zero));
    }
  }
  __syncwarp();
  // 16 rows x 128 bytes = 128 chunks of 16 bytes, 4 per lane.
  #pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int chunk = i * 32 + lane;
    const int row = chunk / 8, column_chunk = chunk % 8;
    const long long offset = static_cast<long long>(row_block * layout::kTileRows + row) * params.k +
                             k_block * layout::kTileCols + column_chunk * 8;
    *reinterpret_cast<uint4*>(dense + offset) = *reinterpret_cast<const uint4*>(&tile[warp][row][column_chunk * 8]);
  }
}

// C[row][channel] = bias[channel], so that the GEMM can add onto it with beta = 1. Copies 16-bit
// values, whatever their type.
__global__ void broadcast_bias_kernel(uint16_t* c, const uint16_t* bias, int m, int n) {
  const long long total = static_cast<long long>(m) * n;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    c[i] = bias[i % n];
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

constexpr size_t kDenseElementBytes = 2;  // fp16 and bf16 alike

template <class E, bool kZeros>
cudaError_t launch_dequantize(const Params& params, void* dense, cudaStream_t stream) {
  const long long tiles = static_cast<long long>(params.n / layout::kTileRows) * (params.k / layout::kTileCols);
  const int blocks = static_cast<int>((tiles + kTilesPerBlock - 1) / kTilesPerBlock);
  return launch_kernel(dequantize_kernel<E, kZeros>, dim3(blocks), dim3(32 * kTilesPerBlock), 0, stream,
                       /*programmatic=*/false, params, static_cast<typename E::Scalar*>(dense));
}

template <class E>
cudaError_t launch_dequantize(const Params& params, void* dense, cudaStream_t stream) {
  return params.zeros != nullptr ? launch_dequantize<E, true>(params, dense, stream)
                                 : launch_dequantize<E, false>(params, dense, stream);
}

}  // namespace

size_t workspace_bytes(int n, int k) { return align_up(size_t(n) * k * kDenseElementBytes) + kCublasWorkspaceBytes; }

cudaError_t probe_kernel() {
  cudaFuncAttributes attributes;
  return with_element(ElementType::kFloat16, [&](auto e) {
    return cudaFuncGetAttributes(&attributes, dequantize_kernel<decltype(e), false>);
  });
}

cublasStatus_t gemm_nt(cublasHandle_t handle, ElementType element, const void* a, const void* w, void* c, int m, int n,
                       int k, float alpha, float beta) {
  // Column-major view: C^T (n x m, ld n) = W (k x n, ld k)^T * A^T (k x m, ld k).
  const cudaDataType_t type = cuda_data_type(element);
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, type, k, a, type, k, &beta, c, type, n,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

Status run(const Params& params, cublasHandle_t handle, void* workspace, cudaStream_t stream) {
  void* dense = workspace;
  void* cublas_workspace = static_cast<uint8_t*>(workspace) + align_up(size_t(params.n) * params.k * kDenseElementBytes);

  const cudaError_t dequantized =
      with_element(params.element, [&](auto e) { return launch_dequantize<decltype(e)>(params, dense, stream); });
  if (cudaError_t error = dequantized; error != cudaSuccess) {
    return Status(StatusCode::kCudaError, std::string("dequantize launch: ") + cudaGetErrorString(error));
  }
  float beta = 0.0f;
  if (params.bias != nullptr) {
    if (cudaError_t error = launch_kernel(broadcast_bias_kernel, dim3(1024), dim3(256), 0, stream,
                                          /*programmatic=*/false, static_cast<uint16_t*>(params.c),
                                          static_cast<const uint16_t*>(params.bias), params.m, params.n);
        error != cudaSuccess) {
      return Status(StatusCode::kCudaError, std::string("bias broadcast launch: ") + cudaGetErrorString(error));
    }
    beta = 1.0f;
  }
  // cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace is set after it.
  if (cublasStatus_t error = cublasSetStream(handle, stream); error != CUBLAS_STATUS_SUCCESS) {
    return Status(StatusCode::kCublasError, std::string("cublasSetStream: ") + cublasGetStatusString(error));
  }
  if (cublasStatus_t error = cublasSetWorkspace(handle, cublas_workspace, kCublasWorkspaceBytes);
      error != CUBLAS_STATUS_SUCCESS) {
    return Status(StatusCode::kCublasError, std::string("cublasSetWorkspace: ") + cublasGetStatusString(error));
  }
  if (cublasStatus_t error =
          gemm_nt(handle, params.element, params.a, dense, params.c, params.m, params.n, params.k, params.alpha, beta);
      error != CUBLAS_STATUS_SUCCESS) {
    return Status(StatusCode::kCublasError, std::string("cublasGemmEx: ") + cublasGetStatusString(error));
  }
  return Status::success();
}

}  // namespace w4a16::dequant_cublas
