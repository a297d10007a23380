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
#include "kernels/fused/grouped_scheduler.cuh"
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

// Streaming (decode) tiles may let the next kernel in the stream launch at once. The launch
// happens once every block of this grid has triggered, so all of them are resident by then and
// the next kernel's blocks take only the slots this grid leaves free, where they get through
// their launch and setup (and, for multistage and warp-specialized successors, warm L2 with
// their first weights) before their griddepcontrol.wait. Where the grid leaves many slots free
// (a 128-block grid of three-per-SM blocks), those blocks crowd onto SMs this grid is using and
// the pair runs far slower, hence the choice per launch (runner/heuristics.cpp, launch_overlap;
// bench/NOTES.md, entry 20).
template <class Mainloop>
__device__ __forceinline__ bool launch_dependents_at_entry(const Params& params) {
  return Mainloop::kFamily == KernelFamily::kStreaming && params.launch_dependents_at_entry;
}

// One output tile (and k slice) of the multistage and streaming kernels: mainloop, in-block
// reduction, epilogue. `triggered_at_entry`: the kernel let its dependents launch already.
template <class Mainloop>
__device__ __forceinline__ void gemm_work(const Params& params, const TileWork& work, uint8_t* shared,
                                          bool triggered_at_entry) {
  using Tile = typename Mainloop::Tile;
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
  if (!triggered_at_entry) ptx::launch_dependent_grids();
  reduce_across_warps_k<Tile>(shared, warp_m, warp_n, warp_k, accumulators);
  if (warp_k == 0) Epilogue<Tile, typename Mainloop::E>::store(params, work, warp_m, warp_n, accumulators);
}

template <class Mainloop>
__global__ void __launch_bounds__(Mainloop::kBlockThreads, Mainloop::kMinBlocksPerSM)
    gemm_kernel(const __grid_constant__ Params params) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Mainloop>()) {
    const bool trigger_at_entry = launch_dependents_at_entry<Mainloop>(params);
    if (trigger_at_entry) ptx::launch_dependent_grids();
    const TileWork work = schedule_tile<typename Mainloop::Tile, Mainloop::kKBlocksPerUnit>(params);
    gemm_work<Mainloop>(params, work, dynamic_shared, trigger_at_entry);
  }
}

// The grouped kernel (mixture of experts, fused/grouped_scheduler.cuh): the block's expert and
// m-tile come from the device offsets, then the same tile as gemm_kernel runs on that expert's
// view of the arrays. No split-K (each block owns its tile's whole k range). Launched without
// programmatic serialization: the offsets are read before any griddepcontrol.wait.
template <class Mainloop>
__global__ void __launch_bounds__(Mainloop::kBlockThreads, Mainloop::kMinBlocksPerSM)
    grouped_gemm_kernel(const __grid_constant__ GroupedParams grouped) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Mainloop>()) {
    using Tile = typename Mainloop::Tile;
    const int n_tiles = grouped.expert.n / Tile::kTileN + (grouped.expert.n % Tile::kTileN != 0);
    const int m_slot = static_cast<int>(blockIdx.x) / n_tiles, n_tile = static_cast<int>(blockIdx.x) % n_tiles;
    // Warp 0 finds the tile and hands it over through the first bytes of the dynamic shared
    // memory (a static __shared__ variable would add to the mainloop's budget, which some tiles
    // use up to the limit); the second barrier frees those bytes for the mainloop.
    GroupedTile* handover = reinterpret_cast<GroupedTile*>(dynamic_shared);
    if (threadIdx.x < 32) {
      const GroupedTile found = find_grouped_tile<Tile::kTileM>(grouped, m_slot);
      if (threadIdx.x == 0) *handover = found;
    }
    __syncthreads();
    const GroupedTile tile = *handover;
    __syncthreads();
    if (tile.expert < 0) return;  // the whole block: a slot past the last tile

    Params params = grouped.expert;
    const long long expert = tile.expert;
    params.a = static_cast<const uint16_t*>(params.a) + static_cast<long long>(tile.first_row) * params.k;
    params.c = static_cast<uint16_t*>(params.c) + static_cast<long long>(tile.first_row) * params.n;
    params.packed_weights = static_cast<const uint8_t*>(params.packed_weights) + expert * grouped.weight_bytes_per_expert;
    params.scales = static_cast<const uint16_t*>(params.scales) + expert * grouped.group_values_per_expert;
    if (params.zeros != nullptr) {
      params.zeros = static_cast<const uint16_t*>(params.zeros) + expert * grouped.group_values_per_expert;
    }
    if (params.bias != nullptr) params.bias = static_cast<const uint16_t*>(params.bias) + expert * params.n;
    params.m = tile.rows;
    TileWork work;
    work.m_begin = tile.m_begin;
    work.n_begin = n_tile * Tile::kTileN;
    work.k_block_begin = 0;
    work.k_block_end = params.k / Tile::kBlockK;
    work.split = 0;
    gemm_work<Mainloop>(params, work, dynamic_shared, /*triggered_at_entry=*/false);
  }
}

// `programmatic`: launch with programmatic stream serialization (sm_90+), see ptx::grid_dependency_wait.
template <class Mainloop>
cudaError_t launch(const Params& params, cudaStream_t stream, bool programmatic) {
  return launch_kernel(gemm_kernel<Mainloop>, grid_shape<typename Mainloop::Tile>(params),
                       dim3(Mainloop::kBlockThreads), Mainloop::kSharedBytes, stream, programmatic, params);
}

template <class Mainloop>
cudaError_t launch_grouped(const GroupedParams& grouped, cudaStream_t stream) {
  using Tile = typename Mainloop::Tile;
  const long long n_tiles = (static_cast<long long>(grouped.expert.n) + Tile::kTileN - 1) / Tile::kTileN;
  return launch_kernel(grouped_gemm_kernel<Mainloop>, dim3(static_cast<unsigned>(n_tiles * grouped.m_slots)),
                       dim3(Mainloop::kBlockThreads), Mainloop::kSharedBytes, stream, /*programmatic=*/false, grouped);
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
                        &resident_blocks_per_sm<Mainloop, Kernel>,
                        nullptr};
}

// prepare() of a tile with a grouped kernel too: both kernels get the shared-memory limit.
template <class Mainloop>
cudaError_t prepare_with_grouped() {
  if (cudaError_t error = prepare<Mainloop, gemm_kernel<Mainloop>>(); error != cudaSuccess) return error;
  return prepare<Mainloop, grouped_gemm_kernel<Mainloop>>();
}

// The entry of a multistage or streaming instantiation (warp-specialized ones:
// warp_specialized/mainloop.cuh); kGrouped adds the grouped kernel of the tile.
template <class Mainloop, bool kGrouped = false>
CompiledKernel compiled_kernel(TileRole role) {
  if constexpr (kGrouped) {
    CompiledKernel kernel =
        make_compiled_kernel<Mainloop, gemm_kernel<Mainloop>, &launch<Mainloop>, &prepare_with_grouped<Mainloop>>(role);
    kernel.launch_grouped = &launch_grouped<Mainloop>;
    return kernel;
  } else {
    return make_compiled_kernel<Mainloop, gemm_kernel<Mainloop>, &launch<Mainloop>>(role);
  }
}

}  // namespace w4a16::fused
