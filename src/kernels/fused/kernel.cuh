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

// What the epilogue writes through: C's parameters and, for grouped launches, the rows' routing
// weights (null: none).
struct EpilogueTarget {
  const Params& params;
  const float* row_weights;
};

// One block's tile of a multistage or streaming kernel: mainloop, in-block reduction, epilogue.
// `trigger_at_entry`: the block already let the next kernel launch (see gemm_tile).
// `epilogue_target()` gives the EpilogueTarget, called after the mainloop, so that a grouped
// launch need not keep its expert's C pointers in registers across the k loop.
template <class Mainloop, class EpilogueTargetOf>
__device__ __forceinline__ void gemm_work(const Params& params, const TileWork& work, uint8_t* shared,
                                          bool trigger_at_entry, const EpilogueTargetOf& epilogue_target) {
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
  if (!trigger_at_entry) ptx::launch_dependent_grids();
  reduce_across_warps_k<Tile>(shared, warp_m, warp_n, warp_k, accumulators);
  if (warp_k == 0) {
    const EpilogueTarget target = epilogue_target();
    Epilogue<Tile, typename Mainloop::E>::store(target.params, work, warp_m, warp_n, accumulators, target.row_weights);
  }
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
  gemm_work<Mainloop>(params, work, shared, trigger_at_entry, [&] { return EpilogueTarget{params, nullptr}; });
}

// The grouped (mixture-of-experts) kernel: the block finds its expert and tile on the device
// (grouped_scheduler.cuh), then runs the dense tile on that expert's rows and weights: a Params
// whose pointers start at the expert's first row and its weights, m its row count, k unsplit.
// Launched without PDL, so the offsets the routing kernel wrote are complete when it starts.
//
// Registers: the mainloop's Params is a local copy (its expert pointers are computed), and each
// of its fields the epilogue reads would stay live in registers across the k loop (spills in
// the 128 x 128 tile). So the tile's expert is parked in shared memory (a word per warp) and the
// epilogue's Params rebuilt from it afterwards; the reload is a volatile shared load, which the
// compiler cannot hoist over the loop.
template <class Mainloop>
__device__ __forceinline__ void grouped_gemm_tile(const GroupedParams& grouped, uint8_t* shared) {
  using Tile = typename Mainloop::Tile;
  using Scalar = typename Mainloop::E::Scalar;
  GroupedTile tile;
  if (!schedule_grouped_tile<Tile>(grouped, &tile)) return;  // the same in every warp
  constexpr int kWarps = Mainloop::kBlockThreads / 32;
  __shared__ int parked_expert[kWarps];
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) parked_expert[warp] = tile.expert;
  __syncwarp();
  // Expert e's Params: its rows of A and C, its weights, scales, zeros and bias; m its row count.
  auto expert_params = [&](int expert, int row_begin, int rows) {
    Params params = grouped.base;
    const long long begin = row_begin, e = expert;
    params.a = static_cast<const Scalar*>(params.a) + begin * params.k;
    params.c = static_cast<Scalar*>(params.c) + begin * params.n;
    params.m = rows;
    params.packed_weights = static_cast<const uint8_t*>(params.packed_weights) + e * grouped.weight_bytes_per_expert;
    params.scales = static_cast<const Scalar*>(params.scales) + e * grouped.groups_per_expert;
    if (params.zeros != nullptr) params.zeros = static_cast<const Scalar*>(params.zeros) + e * grouped.groups_per_expert;
    if (params.bias != nullptr) params.bias = static_cast<const Scalar*>(params.bias) + e * params.n;
    return params;
  };
  const Params params = expert_params(tile.expert, tile.row_begin, tile.rows);
  const TileWork work{tile.m_begin, tile.n_begin, 0, params.k / Tile::kBlockK, 0};
  Params epilogue_params;
  gemm_work<Mainloop>(params, work, shared, false, [&] {
    // The expert's rows again from the offsets (L1/L2 hits), clamped as the scheduler did.
    const int expert = *static_cast<volatile int*>(&parked_expert[warp]);
    const int rows_total = grouped.base.m;
    const int begin = min(max(__ldg(grouped.expert_offsets + expert), 0), rows_total);
    const int end = min(max(__ldg(grouped.expert_offsets + expert + 1), 0), rows_total);
    epilogue_params = expert_params(expert, begin, max(end - begin, 0));
    return EpilogueTarget{epilogue_params, grouped.row_weights != nullptr ? grouped.row_weights + begin : nullptr};
  });
}

template <class Mainloop>
__global__ void __launch_bounds__(Mainloop::kBlockThreads, Mainloop::kMinBlocksPerSM)
    gemm_kernel(const __grid_constant__ Params params) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Mainloop>()) gemm_tile<Mainloop>(params, dynamic_shared);
}

template <class Mainloop>
__global__ void __launch_bounds__(Mainloop::kBlockThreads, Mainloop::kMinBlocksPerSM)
    grouped_gemm_kernel(const __grid_constant__ GroupedParams grouped) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Mainloop>()) grouped_gemm_tile<Mainloop>(grouped, dynamic_shared);
}

// `programmatic`: launch with programmatic stream serialization (sm_90+), see ptx::grid_dependency_wait.
template <class Mainloop>
cudaError_t launch(const Params& params, cudaStream_t stream, bool programmatic) {
  return launch_kernel(gemm_kernel<Mainloop>, grid_shape<typename Mainloop::Tile>(params),
                       dim3(Mainloop::kBlockThreads), Mainloop::kSharedBytes, stream, programmatic, params);
}

// The grouped launch: grouped.m_slots x n-tiles blocks (see grouped_scheduler.cuh), never PDL.
template <class Mainloop>
cudaError_t launch_grouped(const GroupedParams& grouped, cudaStream_t stream) {
  using Tile = typename Mainloop::Tile;
  const long long n_tiles = (static_cast<long long>(grouped.base.n) + Tile::kTileN - 1) / Tile::kTileN;
  return launch_kernel(grouped_gemm_kernel<Mainloop>, dim3(static_cast<unsigned>(grouped.m_slots * n_tiles)),
                       dim3(Mainloop::kBlockThreads), Mainloop::kSharedBytes, stream, false, grouped);
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

// The same with the tile's grouped kernel (instantiate.inc: the heuristic multistage and
// streaming tiles).
template <class Mainloop>
CompiledKernel compiled_kernel_with_grouped(TileRole role) {
  CompiledKernel kernel = compiled_kernel<Mainloop>(role);
  kernel.launch_grouped = &launch_grouped<Mainloop>;
  kernel.prepare_grouped = &prepare<Mainloop, grouped_gemm_kernel<Mainloop>>;
  return kernel;
}

}  // namespace w4a16::fused
