// The wgmma_sm90 tiles. Built only into sm_90a binaries' table (W4A16_WITH_WGMMA, set by CMake when
// CMAKE_CUDA_ARCHITECTURES lists 90a); the kernel template is tensor_core_sm80's with wgmma as the
// math step (wgmma_math.cuh, included first so the template sees its definition).
#include "kernels/wgmma_sm90/wgmma_math.cuh"

#include "kernels/tensor_core_sm80/kernel.cuh"

namespace w4a16::tensor_core_sm80 {

void append_wgmma_sm90_kernels(std::vector<CompiledKernel>& table) {
#if defined(W4A16_WITH_WGMMA)
  //                                 TileM TileN WarpsM WarpsN WarpsK Stages Wgmma
  // Decode: one warpgroup per 64 channels, wgmma N = 8; more warpgroups along k.
  table.push_back(compiled_kernel<Tile<8, 64, 1, 4, 2, 8, true>>());
  table.push_back(compiled_kernel<Tile<8, 128, 1, 8, 1, 6, true>>());
  // Medium m: N = 32 / 64.
  table.push_back(compiled_kernel<Tile<32, 128, 1, 8, 1, 4, true>>());
  table.push_back(compiled_kernel<Tile<64, 128, 1, 8, 1, 4, true>>());
  // Large m: N = 128 (two warpgroups along n; four with two along m), N = 256.
  table.push_back(compiled_kernel<Tile<128, 128, 1, 8, 1, 4, true>>());
  table.push_back(compiled_kernel<Tile<256, 128, 2, 8, 1, 3, true>>());
  table.push_back(compiled_kernel<Tile<256, 64, 1, 4, 1, 3, true>>());
#else
  (void)table;
#endif
}

}  // namespace w4a16::tensor_core_sm80
