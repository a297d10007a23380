// The streaming decode tiles (mainloop.cuh): TileM rows (8: m <= 8, 16: m <= 16), WarpsN warps of
// 16 * FragmentsN channels side by side, WarpsK warps splitting the k range, and a per-warp ring
// of Stages k-blocks (weights, activations, scales). Wide warp tiles (64 channels, FragmentsN = 4) amortize the per-k-block
// costs that do not grow with the channels (activation loads, loop, fold) over 2 KB of weights;
// narrow ones (16-32 channels) give layers as small as 4096 x 4096 enough blocks without split-K.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_streaming_sm80_kernels(std::vector<CompiledKernel>& table) {
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages
  // 64 channels per warp (a stage is 3.3 KB per warp at m <= 8).
  table.push_back(compiled_kernel<Tile<8, 64, 1, 1, 8, 3, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 1, 8, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 2, 4, 3, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 256, 1, 4, 2, 3, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 1, 16, 3, KLoop::kStreaming>>());
  // 32 and 16 channels per warp (2.1 and 1.6 KB stages): more blocks for small layers.
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 8, 3, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 8, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 8, 6, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 32, 1, 1, 16, 3, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 2, 4, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<8, 16, 1, 1, 8, 6, KLoop::kStreaming>>());
  // 16 rows (two 8-row fragments per warp).
  table.push_back(compiled_kernel<Tile<16, 64, 1, 1, 8, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<16, 32, 1, 1, 8, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<16, 64, 1, 2, 4, 4, KLoop::kStreaming>>());
  table.push_back(compiled_kernel<Tile<16, 32, 1, 1, 16, 3, KLoop::kStreaming>>());
}

}  // namespace w4a16::tensor_core_sm80
