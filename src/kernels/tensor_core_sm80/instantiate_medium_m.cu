// Medium tiles (m 17..64): warps cover 32 or 64 activation rows x 32 or 64 channels, so each
// dequantized weight fragment feeds four or eight mma instructions.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_medium_m_kernels(std::vector<CompiledKernel>& table) {
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages
  table.push_back(compiled_kernel<Tile<32, 64, 1, 2, 2, 6>>());
  table.push_back(compiled_kernel<Tile<32, 128, 1, 4, 1, 6>>());
  table.push_back(compiled_kernel<Tile<32, 128, 1, 4, 2, 4>>());
  table.push_back(compiled_kernel<Tile<64, 128, 2, 4, 1, 5>>());
  table.push_back(compiled_kernel<Tile<64, 64, 2, 2, 2, 5>>());
  table.push_back(compiled_kernel<Tile<64, 128, 2, 2, 1, 5>>());
  // One 64-row tile per block: each dequantized weight fragment feeds 8 mma (two 32-row tiles
  // dequantize every weight twice).
  table.push_back(compiled_kernel<Tile<64, 128, 1, 4, 1, 4>>());
  table.push_back(compiled_kernel<Tile<64, 64, 1, 2, 2, 5>>());
}

}  // namespace w4a16::tensor_core_sm80
