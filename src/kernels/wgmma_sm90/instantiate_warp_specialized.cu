// The warp-specialized wgmma tiles (warp_specialized.cuh). Built only into sm_90a binaries' table
// (W4A16_WITH_WGMMA). Two consumer warpgroups of 64 channels each (128-channel tiles) or 128
// (256-channel tiles); the tile's m is the wgmma's N.
//
// Stage counts fill shared memory: a slot holds two k-blocks, i.e. TileN * 64 bytes of weights,
// 2 * TileM * 128 of activations and up to four scale rows, rounded up to 1 KB (128 channels: 17,
// 25 and 41 KB for 32, 64 and 128 rows; 256 channels: 26, 34 and 50 KB). The 32- and 64-row tiles
// of 128 channels fit two blocks per SM (~100 KB each) so one block's epilogue and ramp-up overlap
// the other's streaming; the 128-row tiles (64 fp32 accumulators per consumer thread and half)
// and all 256-channel tiles take the whole SM, with 168 registers per thread at launch. Measured and left out (bench/NOTES.md,
// entry 18): four consumer warpgroups (2 x 2 along m and n, 96 registers), deeper pipelines,
// and clusters of 2 or 4 blocks sharing the activation tile by TMA multicast.
#include "kernels/wgmma_sm90/warp_specialized.cuh"

namespace w4a16::tensor_core_sm80 {

void append_warp_specialized_sm90_kernels(std::vector<CompiledKernel>& table) {
#if defined(W4A16_WITH_WGMMA)
  using wgmma_sm90::compiled_warp_specialized_kernel;
  //                                                  TileM TileN WarpsM WarpsN WarpsK Stages
  table.push_back(compiled_warp_specialized_kernel<Tile<32, 128, 1, 8, 1, 6, KLoop::kWarpSpecialized>>());
  table.push_back(compiled_warp_specialized_kernel<Tile<64, 128, 1, 8, 1, 4, KLoop::kWarpSpecialized>>());
  table.push_back(compiled_warp_specialized_kernel<Tile<128, 128, 1, 8, 1, 5, KLoop::kWarpSpecialized>>());
  // 256 channels: 32 per warp, so every activation tile read from L2 feeds twice the weights.
  table.push_back(compiled_warp_specialized_kernel<Tile<32, 256, 1, 8, 1, 8, KLoop::kWarpSpecialized>>());
  table.push_back(compiled_warp_specialized_kernel<Tile<64, 256, 1, 8, 1, 6, KLoop::kWarpSpecialized>>());
  table.push_back(compiled_warp_specialized_kernel<Tile<128, 256, 1, 8, 1, 4, KLoop::kWarpSpecialized>>());
#else
  (void)table;
#endif
}

}  // namespace w4a16::tensor_core_sm80
