#include "kernels/dequant_cublas/dequant_cublas.h"

#include <cstdint>
#include <string>

#include "common/packed_layout.h"
#include "kernels/common/launch.cuh"

namespace w4a16::dequant_cublas {

namespace {

constexpr int kTilesPerBlock = 4;  // one warp per packed 16 x 64 tile

// Each warp expands one packed tile: lane L reads its 16 bytes (32 codes), scatters the dequantized
// halves into a 16 x 64 shared tile via the layout's nibble_position(), then the warp writes the
// tile back row by row with 16-byte stores, so global writes stay coalesced whatever the nibble
// order is.
__global__ void __launch_bounds__(32 * kTilesPerBlock) dequantize_kernel(const __grid_constant__ Params params,
                                                                          __half* dense) {
  __shared__ __align__(16) __half tile[kTilesPerBlock][layout::kTileRows][layout::kTileCols];
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
      const int code = static_cast<int>((words[word] >> (4 * slot)) & 0xF) - layout::kCodeOffset;
      const int row = row_block * layout::kTileRows + p.row;
      const int col = k_block * layout::kTileCols + p.col;
      const __half scale = params.scales[static_cast<long long>(col / params.group_size) * params.n + row];
      tile[warp][p.row][p.col] = __hmul(__int2half_rn(code), scale);
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

// C[row][channel] = bias[channel], so that the GEMM can add onto it with beta = 1.
__global__ void broadcast_bias_kernel(__half* c, const __half* bias, int m, int n) {
  const long long total = static_cast<long long>(m) * n;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    c[i] = bias[i % n];
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

size_t workspace_bytes(int n, int k) { return align_up(size_t(n) * k * sizeof(__half)) + kCublasWorkspaceBytes; }

cudaError_t probe_kernel() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, dequantize_kernel);
}

cublasStatus_t gemm_fp16_nt(cublasHandle_t handle, const __half* a, const __half* w, __half* c, int m, int n, int k,
                            float alpha, float beta) {
  // Column-major view: C^T (n x m, ld n) = W (k x n, ld k)^T * A^T (k x m, ld k).
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16F, k, a, CUDA_R_16F, k, &beta, c,
                      CUDA_R_16F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

Status run(const Params& params, cublasHandle_t handle, void* workspace, cudaStream_t stream) {
  __half* dense = static_cast<__half*>(workspace);
  void* cublas_workspace = static_cast<uint8_t*>(workspace) + align_up(size_t(params.n) * params.k * sizeof(__half));

  const long long tiles = static_cast<long long>(params.n / layout::kTileRows) * (params.k / layout::kTileCols);
  const int blocks = static_cast<int>((tiles + kTilesPerBlock - 1) / kTilesPerBlock);
  if (cudaError_t error = launch_kernel(dequantize_kernel, dim3(blocks), dim3(32 * kTilesPerBlock), 0, stream,
                                        /*programmatic=*/false, params, dense);
      error != cudaSuccess) {
    return Status(StatusCode::kCudaError, std::string("dequantize launch: ") + cudaGetErrorString(error));
  }
  float beta = 0.0f;
  if (params.bias != nullptr) {
    if (cudaError_t error = launch_kernel(broadcast_bias_kernel, dim3(1024), dim3(256), 0, stream,
                                          /*programmatic=*/false, params.c, params.bias, params.m, params.n);
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
          gemm_fp16_nt(handle, params.a, dense, params.c, params.m, params.n, params.k, params.alpha, beta);
      error != CUBLAS_STATUS_SUCCESS) {
    return Status(StatusCode::kCublasError, std::string("cublasGemmEx: ") + cublasGetStatusString(error));
  }
  return Status::success();
}

}  // namespace w4a16::dequant_cublas
