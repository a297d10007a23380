// Decode-sized tiles (m <= 16): the weights stream once from HBM, so a tile is narrow in m and the
// pipeline is deep (8 stages of 4 KB of weights per 128 channels keep ~30 KB in flight per block,
// several blocks per SM) to cover HBM latency.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_small_m_kernels(std::vector<CompiledKernel>& table) {
  table.push_back(compiled_kernel<Tile<8, 64, 1, 4, 8>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 4, 8>>());
  table.push_back(compiled_kernel<Tile<16, 128, 1, 4, 8>>());
  table.push_back(compiled_kernel<Tile<16, 256, 1, 8, 6>>());
}

}  // namespace w4a16::tensor_core_sm80
