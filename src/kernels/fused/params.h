#pragma once
// Host-visible interface of the fused kernel families (multistage, streaming, warp-specialized):
// their launch parameters and the table of compiled kernels. Plain C++, so the runner can include
// it without device code.

#include <cuda_runtime_api.h>

#include <vector>

#include "w4a16/format.h"
#include "w4a16/runner.h"

namespace w4a16::fused {

// 16-bit operands are untyped here: the kernel's element type (Params belongs to a kernel
// compiled for one Format) says what they hold.
struct Params {
  const void* a = nullptr;               // [m][k]
  const void* packed_weights = nullptr;  // packed layout, see common/packed_layout.h
  const void* scales = nullptr;          // [k / group_size][n]
  const void* zeros = nullptr;           // [k / group_size][n]; read only by the zero-point ops' kernels
  const void* bias = nullptr;            // [n] or nullptr
  void* c = nullptr;                     // [m][n]
  float* partials = nullptr;             // split_k > 1: [split_k][m][n] fp32 in the workspace
  int m = 0, n = 0, k = 0, group_size = 0;
  // Group of column j is j >> group_shift: log2(group_size) for power-of-two groups, and 31 for a
  // per-channel group whose size (k) is not a power of two, where every column is in group 0. A
  // shift instead of a division keeps the per-stage address arithmetic to one instruction.
  int group_shift = 0;
  float alpha = 1.0f;
  int split_k = 1;
  // Streaming tiles only: let the next kernel in the stream launch at this kernel's entry rather
  // than after its mainloop (see fused/kernel.cuh); runner/heuristics.cpp (launch_overlap) decides.
  bool launch_dependents_at_entry = false;
  // Launched programmatically (PDL): the multistage and warp-specialized prologues then warm L2
  // with their first weights before waiting for the previous kernel. Without PDL there is nothing
  // to overlap, and the prefetch only delayed the copies (bench/NOTES.md, entry 20).
  bool programmatic = false;
  // Streaming tiles only: the runner's act-order gather runs just before this kernel, which was
  // launched behind it programmatically, so each warp warms L2 with its first kWarmKBlocks
  // k-blocks of weights while the gather runs (streaming/mainloop.cuh). Without such a kernel in
  // front, the same prefetch delayed the warps' own first copies (bench/NOTES.md, entry 20).
  bool warm_l2_before_wait = false;
};

// A grouped (mixture-of-experts) launch: E experts of one shape, their weights back to back, and
// the activation rows sorted by expert, expert e owning rows [expert_offsets[e],
// expert_offsets[e + 1]) of A and C. The offsets live on the device (the routing kernel wrote
// them), so the grid is sized for the worst case and each block finds its expert there
// (grouped_scheduler.cuh). `base` holds what every expert shares (n, k, group, alpha) and expert
// 0's pointers; base.m is the number of rows (positions) the grid was sized for.
struct GroupedParams {
  Params base;
  const int* expert_offsets = nullptr;  // [experts + 1], device; clamped to [0, base.m] on use
  const float* row_weights = nullptr;   // [base.m] or nullptr: C's row r is multiplied by it
  int experts = 0;
  // Upper bound on the (expert, m-tile) pairs: an expert of r > 0 rows has ceil(r / TileM) <=
  // r / TileM + 1 tiles, so all of them have at most rows / TileM + min(experts, rows). The grid
  // is m_slots x n-tiles; blocks past the real pairs return at once.
  int m_slots = 0;
  long long weight_bytes_per_expert = 0;  // n * k / 2
  long long groups_per_expert = 0;        // (k / group_size) * n elements of scales (and zeros)
};

// A compiled tile as the host sees it: its family (which mainloop) and its shape (Tile<...>).
struct TileShape {
  KernelFamily family;
  int tile_m, tile_n, warps_m, warps_n, warps_k, stages;
};

// Why a tile is compiled (instances.def): the heuristics choose it for some problem, or only the
// profiler (GemmRunner::profile) can pick it. A CPU test keeps the marks true.
enum class TileRole { kHeuristic, kProfilerOnly };

// One compiled instantiation (a tile in one format): a launcher, and probes that report whether the
// running device has a usable binary for it (and raise its shared-memory limit once).
struct CompiledKernel {
  TileShape shape;
  TileRole role;
  Format format;
  cudaError_t (*launch)(const Params&, cudaStream_t, bool programmatic);
  cudaError_t (*prepare)();  // cudaErrorInvalidDeviceFunction when this device has no binary
  int (*compiled_for)();     // the virtual arch (e.g. 80) the device code was compiled from
  int (*resident_blocks_per_sm)();  // how many of its blocks an SM of this device holds at once
  // The grouped (mixture-of-experts) kernel of the same tile, for the tiles that have one (the
  // heuristic multistage and streaming tiles); null otherwise.
  cudaError_t (*launch_grouped)(const GroupedParams&, cudaStream_t) = nullptr;
  cudaError_t (*prepare_grouped)() = nullptr;
};

// Every compiled kernel of instances.def in every format (the registry CMake generates from the
// instance table: one instantiation group per .cu). Warp-specialized tiles only in builds that
// target sm_90a.
void append_compiled_kernels(std::vector<CompiledKernel>& table);

// Sums the split_k fp32 partial tiles in a fixed order (so results are bit-identical from run to
// run), applies alpha and bias, writes C in `element`.
cudaError_t launch_split_k_reduce(const Params& params, ElementType element, cudaStream_t stream, bool programmatic);

}  // namespace w4a16::fused
