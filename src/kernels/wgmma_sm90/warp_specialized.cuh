#pragma once
// The warp-specialized wgmma kernel (sm_90a): tile scheduler -> producer/consumer mainloop ->
// epilogue. Same packed weights, scheduler, split-K and epilogue as tensor_core_sm80; the math step
// is WgmmaMath (wgmma_math.cuh).
//
// Why. The wgmma tiles this family replaced ran the multistage loop (tensor_core_sm80/mainloop.cuh):
// every math warp issued its share of ~1300 16-byte cp.async per 128 x 128 stage, then the whole
// block met at a barrier each k-block. On H100 that copy bookkeeping kept the ALU pipe busier than
// the tensor pipe at m = 64 (bench/NOTES.md, entry 12), and a barrier per k-block coupled the two
// warpgroups. Here:
//  - one producer thread moves a whole stage with three TMA loads (see produce()): the weights as
//    one box of a 3-D view of the packed buffer, the scale row(s), and the activation tile, which
//    TMA writes with the 128-byte swizzle wgmma reads (tensor_maps.h). TMA zero-fills what lies
//    past m or n, so edge tiles need no special case;
//  - each stage has two mbarriers. `full` completes when the producer has armed it with the
//    stage's byte count and all of its copies have landed; `empty` completes when every consumer
//    warp has released it. Consumers wait only for the stage they need, the producer only for
//    the slot it refills; nobody waits at a block barrier;
//  - the producer warpgroup hands most of its registers to the consumers (setmaxnreg).
//
// A consumer releases stage i two k-blocks late, after wgmma_wait<2> in k-block i + 2 has
// retired stage i's wgmma group (they read B, the activations, from the slot asynchronously); the
// weights and scales were read into registers before that. So Stages - 3 slots are being filled
// while three are computed on: Stages sets the bytes in flight per block.

#include <cuda.h>

#include <cstdint>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "common/packed_layout.h"
#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/tensor_core_sm80/epilogue.cuh"
#include "kernels/tensor_core_sm80/kernel.cuh"
#include "kernels/tensor_core_sm80/params.h"
#include "kernels/tensor_core_sm80/tile.cuh"
#include "kernels/tensor_core_sm80/tile_scheduler.cuh"
#include "kernels/wgmma_sm90/tensor_maps.h"
#include "kernels/wgmma_sm90/wgmma_math.cuh"

namespace w4a16::wgmma_sm90 {

using tensor_core_sm80::Params;
using tensor_core_sm80::TileWork;

// 2-D TMA load of box (column, row) of `map` into shared memory, completing on `barrier`. Written
// out rather than CuTe's SM90_TMA_LOAD_2D, which always passes an L2 cache-policy operand: ptxas
// 13.0 was seen to turn cache-hinted asynchronous copies into illegal instructions on H100.
__device__ __forceinline__ void tma_load_2d(uint32_t destination, const CUtensorMap* map, uint32_t barrier,
                                            int column, int row) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
          destination),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(barrier), "r"(column), "r"(row)
      : "memory");
}

// 3-D TMA load of box (x, y, z) of `map`, otherwise as tma_load_2d.
__device__ __forceinline__ void tma_load_3d(uint32_t destination, const CUtensorMap* map, uint32_t barrier, int x,
                                            int y, int z) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(
          destination),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(barrier), "r"(x), "r"(y), "r"(z)
      : "memory");
}

template <class Tile>
struct WarpSpecialized {
  static constexpr int kStages = Tile::kStages;
  static constexpr int kConsumerWarps = Tile::kThreads / 32;
  using Barrier = cutlass::arch::ClusterTransactionBarrier;
  using Math = WgmmaMath<Tile>;
  using Accumulators = float[1][Tile::kFragmentsM][4];
  static constexpr int kGroupsInFlight = 2;  // see consume()
  static_assert(Tile::kStages > kGroupsInFlight + 1, "slots are released kGroupsInFlight k-blocks late");

  // Registers per thread. The block launches with the cap __launch_bounds__ gives ptxas (65536 per
  // SM shared by kMinBlocksPerSM blocks, in steps of 8); the producer warpgroup then drops to 40
  // (one copying thread; an earlier version of it spilled at 24) and the consumers take what it freed
  // (setmaxnreg draws on the block's own pool, so the increase must not exceed the release).
  static constexpr int kLaunchRegisters = (65536 / (Tile::kBlockThreads * Tile::kMinBlocksPerSM)) / 8 * 8;
  static constexpr int kRegisterCap = kLaunchRegisters > 168 ? 168 : kLaunchRegisters;
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegistersUnrounded =
      kRegisterCap + (kRegisterCap - kProducerRegisters) * Tile::kProducerThreads / Tile::kThreads;
  static constexpr int kConsumerRegisters =
      (kConsumerRegistersUnrounded > 240 ? 240 : kConsumerRegistersUnrounded) / 8 * 8;

  // The producer: one thread issues every copy of every stage, in k order. A stage is three TMA
  // loads: the weights (TileN / 16 tiles of 512 bytes, one box of the 3-D weight map), the scale
  // row(s) and the activation box. TMA zero-fills whatever lies past n or m and counts it, so
  // every stage carries the same bytes.
  // (A first version issued one 1-D bulk copy per 512-byte weight tile; its time with the math
  // left out was ~120 us at 128x28672x8192, as if every request cost ~50 ns of the SM's copy
  // engine, whatever its size.)
  static __device__ __forceinline__ void produce(const Params& params, const TensorMaps& maps, const TileWork& work,
                                                 uint8_t* slots, uint64_t* full, uint64_t* empty) {
    const int iterations = work.k_block_end - work.k_block_begin;
    const int scale_rows = params.group_size == 32 ? 2 : 1;
    const uint32_t stage_bytes = Tile::kWeightBytes + Tile::kActivationBytes + scale_rows * Tile::kTileN * 2;
    const uint32_t slots_address = ptx::shared_address(slots);
    const uint32_t full_address = ptx::shared_address(full);
    const int row_block = work.n_begin / layout::kTileRows;

    // Weights and scales are constant inputs: the first stages' are requested before waiting for
    // the previous kernel in the stream (programmatic dependent launch), activations after.
    auto issue_weights_and_scales = [&](int i, int stage) {
      const uint32_t slot = slots_address + stage * Tile::kSlotBytes;
      const uint32_t barrier = full_address + stage * 8;
      Barrier::arrive_and_expect_tx(&full[stage], stage_bytes);
      const int k_block = work.k_block_begin + i;
      tma_load_3d(slot, &maps.weights, barrier, 0, k_block, row_block);
      // Group of the k-block's first column (see Params::group_shift); group 32's box has two rows.
      const int group = (k_block * Tile::kBlockK) >> params.group_shift;
      tma_load_2d(slot + Tile::kWeightBytes + Tile::kActivationBytes, &maps.scales, barrier, work.n_begin, group);
    };
    auto issue_activations = [&](int i, int stage) {
      tma_load_2d(slots_address + stage * Tile::kSlotBytes + Tile::kWeightBytes, &maps.activations,
                  full_address + stage * 8, (work.k_block_begin + i) * Tile::kBlockK, work.m_begin);
    };

    const int prologue = min(kStages, iterations);
    for (int i = 0; i < prologue; ++i) issue_weights_and_scales(i, i);
    ptx::grid_dependency_wait();
    for (int i = 0; i < prologue; ++i) issue_activations(i, i);
    // Slot i % Stages was last used by k-block i - Stages: wait for its release (the empty
    // barrier's phase (i / Stages - 1), tracked as a parity bit).
    int stage = 0;
    uint32_t phase = 0;
    for (int i = kStages; i < iterations; ++i) {
      Barrier::wait(&empty[stage], phase);
      issue_weights_and_scales(i, stage);
      issue_activations(i, stage);
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }

  // A consumer warp: its 16 channels of the tile, every row, every k-block of the work.
  static __device__ __forceinline__ void consume(const Params& params, const TileWork& work, uint8_t* slots,
                                                 uint64_t* full, uint64_t* empty, int warp_m, int warp_n,
                                                 Accumulators& accumulators) {
    #pragma unroll
    for (int m = 0; m < Tile::kFragmentsM; ++m)
      #pragma unroll
      for (int i = 0; i < 4; ++i) accumulators[0][m][i] = 0.0f;
    const int lane = threadIdx.x % 32;
    // The lane's 16 bytes of its warp's weight tile, the scale of its channel lane / 4, and the
    // warp tile's first activation row (wgmma's B), as in the multistage loop's LaneOffsets.
    int weights = (warp_n * 32 + lane) * 16;
    int scales = (warp_n * 16 + lane / 4) * 2;
    const int activation_rows = warp_m * Tile::kWarpTileM * Tile::kActivationRowBytes;
    ptx::pin(weights);
    ptx::pin(scales);
    const uint32_t slots_address = ptx::shared_address(slots);
    const bool two_groups = params.group_size == 32;
    const int iterations = work.k_block_end - work.k_block_begin;
    // A warpgroup whose 64 channels all lie past n (the last n-tile of a layer whose n is not a
    // multiple of the tile) skips the math but still waits for and releases every stage.
    //
    // The test has a second job. Without a branch around the math, ptxas treats each k slice's
    // A registers as dead once its wgmma is issued, hands the next slice the same registers, and
    // then has to wait for every wgmma before the next one ("wgmma serialized", C7513). Written
    // under a condition it cannot prove, the fragments become values carried around the loop,
    // get registers of their own, and the four wgmma of a k-block issue back to back.
    const bool warpgroup_inside_n = work.n_begin + (warp_n / 4) * 64 < params.n;

    // k-block i's wgmma group may still run while the warp dequantizes k-block i + 1 and i + 2:
    // two groups stay in flight (wait_group 2), three A register sets rotate, and a slot is
    // released two k-blocks after its math was issued. (Measured against one group in flight:
    // no difference either way at 64..128 x 28672 x 8192; kept for the slack it gives the warp's
    // own chain of barrier wait, shared loads and dequantization, bench/NOTES.md entry 18.)
    int stage = 0, released_stage = 0;
    uint32_t phase = 0;
    uint32_t a[3][4][4];
    auto step = [&](int i, uint32_t(&a_set)[4][4]) {
      Barrier::wait(&full[stage], phase);
      const int offset = stage * Tile::kSlotBytes;
      if (warpgroup_inside_n) {
        Math::template issue_slot<kGroupsInFlight>(slots + offset, slots_address + offset, two_groups, weights,
                                                   scales, activation_rows, a_set, accumulators);
      }
      // issue_slot returned after k-block i - 2's wgmma group retired: its slot is free. (A
      // skipping warpgroup never started one.)
      if (i >= kGroupsInFlight) {
        __syncwarp();
        if (lane == 0) Barrier::arrive(&empty[released_stage]);
        if (++released_stage == kStages) released_stage = 0;
      }
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    };
    for (int i = 0; i < iterations; i += 3) {
      step(i, a[0]);
      if (i + 1 < iterations) step(i + 1, a[1]);
      if (i + 2 < iterations) step(i + 2, a[2]);
    }
    Math::drain(accumulators);
  }
};

template <class Tile>
__device__ __forceinline__ void warp_specialized_tile(const Params& params, const TensorMaps& maps,
                                                      uint8_t* dynamic_shared) {
  using Loop = WarpSpecialized<Tile>;
  // Slots start on a 1024-byte boundary (the 128-byte swizzle is anchored there); the mbarriers
  // follow the last slot.
  const uint32_t misalignment = ptx::shared_address(dynamic_shared) % Tile::kBaseSlack;
  uint8_t* slots = dynamic_shared + (misalignment == 0 ? 0 : Tile::kBaseSlack - misalignment);
  uint64_t* full = reinterpret_cast<uint64_t*>(slots + Tile::kStages * Tile::kSlotBytes);
  uint64_t* empty = full + Tile::kStages;
  // The warp index through a shuffle: ptxas then knows it is warp-uniform, and so are the
  // shared-memory descriptors derived from it, which can stay in uniform registers.
  const int warp = __shfl_sync(0xffffffff, static_cast<int>(threadIdx.x) / 32, 0);
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tile::kStages; ++s) {
      Loop::Barrier::init(&full[s], 1);                     // the producer's arrive_and_expect_tx
      Loop::Barrier::init(&empty[s], Loop::kConsumerWarps);  // one arrive per consumer warp
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  const TileWork work = tensor_core_sm80::schedule_tile<Tile>(params);

  if (warp >= Loop::kConsumerWarps) {  // the producer warpgroup
    cutlass::arch::warpgroup_reg_dealloc<Loop::kProducerRegisters>();
    // No launch_dependent_grids() here: one thread's call triggers for the whole block, and these
    // threads get here at once. The consumers' call after their last stage counts instead.
    if (threadIdx.x == Tile::kThreads) Loop::produce(params, maps, work, slots, full, empty);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Loop::kConsumerRegisters>();
    // Consumer warp index = warp_m * WarpsN + warp_n; a warpgroup is 4 consecutive warps along n.
    const int warp_n = warp % Tile::kWarpsN;
    const int warp_m = (warp / Tile::kWarpsN) % Tile::kWarpsM;
    typename Loop::Accumulators accumulators;
    Loop::consume(params, work, slots, full, empty, warp_m, warp_n, accumulators);
    // Every load of this block has landed (see tensor_core_sm80/kernel.cuh for why not earlier).
    ptx::launch_dependent_grids();
    tensor_core_sm80::Epilogue<Tile>::store(params, work, warp_m, warp_n, accumulators);
  }
}

template <class Tile>
__global__ void __launch_bounds__(Tile::kBlockThreads, Tile::kMinBlocksPerSM)
    warp_specialized_kernel(const __grid_constant__ Params params, const __grid_constant__ TensorMaps maps) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (tensor_core_sm80::compiled_here<Tile>()) warp_specialized_tile<Tile>(params, maps, dynamic_shared);
}

template <class Tile>
cudaError_t launch_warp_specialized(const Params& params, cudaStream_t stream, bool programmatic) {
  // Constant host work per call: the descriptors only record addresses and shapes.
  TensorMaps maps;
  if (cudaError_t error = encode_tensor_maps(&maps, params.a, params.packed_weights, params.scales, params.m,
                                             params.n, params.k, params.group_size,
                                             Tile::kTileM, Tile::kTileN / layout::kTileRows);
      error != cudaSuccess) {
    return error;
  }
  return launch_kernel(warp_specialized_kernel<Tile>, tensor_core_sm80::grid_shape<Tile>(params),
                       dim3(Tile::kBlockThreads), Tile::kSharedBytes, stream, programmatic, params, maps);
}

// The generic probe, plus two conditions under which the kernel must not be offered:
//  - the driver cannot encode tensor maps (launch would fail);
//  - ptxas gave the kernel fewer registers than the launch-bounds cap the setmaxnreg counts are
//    computed from, so the consumers' increase could exceed what the producer releases, and
//    setmaxnreg.inc would wait forever. (ptxas 13.0 allocates exactly the cap for kernels that
//    use setmaxnreg; this turns a change of that into a missing config rather than a hang.)
template <class Tile>
cudaError_t prepare_warp_specialized() {
  using Loop = WarpSpecialized<Tile>;
  if (cudaError_t error = tensor_core_sm80::prepare<Tile, warp_specialized_kernel<Tile>>(); error != cudaSuccess) {
    return error;
  }
  if (!tensor_maps_supported()) return cudaErrorNotSupported;
  cudaFuncAttributes attributes;
  if (cudaError_t error = cudaFuncGetAttributes(&attributes, warp_specialized_kernel<Tile>); error != cudaSuccess) {
    return error;
  }
  const long long released = static_cast<long long>(Tile::kProducerThreads) * (attributes.numRegs - Loop::kProducerRegisters);
  const long long requested = static_cast<long long>(Tile::kThreads) * (Loop::kConsumerRegisters - attributes.numRegs);
  return requested <= released ? cudaSuccess : cudaErrorNotSupported;
}

template <class Tile>
tensor_core_sm80::CompiledKernel compiled_warp_specialized_kernel() {
  static_assert(Tile::kWarpSpecialized, "a warp-specialized tile");
  return tensor_core_sm80::make_compiled_kernel<Tile, warp_specialized_kernel<Tile>, &launch_warp_specialized<Tile>,
                                                &prepare_warp_specialized<Tile>>();
}

}  // namespace w4a16::wgmma_sm90
