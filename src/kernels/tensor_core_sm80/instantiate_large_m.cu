// Prefill-sized tiles (m >= 128): compute bound, so warps own 64 x 64 output tiles (8 mma per
// dequantized weight fragment, 4 per activation fragment) and the pipeline is only as deep as
// shared memory allows two 128 x 128 blocks per SM on H100 (228 KB); A100 (164 KB) fits one.
#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_large_m_kernels(std::vector<CompiledKernel>& table) {
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages
  table.push_back(compiled_kernel<Tile<128, 128, 2, 2, 1, 4>>());
  table.push_back(compiled_kernel<Tile<128, 256, 2, 4, 1, 3>>());
}

}  // namespace w4a16::tensor_core_sm80
