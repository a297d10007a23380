#include "kernels/act_order/gather_columns.h"

#include <algorithm>

#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"

namespace w4a16::act_order {

namespace {

constexpr int kThreads = 256;
constexpr int kColumnsPerThread = 8;  // one 16-byte store of the gathered row
// From this many rows on, rows are staged through shared memory (gather_staged_kernel); below it
// the grid would be too small to stream A at bandwidth, and the direct kernel's latency is lower.
constexpr int kStagedMinRows = 64;

// The two kernels share this order: the GEMM behind may launch now (it reads `gathered` only
// after its own griddepcontrol.wait, which waits for this whole grid), and A and the permutation
// are read only after our own wait (they may be the previous kernel's output).
__device__ __forceinline__ void enter() {
  ptx::launch_dependent_grids();
  ptx::grid_dependency_wait();
}

// Eight gathered columns of one row from `source` (global or shared), packed for one 16-byte store.
__device__ __forceinline__ uint4 gather8(const uint16_t* source, const int32_t* k_permutation, int column) {
  const int4 first = *reinterpret_cast<const int4*>(k_permutation + column);
  const int4 second = *reinterpret_cast<const int4*>(k_permutation + column + 4);
  const int from[kColumnsPerThread] = {first.x, first.y, first.z, first.w, second.x, second.y, second.z, second.w};
  uint32_t packed[kColumnsPerThread / 2];
  #pragma unroll
  for (int i = 0; i < kColumnsPerThread / 2; ++i) {
    packed[i] = uint32_t(source[from[2 * i]]) | (uint32_t(source[from[2 * i + 1]]) << 16);
  }
  return make_uint4(packed[0], packed[1], packed[2], packed[3]);
}

// Few rows (decode): one thread per 8 consecutive gathered columns of one row, reading A's row
// straight from global memory (after the first touch it sits in L1/L2; every thread of a row
// reads it). Grid-stride over (row, chunk) in 64 bits: m * k may pass 2^31.
__global__ void __launch_bounds__(kThreads) gather_direct_kernel(const uint16_t* __restrict__ a,
                                                                 const int32_t* __restrict__ k_permutation,
                                                                 uint16_t* __restrict__ gathered, int m, int k) {
  enter();
  const long long chunks_per_row = k / kColumnsPerThread;
  const long long chunks = chunks_per_row * m;
  for (long long chunk = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x; chunk < chunks;
       chunk += static_cast<long long>(gridDim.x) * kThreads) {
    const long long row = chunk / chunks_per_row;
    const int column = static_cast<int>(chunk % chunks_per_row) * kColumnsPerThread;
    *reinterpret_cast<uint4*>(gathered + row * k + column) = gather8(a + row * k, k_permutation, column);
  }
}

// Many rows: a block per row at a time copies the row into shared memory with 16-byte loads, then
// gathers from there; every global access is a coalesced 16-byte one, so the pass runs at
// memory bandwidth (the direct kernel's scattered 2-byte loads each cost a sector: measured 76 us
// instead of ~5 for 256 x 28672, bench/NOTES.md entry 24). The random shared-memory reads cost
// some bank conflicts, far cheaper than the sectors.
__global__ void __launch_bounds__(kThreads) gather_staged_kernel(const uint16_t* __restrict__ a,
                                                                 const int32_t* __restrict__ k_permutation,
                                                                 uint16_t* __restrict__ gathered, int m, int k) {
  extern __shared__ uint4 staged_row[];  // k 16-bit elements
  enter();
  const int chunks = k / kColumnsPerThread;
  for (long long row = blockIdx.x; row < m; row += gridDim.x) {
    const uint4* source = reinterpret_cast<const uint4*>(a + row * k);
    for (int c = threadIdx.x; c < chunks; c += kThreads) staged_row[c] = source[c];
    __syncthreads();
    const uint16_t* row_elements = reinterpret_cast<const uint16_t*>(staged_row);
    uint16_t* destination = gathered + row * k;
    for (int c = threadIdx.x; c < chunks; c += kThreads) {
      *reinterpret_cast<uint4*>(destination + c * kColumnsPerThread) =
          gather8(row_elements, k_permutation, c * kColumnsPerThread);
    }
    __syncthreads();  // the next row overwrites the stage
  }
}

}  // namespace

size_t gathered_bytes(int m, int k) {
  if (m <= 0 || k <= 0) return 0;
  return (size_t(m) * size_t(k) * 2 + 255) / 256 * 256;
}

cudaError_t gather_columns(const void* a, const int32_t* k_permutation, void* gathered, int m, int k,
                           cudaStream_t stream, bool programmatic, int shared_limit) {
  const auto* source = static_cast<const uint16_t*>(a);
  auto* destination = static_cast<uint16_t*>(gathered);
  const size_t row_bytes = size_t(k) * 2;
  if (m >= kStagedMinRows && row_bytes <= size_t(shared_limit)) {
    // Rows are independent; a few waves' worth of blocks, grid-stride beyond.
    const int blocks = std::min(m, 4096);
    return launch_kernel(gather_staged_kernel, dim3(blocks), dim3(kThreads), row_bytes, stream, programmatic, source,
                         k_permutation, destination, m, k);
  }
  const long long chunks = static_cast<long long>(m) * (k / kColumnsPerThread);
  const int blocks = static_cast<int>(std::min<long long>((chunks + kThreads - 1) / kThreads, 65536));
  return launch_kernel(gather_direct_kernel, dim3(blocks), dim3(kThreads), 0, stream, programmatic, source,
                       k_permutation, destination, m, k);
}

int prepare() {
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaFuncSetAttribute(gather_staged_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, limit) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return limit;
}

int compiled_arch() {
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, gather_direct_kernel) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return attributes.ptxVersion;  // e.g. 90: the virtual arch the running body came from
}

}  // namespace w4a16::act_order
