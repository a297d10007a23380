// A probe, not part of the library: how fast can the decode kernels' *weight access pattern* read
// the packed weights, with no math, no activations and no scales? (bench/NOTES.md, entry 30.)
//
// The packed layout (src/common/packed_layout.h) stores row block r's k-block b at (r * kb + b) *
// 512 bytes. A streaming decode tile gives each warp F row blocks and a share of the k-blocks;
// lane L reads the 16 bytes at 16 L of each 512-byte tile. This probe reads exactly those bytes in
// three orders and times them against the bench's read floor (one 16 KB burst per 256-thread
// block, the whole buffer in address order):
//   contiguous   warp w of W takes k-blocks [w R, (w + 1) R), R = kb / W (today's kernels);
//   interleaved  warp w takes runs of U k-blocks: [U w, U w + U), [U (w + W), ...), ... so the W
//                warps of a block read W U consecutive tiles of a row block at a time;
// each with a ring of D k-blocks of registers per warp (D F 16-byte loads in flight per lane), and
// `shared` bytes of dynamic shared memory to hold the blocks per SM where the real tile's ring
// holds them. `split` > 1 cuts each row group's k range into that many blocks (the access pattern
// of split-K across blocks, without its reduction): 64-channel warps with finer blocks.
//
// Build and run on the GPU machine: nvcc -O3 -arch=sm_90a -o read_patterns read_patterns.cu && ./read_patterns
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                                  \
  do {                                                                                            \
    cudaError_t e_ = (x);                                                                         \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__global__ void floor_kernel(const uint4* data, size_t vectors, unsigned* sink) {
  const size_t base = blockIdx.x * size_t(1024) + threadIdx.x;
  uint4 v[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const size_t i = base + size_t(u) * 256;
    v[u] = i < vectors ? __ldcs(data + i) : make_uint4(0, 0, 0, 0);
  }
  unsigned f = 0;
#pragma unroll
  for (int u = 0; u < 4; ++u) f ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  if (f == 0x9E3779B9u) *sink = f;
}

// Block: W warps over F row blocks. unit == 0: contiguous k share per warp; else runs of `unit`.
template <int F, int D>
__global__ void pattern_kernel(const uint8_t* packed, int all_k_blocks, int warps, int unit, int split, unsigned* sink) {
  extern __shared__ uint8_t shared[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int first_row_block = (blockIdx.x / split) * F;
  const long long stride = static_cast<long long>(all_k_blocks) * 512;
  // This block's slice of k: k_blocks of them from first_k_block (split divides all_k_blocks).
  const int k_blocks = all_k_blocks / split;
  packed += static_cast<long long>(blockIdx.x % split) * k_blocks * 512;
  // The warp's i-th k-block.
  int count;
  if (unit == 0) {
    const int begin = k_blocks * warp / warps, end = k_blocks * (warp + 1) / warps;
    count = end - begin;
  } else {
    const int runs = k_blocks / unit;  // k_blocks % unit == 0 assumed
    count = ((runs - warp + warps - 1) / warps) * unit;
    if (warp >= runs) count = 0;
  }
  auto block_of = [&](int i) {
    if (unit == 0) return k_blocks * warp / warps + i;
    const int run = i / unit, within = i % unit;
    return (run * warps + warp) * unit + within;
  };
  auto address = [&](int f, int b) { return packed + (first_row_block + f) * stride + b * 512LL + lane * 16; };
  uint4 ring[D][F];
  unsigned folded = 0;
#pragma unroll
  for (int s = 0; s < D; ++s)
#pragma unroll
    for (int f = 0; f < F; ++f) ring[s][f] = s < count ? load_stream(address(f, block_of(s))) : make_uint4(0, 0, 0, 0);
  for (int i = 0; i < count; i += D) {
#pragma unroll
    for (int s = 0; s < D; ++s) {
#pragma unroll
      for (int f = 0; f < F; ++f) folded ^= ring[s][f].x ^ ring[s][f].y ^ ring[s][f].z ^ ring[s][f].w;
      const int next = i + D + s;
#pragma unroll
      for (int f = 0; f < F; ++f) ring[s][f] = next < count ? load_stream(address(f, block_of(next))) : make_uint4(0, 0, 0, 0);
    }
  }
  if (folded == 0x9E3779B9u) *sink = folded + shared[0];
}

struct Case {
  const char* name;
  int n, k;
};

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const Case cases[] = {{"28672x8192", 28672, 8192}, {"8192x28672", 8192, 28672}, {"8192x8192", 8192, 8192},
                        {"11008x4096", 11008, 4096}, {"4096x4096", 4096, 4096}};
  unsigned* sink;
  CHECK(cudaMalloc(&sink, 4));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  for (const Case& c : cases) {
    const size_t bytes = size_t(c.n) * c.k / 2;
    const int copies = int(std::max<size_t>(2, (size_t(480) << 20) / bytes + 1));
    uint8_t* data;
    CHECK(cudaMalloc(&data, bytes * copies));
    CHECK(cudaMemset(data, 0x5a, bytes * copies));
    const int k_blocks = c.k / 64;
    auto time = [&](auto launch) {
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      const int per_graph = copies * std::max(1, 40 / copies);
      CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      for (int i = 0; i < per_graph; ++i) launch(data + (i % copies) * bytes);
      CHECK(cudaStreamEndCapture(stream, &graph));
      CHECK(cudaGraphInstantiate(&exec, graph, 0));
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      for (int w = 0; w < 3; ++w) CHECK(cudaGraphLaunch(exec, stream));
      std::vector<float> t;
      for (int r = 0; r < 9; ++r) {
        CHECK(cudaEventRecord(a, stream));
        CHECK(cudaGraphLaunch(exec, stream));
        CHECK(cudaEventRecord(b, stream));
        CHECK(cudaEventSynchronize(b));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.0f / per_graph);
      }
      CHECK(cudaGetLastError());
      std::sort(t.begin(), t.end());
      CHECK(cudaGraphExecDestroy(exec));
      CHECK(cudaGraphDestroy(graph));
      return t[t.size() / 2];
    };
    const float floor_us = time([&](const uint8_t* p) {
      const size_t vectors = bytes / 16;
      floor_kernel<<<unsigned((vectors + 1023) / 1024), 256, 0, stream>>>(reinterpret_cast<const uint4*>(p), vectors, sink);
    });
    std::printf("%-11s floor %7.2f us (%.0f GB/s)\n", c.name, floor_us, bytes / floor_us * 1e-3);
    auto run = [&](auto kernel, int F, int D, int warps, int unit, int shared_bytes, int split = 1) {
      if (c.n % (16 * F) != 0 || k_blocks % split != 0) return;
      if (unit != 0 && (k_blocks / split) % unit != 0) return;
      CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
      int per_sm = 0;
      CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, warps * 32, shared_bytes));
      const int blocks = c.n / (16 * F) * split;
      const float us = time([&](const uint8_t* p) {
        kernel<<<blocks, warps * 32, shared_bytes, stream>>>(p, k_blocks, warps, unit, split, sink);
      });
      std::printf("%-11s F%d D%d W%-2d unit %-2d split %d smem %3d KB  %4d blocks %d/SM  %7.2f us  %5.1f%% of floor\n",
                  c.name, F, D, warps, unit, split, shared_bytes / 1024, blocks, per_sm, us, 100.0f * floor_us / us);
    };
    // Today's default tiles' shape (shared memory as the real ring holds blocks per SM):
    // st_m8n64_w1x1x8_s3 ~79 KB (2/SM), st_m8n64_w1x1x16_s3 ~158 KB (1/SM), st_m8n32_w1x1x16_s3 ~100 KB,
    // st_m8n32_w1x1x8_s3 ~60 KB (3/SM).
    // 64-channel warps with split-K across blocks (entry 30's open question): today's shared
    // memory per block, and the 8-warp tile's 80 KB cut to what 3 blocks per SM allow.
    for (int split : {2, 4}) {
      run(pattern_kernel<4, 2>, 4, 2, 8, 0, 79 * 1024, split);
      run(pattern_kernel<4, 2>, 4, 2, 8, 0, 60 * 1024, split);
      run(pattern_kernel<4, 3>, 4, 3, 8, 0, 60 * 1024, split);
      run(pattern_kernel<4, 2>, 4, 2, 16, 0, 100 * 1024, split);
    }
    for (int unit : {0, 1}) {  // (runs of 2 and 4 measured like 1: entry 30)
      run(pattern_kernel<4, 2>, 4, 2, 8, unit, 79 * 1024);
      run(pattern_kernel<4, 3>, 4, 3, 8, unit, 79 * 1024);
      run(pattern_kernel<4, 2>, 4, 2, 16, unit, 158 * 1024);
      run(pattern_kernel<4, 3>, 4, 3, 16, unit, 158 * 1024);
      run(pattern_kernel<2, 3>, 2, 3, 16, unit, 100 * 1024);
      run(pattern_kernel<2, 3>, 2, 3, 8, unit, 60 * 1024);
      run(pattern_kernel<2, 4>, 2, 4, 8, unit, 0);
      run(pattern_kernel<4, 4>, 4, 4, 8, unit, 0);
      run(pattern_kernel<1, 4>, 1, 4, 8, unit, 0);
      run(pattern_kernel<1, 8>, 1, 8, 8, unit, 0);
    }
    CHECK(cudaFree(data));
  }
  return 0;
}
