// Decode-sized tiles (m <= 16). The weights stream once from HBM, so what matters is how many bytes
// each SM keeps in flight and how few instructions each byte costs. Narrow n tiles with WarpsK
// warps splitting every stage's k range give 128+ blocks even for n = 4096 without a second
// (split-K reduce) kernel; 8 stages of 4 KB of weights keep ~28 KB in flight per block.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_small_m_kernels(std::vector<CompiledKernel>& table) {
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages
  table.push_back(compiled_kernel<Tile<8, 16, 1, 1, 8, 8>>());
  table.push_back(compiled_kernel<Tile<8, 32, 1, 2, 4, 8>>());
  table.push_back(compiled_kernel<Tile<8, 64, 1, 4, 2, 8>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 4, 1, 8>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 4, 2, 6>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 4, 4, 4>>());
  table.push_back(compiled_kernel<Tile<8, 256, 1, 8, 1, 6>>());
  table.push_back(compiled_kernel<Tile<16, 32, 1, 2, 4, 8>>());
  table.push_back(compiled_kernel<Tile<16, 64, 1, 4, 2, 8>>());
  table.push_back(compiled_kernel<Tile<16, 128, 1, 4, 1, 8>>());
  table.push_back(compiled_kernel<Tile<16, 128, 1, 4, 2, 6>>());
}

}  // namespace w4a16::tensor_core_sm80
