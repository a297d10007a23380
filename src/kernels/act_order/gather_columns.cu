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

// The two kernels share this order. A and the permutation are read only after our own wait (they
// may be the previous kernel's output). Only then may the GEMM behind us launch (it reads
// `gathered` after its own griddepcontrol.wait, which waits for this whole grid): triggering at
// entry instead let it launch while the kernel before us was still running, and its early blocks
// (and their L2 warm-up of weights, meant to fill the gather's few microseconds) then competed
// with that kernel: act-order cost +7% at 1x8192x28672 that way, against +2.5% with no
// programmatic launch at all (bench/NOTES.md, entry 24).
__device__ __forceinline__ void enter() {
  ptx::grid_dependency_wait();
  ptx::launch_dependent_grids();
}

// Eight gathered columns of one row from `source` (global or shared), packed for one 16-byte
// store; `order` holds the eight source columns (two 16-byte loads of the permutation).
__device__ __forceinline__ uint4 gather8(const uint16_t* source, const int4 (&order)[2]) {
  const int4 first = order[0], second = order[1];
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
    const int4 order[2] = {*reinterpret_cast<const int4*>(k_permutation + column),
                           *reinterpret_cast<const int4*>(k_permutation + column + 4)};
    *reinterpret_cast<uint4*>(gathered + row * k + column) = gather8(a + row * k, order);
  }
}

// Many rows: a block per row at a time copies the row into shared memory with 16-byte loads, then
// gathers from there; every global access is a coalesced 16-byte one (the direct kernel's
// scattered 2-byte loads each cost a sector: measured 76 us for 256 x 28672, bench/NOTES.md entry
// 24). The random shared-memory reads cost some bank conflicts, far cheaper than the sectors.
//
// Each phase issues kBatch independent loads per thread before using any (a plain loop waited
// out one memory latency per 16-byte chunk: 14 round trips per phase for a 28672-wide row), so a
// 512-thread block moves a row of up to 512 x 4 x 8 = 16384 columns per round trip.
constexpr int kStagedThreads = 512;
constexpr int kBatch = 4;
__global__ void __launch_bounds__(kStagedThreads) gather_staged_kernel(const uint16_t* __restrict__ a,
                                                                       const int32_t* __restrict__ k_permutation,
                                                                       uint16_t* __restrict__ gathered, int m, int k) {
  extern __shared__ uint4 staged_row[];  // k 16-bit elements
  enter();
  const int chunks = k / kColumnsPerThread;
  const uint16_t* row_elements = reinterpret_cast<const uint16_t*>(staged_row);
  for (long long row = blockIdx.x; row < m; row += gridDim.x) {
    const uint4* source = reinterpret_cast<const uint4*>(a + row * k);
    for (int first = threadIdx.x; first < chunks; first += kStagedThreads * kBatch) {
      uint4 loaded[kBatch];
      #pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = first + b * kStagedThreads;
        if (c < chunks) loaded[b] = source[c];
      }
      #pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = first + b * kStagedThreads;
        if (c < chunks) staged_row[c] = loaded[b];
      }
    }
    __syncthreads();
    uint16_t* destination = gathered + row * k;
    for (int first = threadIdx.x; first < chunks; first += kStagedThreads * kBatch) {
      int4 order[kBatch][2];
      #pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = first + b * kStagedThreads;
        if (c < chunks) {
          order[b][0] = *reinterpret_cast<const int4*>(k_permutation + c * kColumnsPerThread);
          order[b][1] = *reinterpret_cast<const int4*>(k_permutation + c * kColumnsPerThread + 4);
        }
      }
      #pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int c = first + b * kStagedThreads;
        if (c < chunks) {
          *reinterpret_cast<uint4*>(destination + c * kColumnsPerThread) = gather8(row_elements, order[b]);
        }
      }
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
    return launch_kernel(gather_staged_kernel, dim3(blocks), dim3(kStagedThreads), row_bytes, stream, programmatic, source,
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
