// The streaming decode tiles (mainloop.cuh): TileM rows (8: m <= 8, 16: m <= 16), WarpsN warps of
// 16 * FragmentsN channels side by side, WarpsK warps splitting the k range, Stages k-blocks in
// flight per warp. Wide warp tiles (64 channels, FragmentsN = 4) are the point: the per-k-block
// costs that do not scale with the channels (activation loads, loop, fold) are paid once per 2 KB
// of weights instead of per 512 bytes.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_streaming_sm80_kernels(std::vector<CompiledKernel>& table) {
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages Wgmma Streaming
  // 64 channels per warp, two k-blocks in flight.
  table.push_back(compiled_kernel<Tile<8, 64, 1, 1, 8, 2, false, true>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 2, 4, 2, false, true>>());
  table.push_back(compiled_kernel<Tile<8, 256, 1, 4, 2, 2, false, true>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 1, 16, 2, false, true>>());
  // 32 channels per warp: twice the blocks for layers too small to fill the GPU otherwise.
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 8, 3, false, true>>());
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 8, 4, false, true>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 2, 4, 4, false, true>>());
  // 16 rows (two 8-row fragments per warp); wider or deeper variants spill at 128 registers.
  table.push_back(compiled_kernel<Tile<16, 32, 1, 1, 8, 2, false, true>>());
  table.push_back(compiled_kernel<Tile<16, 64, 1, 2, 4, 2, false, true>>());
}

}  // namespace w4a16::tensor_core_sm80
