#pragma once
// The fused kernel skeleton: tile scheduler -> mainloop -> in-block reduction -> epilogue, and the
// host side every instantiation shares (launcher, device probes, its table entry). A mainloop is
// a peer in one folder of its own (multistage/, streaming/, warp_specialized/) and provides:
//   Tile, Format, kFamily         what it is
//   kBlockThreads, kSharedBytes, kMinBlocksPerSM, kKBlocksPerUnit    what a block needs
//   Accumulators, run(params, work, shared, warp_m, warp_n, warp_k, accumulators)
// The warp-specialized mainloop has a kernel of its own (its producer warpgroup, its TMA
// descriptors as a second kernel argument) and reuses the rest.

#include <cstdint>
#include <type_traits>

#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/fused/block_reduce.cuh"
#include "kernels/fused/epilogue.cuh"
#include "kernels/fused/params.h"
#include "kernels/fused/tile.h"
#include "kernels/fused/tile_scheduler.cuh"

namespace w4a16::fused {

// Whether this compilation pass can run Mainloop's math: mma.sync needs sm_80; wgmma needs sm_90a
// (nvcc defines __CUDA_ARCH_FEAT_SM90_ALL there; tested directly rather than through CuTe's
// CUTE_ARCH_MMA_SM90A_ENABLED, which exists only once CuTe's headers are in, an include-order trap
// that once compiled every wgmma body empty). Elsewhere the kernel body is empty, and the runner
// never offers the config (it checks compiled_for() against the device).
template <class Mainloop>
constexpr bool compiled_here() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool wgmma = true;
#else
  constexpr bool wgmma = false;
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return Mainloop::kFamily != KernelFamily::kWarpSpecialized || wgmma;
#else
  return false;
#endif
}

// The multistage and streaming kernels.
template <class Mainloop>
__device__ __forceinline__ void gemm_tile(const Params& params, uint8_t* shared) {
  using Tile = typename Mainloop::Tile;
  // Streaming (decode) tiles may let the next kernel in the stream launch at once. The launch
  // happens once every block of this grid has triggered, so all of them are resident by then and
  // the next kernel's blocks take only the slots this grid leaves free, where they get through
  // their launch and setup (and, for multistage and warp-specialized successors, warm L2 with
  // their first weights) before their griddepcontrol.wait. Where the grid leaves many slots free
  // (a 128-block grid of three-per-SM blocks), those blocks crowd onto SMs this grid is using and
  // the pair runs far slower, hence the choice per launch (runner/heuristics.cpp, launch_overlap;
  // bench/NOTES.md, entry 20).
  const bool trigger_at_entry = Mainloop::kFamily == KernelFamily::kStreaming && params.launch_dependents_at_entry;
  if (trigger_at_entry) ptx::launch_dependent_grids();
  const TileWork work = schedule_tile<Tile, Mainloop::kKBlocksPerUnit>(params);
  // Warp index = (warp_k * WarpsM + warp_m) * WarpsN + warp_n.
  const int warp = threadIdx.x / 32;
  const int warp_n = warp % Tile::kWarpsN;
  const int warp_m = (warp / Tile::kWarpsN) % Tile::kWarpsM;
  const int warp_k = warp / (Tile::kWarpsN * Tile::kWarpsM);

  typename Mainloop::Accumulators accumulators;
  Mainloop::run(params, work, shared, warp_m, warp_n, warp_k, accumulators);
  // Otherwise: every load of this block is done; let the next kernel in the stream launch once
  // all blocks got here, so its launch and prologue overlap this kernel's reduction, epilogue and
  // tail. Triggering multistage tiles at kernel entry was measured slower: the next kernel's
  // blocks were then placed onto busy SMs, unevenly, and its makespan doubled for coarse grids
  // (bench/NOTES.md, entry 9).
  if (!trigger_at_entry) ptx::launch_dependent_grids();
  reduce_across_warps_k<Tile>(shared, warp_m, warp_n, warp_k, accumulators);
  if (warp_k == 0) Epilogue<Tile, typename Mainloop::E>::store(params, work, warp_m, warp_n, accumulators);
}

template <class Mainloop>
__global__ void __launch_bounds__(Mainloop::kBlockThreads, Mainloop::kMinBlocksPerSM)
    gemm_kernel(const __grid_constant__ Params params) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Mainloop>()) gemm_tile<Mainloop>(params, dynamic_shared);
}

// `programmatic`: launch with programmatic stream serialization (sm_90+), see ptx::grid_dependency_wait.
template <class Mainloop>
cudaError_t launch(const Params& params, cudaStream_t stream, bool programmatic) {
  return launch_kernel(gemm_kernel<Mainloop>, grid_shape<typename Mainloop::Tile>(params),
                       dim3(Mainloop::kBlockThreads), Mainloop::kSharedBytes, stream, programmatic, params);
}

// Fails (cudaErrorInvalidDeviceFunction) when this device has no binary for Kernel; otherwise
// raises its dynamic shared-memory limit to what the mainloop needs.
template <class Mainloop, auto Kernel>
cudaError_t prepare() {
  cudaFuncAttributes attributes;
  cudaError_t error = cudaFuncGetAttributes(&attributes, Kernel);
  if (error != cudaSuccess) return error;
  return cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Mainloop::kSharedBytes);
}

// The virtual architecture the kernel body was compiled from (cudaFuncAttributes::ptxVersion), so
// the host can tell a real sm_80+ body from the empty one: a library built for 75 carries
// compute_75 PTX, which a newer GPU would happily JIT into the empty kernel.
template <auto Kernel>
int compiled_for() {
  cudaFuncAttributes attributes;
  if (cudaFuncGetAttributes(&attributes, Kernel) != cudaSuccess) return 0;
  return attributes.ptxVersion;
}

// How many blocks of Kernel an SM of the current device holds at once; 0 when the query fails
// (the error is cleared: callers treat 0 as unknown).
template <class Mainloop, auto Kernel>
int resident_blocks_per_sm() {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, Mainloop::kBlockThreads, Mainloop::kSharedBytes) !=
      cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return blocks;
}

// The table entry of one instantiation.
template <class Mainloop, auto Kernel, cudaError_t (*Launch)(const Params&, cudaStream_t, bool),
          cudaError_t (*Prepare)() = &prepare<Mainloop, Kernel>>
CompiledKernel make_compiled_kernel(TileRole role) {
  using Tile = typename Mainloop::Tile;
  return CompiledKernel{{Mainloop::kFamily, Tile::kTileM, Tile::kTileN, Tile::kWarpsM, Tile::kWarpsN, Tile::kWarpsK,
                         Tile::kStages},
                        role,
                        Mainloop::Format::kFormat,
                        Launch,
                        Prepare,
                        &compiled_for<Kernel>,
                        &resident_blocks_per_sm<Mainloop, Kernel>};
}

// The entry of a multistage or streaming instantiation (warp-specialized ones:
// warp_specialized/mainloop.cuh).
template <class Mainloop>
CompiledKernel compiled_kernel(TileRole role) {
  return make_compiled_kernel<Mainloop, gemm_kernel<Mainloop>, &launch<Mainloop>>(role);
}

}  // namespace w4a16::fused
