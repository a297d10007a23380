#pragma once
// Host-visible interface of the tensor_core_sm80 kernel family: its parameters and the table of
// compiled tile shapes. Plain C++, so the runner can include it without device code.

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <vector>

namespace w4a16::tensor_core_sm80 {

struct Params {
  const __half* a = nullptr;             // [m][k]
  const void* packed_weights = nullptr;  // packed layout, see common/packed_layout.h
  const __half* scales = nullptr;        // [k / group_size][n]
  const __half* bias = nullptr;          // [n] or nullptr
  __half* c = nullptr;                   // [m][n]
  float* partials = nullptr;             // split_k > 1: [split_k][m][n] fp32 in the workspace
  int m = 0, n = 0, k = 0, group_size = 0;
  // Group of column j is j >> group_shift: log2(group_size) for power-of-two groups, and 31 for a
  // per-channel group whose size (k) is not a power of two, where every column is in group 0. A
  // shift instead of a division keeps the per-stage address arithmetic to one instruction.
  int group_shift = 0;
  float alpha = 1.0f;
  int split_k = 1;
  // Streaming tiles only: let the next kernel in the stream launch at this kernel's entry rather
  // than after its mainloop (see gemm_tile); runner/heuristics.cpp (launch_overlap) decides.
  bool launch_dependents_at_entry = false;
  // Launched programmatically (PDL): the multistage and warp-specialized prologues then warm L2
  // with their first weights before waiting for the previous kernel. Without PDL there is nothing
  // to overlap, and the prefetch only delayed the copies (bench/NOTES.md, entry 20).
  bool programmatic = false;
};

struct TileShape {
  int tile_m, tile_n, warps_m, warps_n, warps_k, stages;
  bool streaming;         // k loop: streaming_sm80's per-warp decode loop (KernelFamily::kStreamingSm80)
  bool warp_specialized;  // k loop: TMA producer + wgmma consumers, sm_90a (KernelFamily::kWarpSpecializedSm90)
};

// One compiled instantiation: its shape, a launcher, and a probe that reports whether the running
// device has a usable binary for it (and raises its shared-memory limit once).
struct CompiledKernel {
  TileShape shape;
  cudaError_t (*launch)(const Params&, cudaStream_t, bool programmatic);
  cudaError_t (*prepare)();  // cudaErrorInvalidDeviceFunction when this device has no binary
  int (*compiled_for)();     // the virtual arch (e.g. 80) the device code was compiled from
  int (*resident_blocks_per_sm)();  // how many of its blocks an SM of this device holds at once
};

// Each instantiation group (one .cu each) appends its kernels.
void append_small_m_kernels(std::vector<CompiledKernel>& table);
void append_medium_m_kernels(std::vector<CompiledKernel>& table);
void append_large_m_kernels(std::vector<CompiledKernel>& table);
// The streaming decode tiles (kernels/streaming_sm80/instantiate.cu).
void append_streaming_sm80_kernels(std::vector<CompiledKernel>& table);
// The warp-specialized wgmma tiles (kernels/wgmma_sm90/instantiate_warp_specialized.cu); appends
// nothing unless the build targets sm_90a (W4A16_WITH_WGMMA).
void append_warp_specialized_sm90_kernels(std::vector<CompiledKernel>& table);

// Sums the split_k fp32 partial tiles in a fixed order (so results are bit-identical from run to
// run), applies alpha and bias, writes fp16 C.
cudaError_t launch_split_k_reduce(const Params& params, cudaStream_t stream, bool programmatic);

}  // namespace w4a16::tensor_core_sm80
