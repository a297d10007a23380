#include "kernels/dequant_cublas/dequant_cublas.h"

#include <cstdint>
#include <string>

#include "common/element_type.h"
#include "common/packed_layout.h"
#include "kernels/common/element.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/dequant_cublas/dense_gemm.h"

namespace w4a16::dequant_cublas {

namespace {

constexpr int kTilesPerBlock = 4;  // one warp per packed 16 x 64 tile
// The staging tile's row pitch: 64 elements + 8 of padding (144 bytes). Lane L writes rows L / 4
// and L / 4 + 8 at the column pairs starting at 16 j + 2 (L % 4): with a 128-byte pitch those 32
// four-byte stores fall into 4 banks (8-way conflict); 144 bytes (36 words) put row r at bank
// offset 4 r, so the 32 lanes hit 32 banks. 144 is a multiple of 16, so the 16-byte reads of the
// copy-out stay aligned.
constexpr int kStagePitch = layout::kTileCols + 8;

// One warp per packed tile (row block, k block): unpack the lane's 32 codes (its four words,
// common/packed_layout.h), dequantize each as s * (q - z) in fp32 (q exact, q - z exact, one
// rounding to the element type at the end: the CPU reference's definition), stage the 16 x 64
// tile in shared memory, then write it out as 16-byte rows of the dense [n][k] matrix.
//
// The word of k slice j holds, for r = L / 4 and c = 2 * (L % 4), the pairs (in nibble slots i and
// i + 4, 16 bits apart) of register a_i: a0 = W[r][c, c+1], a1 = W[r+8][c, c+1], a2 = W[r][c+8,
// c+9], a3 = W[r+8][c+8, c+9], columns counted from 16 j. All 16 columns of a slice sit in one
// group (groups are 32, 64, 128 or k, all multiples of 16), so each word needs the scales (and
// zero points) of two channels, r and r + 8.
template <class E, bool kZeros>
__global__ void __launch_bounds__(32 * kTilesPerBlock) dequantize_kernel(const __grid_constant__ Params params,
                                                                          typename E::Scalar* dense) {
  using Scalar = typename E::Scalar;
  __shared__ __align__(16) Scalar tile[kTilesPerBlock][layout::kTileRows][kStagePitch];
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
  const int r = lane / 4, c = 2 * (lane % 4);
  const int channel = row_block * layout::kTileRows + r;
  // A code q as an exact float without a conversion instruction: 2^23 + q has q in its mantissa.
  const auto code = [](uint32_t word, int slot) {
    return __uint_as_float(0x4B000000u | ((word >> (4 * slot)) & 0xFu)) - 8388608.0f;
  };
  #pragma unroll
  for (int j = 0; j < 4; ++j) {
    const long long group_row = static_cast<long long>((k_block * layout::kTileCols + 16 * j) / params.group_size) * params.n;
    const float scale[2] = {E::to_float(scales[group_row + channel]), E::to_float(scales[group_row + channel + 8])};
    float zero[2] = {float(kSymmetricZeroPoint), float(kSymmetricZeroPoint)};
    if constexpr (kZeros) {
      zero[0] = E::to_float(zeros[group_row + channel]);
      zero[1] = E::to_float(zeros[group_row + channel + 8]);
    }
    #pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int high_row = i & 1;  // a1, a3: channel r + 8
      const int column = 16 * j + c + ((i & 2) ? 8 : 0);
      const float low = scale[high_row] * (code(words[j], i) - zero[high_row]);
      const float high = scale[high_row] * (code(words[j], i + 4) - zero[high_row]);
      *reinterpret_cast<typename E::Pair*>(&tile[warp][r + 8 * high_row][column]) = E::pair(low, high);
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

Status run(const Params& params, cublasHandle_t handle, const DenseGemm* lt, size_t lt_candidate, void* workspace,
           cudaStream_t stream) {
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
  if (lt != nullptr) {
    // cuBLASLt takes the stream and workspace per call: no handle state to set.
    if (cublasStatus_t error = lt->run(lt_candidate, params.a, dense, params.c, params.alpha, beta, cublas_workspace, stream);
        error != CUBLAS_STATUS_SUCCESS) {
      return Status(StatusCode::kCublasError, std::string("cublasLtMatmul: ") + cublasGetStatusString(error));
    }
    return Status::success();
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
