#pragma once
// The warp-specialized wgmma kernel (KernelFamily::kWarpSpecialized, sm_90a): tile scheduler ->
// producer/consumer mainloop -> epilogue. Same packed weights, scheduler, split-K and epilogue as
// the other fused families (fused/); the math step is WgmmaMath (wgmma_math.cuh).
//
// Why. The wgmma tiles this family replaced ran the multistage loop (fused/multistage/mainloop.cuh):
// every math warp issued its share of ~1300 16-byte cp.async per 128 x 128 stage, then the whole
// block met at a barrier each k-block. On H100 that copy bookkeeping kept the ALU pipe busier than
// the tensor pipe at m = 64 (bench/NOTES.md, entry 12), and a barrier per k-block coupled the two
// warpgroups. Here:
//  - one producer thread moves a whole slot (two k-blocks) with four TMA loads (five with zero
//    points; see produce()): the weights as one box of a 3-D view of the packed buffer, the scale
//    rows (and zero-point rows), and one activation box per k-block, which TMA writes with the 128-byte swizzle wgmma reads
//    (tensor_maps.h). TMA zero-fills what lies past m, n or k, so edge tiles need no special case;
//  - each slot has two mbarriers. `full` completes when the producer has armed it with the
//    slot's byte count and all of its copies have landed; `empty` completes when every consumer
//    warp has released it. Consumers wait only for the slot they need, the producer only for
//    the slot it refills; nobody waits at a block barrier;
//  - the producer warpgroup hands most of its registers to the consumers (setmaxnreg).
//
// A consumer releases slot s once the wgmma reading its second k-block has retired, which it
// learns from the wait after issuing slot s + 1's first k-block (see consume()). So Stages - 2
// slots are being filled while two are in use: Stages sets the bytes in flight per block.
//
// The consumers' loop is lean on purpose. ncu on the one-k-block-per-slot version (32x8192x28672,
// bench/NOTES.md entry 19) found the consumer warps issue-bound: ~140 instructions per warp and
// k-block, of which 52 are the dequantization; the rest was barrier waits and releases, stage and
// phase bookkeeping, per-call generic-to-shared conversions of the barrier pointers, and four
// descriptors built from scratch. Now barrier addresses and the activation descriptor are
// computed once and stepped, and the per-slot costs are shared by two k-blocks.

#include <cuda.h>

#include <cstdint>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "common/packed_layout.h"
#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/fused/epilogue.cuh"
#include "kernels/fused/grouped_scheduler.cuh"
#include "kernels/fused/kernel.cuh"
#include "kernels/fused/params.h"
#include "kernels/fused/tile.h"
#include "kernels/fused/tile_scheduler.cuh"
#include "kernels/fused/warp_specialized/tensor_maps.h"
#include "kernels/fused/warp_specialized/wgmma_math.cuh"

namespace w4a16::fused {

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

// Asks L2 for box (x, y, z) of `map` without copying it anywhere: what the producer may do before
// the programmatic-launch wait (see ptx::prefetch_l2_bulk for why that is safe).
__device__ __forceinline__ void tma_prefetch_3d(const CUtensorMap* map, int x, int y, int z) {
  asm volatile("cp.async.bulk.prefetch.tensor.3d.L2.global.tile [%0, {%1, %2, %3}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(x), "r"(y), "r"(z)
               : "memory");
}

// Where a grouped launch's expert starts in the tensor maps, which span every expert (see
// encode_grouped_tensor_maps): its first row block of the stacked weights, its first group row of
// the stacked scales (and zeros), its first row of the sorted A. All zero in a dense launch.
struct ExpertOrigin {
  int row_block = 0, group_row = 0, activation_row = 0;
};

template <class TileT, class FormatT>
struct WarpSpecializedMainloop {
  using Tile = TileT;
  using Format = FormatT;
  using E = typename Format::E;
  static constexpr KernelFamily kFamily = KernelFamily::kWarpSpecialized;
  static constexpr int kStages = Tile::kStages;
  static constexpr int kConsumerWarps = Tile::kThreads / 32;
  static constexpr int kKBlocksPerSlot = 2;  // see below
  using Math = WgmmaMath<Tile, Format, kKBlocksPerSlot>;
  using Accumulators = float[Tile::kFragmentsN][Tile::kFragmentsM][4];
  static_assert(kStages >= 3, "one slot computed on, one awaiting release, at least one filling");
  static_assert(Tile::kWarpsK == 1, "warp specialization: no in-block split-K");
  static_assert(Tile::kFragmentsN <= 2 && Tile::kWarpsN % 4 == 0,
                "wgmma: 16 or 32 channels per warp, warpgroups along n");
  static_assert(Tile::kWarpTileM == 8 || Tile::kWarpTileM == 16 || Tile::kWarpTileM == 32 ||
                    Tile::kWarpTileM == 64 || Tile::kWarpTileM == 128 || Tile::kWarpTileM == 256,
                "wgmma: the warp tile's m is the instruction's N (one of the compiled sizes)");

  // The math warps (WarpsM x WarpsN) only compute; one more warpgroup issues the TMA loads.
  static constexpr int kProducerThreads = 128;
  static constexpr int kBlockThreads = Tile::kThreads + kProducerThreads;
  // K-blocks per slot (kKBlocksPerSlot, above): two consecutive k-blocks, so every per-slot cost
  // of the loop (barrier wait and release, stage bookkeeping, the producer's TMA requests) is paid
  // once per 128 columns.
  static constexpr int kKBlocksPerUnit = kKBlocksPerSlot;  // split-K slices start on a slot

  // Slot layout (kSlotBytes, 1024-byte aligned):
  //   weights      [TileN / 16 row blocks][2 k-blocks][512 bytes]: one box of the 3-D weight map;
  //   activations  [2 k-blocks][TileM rows][128 bytes], 128-byte swizzled: two boxes of A;
  //   scales       up to 4 rows of TileN channels (the groups the two k-blocks span: group 32
  //                has two per k-block);
  //   zero points  the same rows of zero points (the zero-point ops only).
  // Every activation tile starts on a 1024-byte boundary, as the swizzled wgmma operand requires
  // (TileN / 16 * 1024 and TileM * 128 are multiples of 1024).
  static constexpr int kActivationOffset = kKBlocksPerSlot * Tile::kWeightBytes;
  static constexpr int kScaleOffset = kActivationOffset + kKBlocksPerSlot * Tile::kActivationBytes;
  static constexpr int kGroupRowsBytes = 2 * kKBlocksPerSlot * Tile::kTileN * 2;
  static constexpr int kZeroOffset = kGroupRowsBytes;  // from a scale to its zero point
  static constexpr int kSlotAlignment = 1024;
  static constexpr int kSlotBytes =
      (kScaleOffset + Format::kGroupArrays * kGroupRowsBytes + kSlotAlignment - 1) / kSlotAlignment * kSlotAlignment;
  static_assert(kActivationOffset % 1024 == 0 && Tile::kActivationBytes % 1024 == 0, "swizzle atom alignment");
  // A full and an empty mbarrier (8 bytes each) per stage after the slots. Dynamic shared memory
  // is only guaranteed 16-byte alignment: the kernel rounds its base up to 1024 bytes and
  // reserves the slack.
  static constexpr int kBarrierBytes = 2 * kStages * 8;
  static constexpr int kBaseSlack = 1024;
  static constexpr int kSharedBytes = kStages * kSlotBytes + kBarrierBytes + kBaseSlack;

  // Blocks per SM ptxas must leave registers for: as many as shared memory allows, at most two
  // (80 registers per thread at launch: enough for 64-row tiles of 16 channels per warp); 128-row
  // tiles (64 fp32 accumulators per consumer thread) and tiles of 32 channels per warp (two
  // accumulator halves) ask for one block, 168 registers.
  static constexpr int kMinBlocksPerSM =
      blocks_by_shared_memory(kSharedBytes) >= 2 && Tile::kTileM <= 64 && Tile::kFragmentsN == 1 ? 2 : 1;

  // Registers per thread. The block launches with the cap __launch_bounds__ gives ptxas (65536 per
  // SM shared by kMinBlocksPerSM blocks, in steps of 8); the producer warpgroup then drops to 40
  // (one copying thread; an earlier version of it spilled at 24) and the consumers take what it freed
  // (setmaxnreg draws on the block's own pool, so the increase must not exceed the release).
  static constexpr int kLaunchRegisters = (65536 / (kBlockThreads * kMinBlocksPerSM)) / 8 * 8;
  static constexpr int kRegisterCap = kLaunchRegisters > 168 ? 168 : kLaunchRegisters;
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegistersUnrounded =
      kRegisterCap + (kRegisterCap - kProducerRegisters) * kProducerThreads / Tile::kThreads;
  static constexpr int kConsumerRegisters =
      (kConsumerRegistersUnrounded > 240 ? 240 : kConsumerRegistersUnrounded) / 8 * 8;

  // The producer: one thread issues every copy of every slot, in k order. A slot is four TMA loads:
  // the weights of both k-blocks (one box of the 3-D weight map), the scale rows (and the zero
  // point rows: a fifth), and one activation box per k-block (a swizzled box is at most 128 bytes wide: one k-block). TMA
  // zero-fills whatever lies past n, m or k and counts it, so only a last slot with a single
  // k-block (an odd number of k-blocks) carries fewer bytes: one activation box less.
  // Why two k-blocks per slot: the copy engine's cost is per request rather than per byte (one
  // 1-D bulk copy per 512-byte weight tile ran at 166 us at 128x28672x8192, one 3-D box per
  // k-block at 117), and the consumers' per-slot overhead halves (bench/NOTES.md, entry 19).
  // `expert`: where the tile's expert starts in the maps of a grouped launch (zeros otherwise).
  static __device__ __forceinline__ void produce(const Params& params, const TensorMaps& maps, const TileWork& work,
                                                 uint32_t slots_address, uint32_t full_address,
                                                 uint32_t empty_address, const ExpertOrigin& expert = {}) {
    const int k_blocks = work.k_block_end - work.k_block_begin;
    const int slots_needed = (k_blocks + 1) / 2;
    const uint32_t scale_bytes =
        Format::kGroupArrays * scale_rows_per_box(params.group_size, kKBlocksPerSlot) * Tile::kTileN * 2;
    const int row_block = expert.row_block + work.n_begin / layout::kTileRows;
    const int activation_row = expert.activation_row + work.m_begin;
    auto k_blocks_in = [&](int i) { return min(2, k_blocks - 2 * i); };

    auto issue_slot = [&](int i, int stage) {
      const uint32_t slot = slots_address + stage * kSlotBytes;
      const uint32_t barrier = full_address + stage * 8;
      ptx::mbarrier_arrive_expect_tx(
          barrier, kKBlocksPerSlot * Tile::kWeightBytes + k_blocks_in(i) * Tile::kActivationBytes + scale_bytes);
      const int k_block = work.k_block_begin + 2 * i;
      tma_load_3d(slot, &maps.weights, barrier, 0, k_block, row_block);
      // Group of the slot's first column (see Params::group_shift).
      const int group = expert.group_row + ((k_block * Tile::kBlockK) >> params.group_shift);
      tma_load_2d(slot + kScaleOffset, &maps.scales, barrier, work.n_begin, group);
      if constexpr (Format::kZeros) tma_load_2d(slot + kScaleOffset + kZeroOffset, &maps.zeros, barrier, work.n_begin, group);
      const int column = k_block * Tile::kBlockK;
      tma_load_2d(slot + kActivationOffset, &maps.activations, barrier, column, activation_row);
      if (k_blocks_in(i) == 2) {
        tma_load_2d(slot + kActivationOffset + Tile::kActivationBytes, &maps.activations, barrier,
                    column + Tile::kBlockK, activation_row);
      }
    };

    // Before waiting for the previous kernel in the stream (programmatic dependent launch) nothing
    // is read: when launched programmatically, the first slots' weights are only asked of L2, so
    // that their HBM latency overlaps that kernel's tail. The slots are loaded after the wait.
    const int prologue = min(kStages, slots_needed);
    if (params.programmatic) {
      for (int i = 0; i < prologue; ++i) tma_prefetch_3d(&maps.weights, 0, work.k_block_begin + 2 * i, row_block);
    }
    ptx::grid_dependency_wait();
    for (int i = 0; i < prologue; ++i) issue_slot(i, i);
    // Slot i % Stages was last used by slot i - Stages: wait for its release (the empty barrier's
    // phase (i / Stages - 1), tracked as a parity bit).
    int stage = 0;
    uint32_t phase = 0;
    for (int i = kStages; i < slots_needed; ++i) {
      ptx::mbarrier_wait_parity(empty_address + stage * 8, phase);
      issue_slot(i, stage);
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
  }

  // A consumer warp: its 16 * FragmentsN channels of the tile, every row, every k-block of the work.
  static __device__ __forceinline__ void consume(const Params& params, const TileWork& work, uint32_t slots_address,
                                                 uint32_t full_address, uint32_t empty_address, int warp_m, int warp_n,
                                                 Accumulators& accumulators) {
    #pragma unroll
    for (int f = 0; f < Tile::kFragmentsN; ++f)
      #pragma unroll
      for (int m = 0; m < Tile::kFragmentsM; ++m)
        #pragma unroll
        for (int i = 0; i < 4; ++i) accumulators[f][m][i] = 0.0f;
    const int lane = threadIdx.x % 32;
    // The lane's 16 bytes of its warp's first weight tile (row block warp_n * FragmentsN, k-block
    // 0; k-block 1 is 512 bytes further, the next row block 1024), the scale of its channel
    // lane / 4 in the first scale row, and the descriptor of the warpgroup's first activation row
    // in slot 0's first activation tile.
    uint32_t weights = slots_address + (warp_n * Tile::kFragmentsN * 64 + lane) * 16;
    uint32_t scales = slots_address + kScaleOffset + (warp_n * Tile::kWarpTileN + lane / 4) * 2;
    uint64_t activations = k_major_sw128_descriptor(
        slots_address + kActivationOffset + warp_m * Tile::kWarpTileM * Tile::kActivationRowBytes);
    // Pinned: left alone, ptxas rebuilds these from the dynamic shared-memory base (its 1024-byte
    // alignment, the descriptor's fields) in every iteration.
    ptx::pin(weights);
    ptx::pin(scales);
    ptx::pin(activations);
    ptx::pin(full_address);
    ptx::pin(empty_address);
    // Scale rows from the slot's first k-block to its second: two for group 32 (two groups per
    // k-block), one for group 64, none for larger groups (one row covers both).
    const bool two_groups = params.group_size == 32;
    const int scale_k_block_step = (two_groups ? 2 : params.group_size == 64 ? 1 : 0) * Tile::kTileN * 2;
    const int k_blocks = work.k_block_end - work.k_block_begin;
    // A warpgroup whose 64 or 128 channels all lie past n (the last n-tile of a layer whose n is not a
    // multiple of the tile) skips the math but still waits for and releases every slot.
    //
    // The test has a second job. Without a branch around the math, ptxas treats each k slice's
    // A registers as dead once its wgmma is issued, hands the next slice the same registers, and
    // then has to wait for every wgmma before the next one ("wgmma serialized", C7513). Written
    // under a condition it cannot prove, the fragments become values carried around the loop,
    // get registers of their own, and the four wgmma of a k-block issue back to back.
    const bool warpgroup_inside_n = work.n_begin + (warp_n / 4) * 4 * Tile::kWarpTileN < params.n;

    // One wgmma group (a k-block) stays in flight while the warp dequantizes the next one, so the
    // two k-blocks of a slot use two A register sets, always the same ones: when slot s's first
    // k-block is issued, the only group that may still run is slot s - 1's second (set 1), and
    // after that issue's wait_group 1 it has retired, so slot s - 1 (its activations are read by
    // the tensor cores asynchronously; weights and scales went to registers) is released then.
    // Stages - 2 slots are therefore being filled while two are in use.
    uint32_t a[2][Tile::kFragmentsN][4][4];
    uint32_t slot_offset = 0, barrier_offset = 0, released_barrier = 0, phase = 0;
    for (int k_block = 0; k_block < k_blocks; k_block += 2) {
      ptx::mbarrier_wait_parity(full_address + barrier_offset, phase);
      const uint64_t slot_activations = activations + (slot_offset >> 4);
      if (warpgroup_inside_n) {
        Math::template issue_k_block<1, kZeroOffset>(weights + slot_offset, scales + slot_offset, two_groups,
                                                     slot_activations, a[0], accumulators);
      }
      if (k_block > 0) {
        __syncwarp();
        if (lane == 0) ptx::mbarrier_arrive(empty_address + released_barrier);
      }
      if (warpgroup_inside_n && k_block + 1 < k_blocks) {
        Math::template issue_k_block<1, kZeroOffset>(weights + slot_offset + layout::kTileBytes,
                                                     scales + slot_offset + scale_k_block_step, two_groups,
                                                     slot_activations + (Tile::kActivationBytes >> 4), a[1],
                                                     accumulators);
      }
      released_barrier = barrier_offset;
      slot_offset += kSlotBytes;
      barrier_offset += 8;
      if (barrier_offset == kStages * 8) {
        slot_offset = 0;
        barrier_offset = 0;
        phase ^= 1;
      }
    }
    Math::drain(accumulators);
  }
};

template <class Loop>
__device__ __forceinline__ void warp_specialized_tile(const Params& params, const TensorMaps& maps,
                                                      uint8_t* dynamic_shared) {
  using Tile = typename Loop::Tile;
  // Slots start on a 1024-byte boundary (the 128-byte swizzle is anchored there); the mbarriers
  // follow the last slot.
  const uint32_t misalignment = ptx::shared_address(dynamic_shared) % Loop::kBaseSlack;
  uint8_t* slots = dynamic_shared + (misalignment == 0 ? 0 : Loop::kBaseSlack - misalignment);
  uint64_t* full = reinterpret_cast<uint64_t*>(slots + Tile::kStages * Loop::kSlotBytes);
  uint64_t* empty = full + Tile::kStages;
  // The warp index through a shuffle: ptxas then knows it is warp-uniform, and so are the
  // shared-memory descriptors derived from it, which can stay in uniform registers.
  const int warp = __shfl_sync(0xffffffff, static_cast<int>(threadIdx.x) / 32, 0);
  const uint32_t slots_address = ptx::shared_address(slots);
  const uint32_t full_address = ptx::shared_address(full), empty_address = ptx::shared_address(empty);
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tile::kStages; ++s) {
      cutlass::arch::ClusterBarrier::init(&full[s], 1);                     // the producer's arrive_expect_tx
      cutlass::arch::ClusterBarrier::init(&empty[s], Loop::kConsumerWarps);  // one arrive per consumer warp
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  const TileWork work = schedule_tile<Tile, Loop::kKBlocksPerUnit>(params);

  if (warp >= Loop::kConsumerWarps) {  // the producer warpgroup
    cutlass::arch::warpgroup_reg_dealloc<Loop::kProducerRegisters>();
    // No launch_dependent_grids() here: one thread's call triggers for the whole block, and these
    // threads get here at once. The consumers' call after their last slot counts instead.
    if (threadIdx.x == Tile::kThreads) Loop::produce(params, maps, work, slots_address, full_address, empty_address);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Loop::kConsumerRegisters>();
    // Consumer warp index = warp_m * WarpsN + warp_n; a warpgroup is 4 consecutive warps along n.
    const int warp_n = warp % Tile::kWarpsN;
    const int warp_m = (warp / Tile::kWarpsN) % Tile::kWarpsM;
    typename Loop::Accumulators accumulators;
    Loop::consume(params, work, slots_address, full_address, empty_address, warp_m, warp_n, accumulators);
    // Every load of this block has landed (see fused/kernel.cuh for why not earlier).
    ptx::launch_dependent_grids();
    // Only the producer waited for the previous kernel; the consumers' stores are ordered after
    // that wait through the slots they consumed, except where a split-K slice is empty (no slot):
    // its zero partials must not be written before the previous kernel is done with the
    // workspace. Free here: the dependency resolved long ago whenever there were slots.
    ptx::grid_dependency_wait();
    Epilogue<Tile, typename Loop::E>::store(params, work, warp_m, warp_n, accumulators);
  }
}

template <class Loop>
__global__ void __launch_bounds__(Loop::kBlockThreads, Loop::kMinBlocksPerSM)
    warp_specialized_kernel(const __grid_constant__ Params params, const __grid_constant__ TensorMaps maps) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Loop>()) warp_specialized_tile<Loop>(params, maps, dynamic_shared);
}

template <class Loop>
cudaError_t launch_warp_specialized(const Params& params, cudaStream_t stream, bool programmatic) {
  using Tile = typename Loop::Tile;
  // Constant host work per call: the descriptors only record addresses and shapes.
  TensorMaps maps;
  if (cudaError_t error = encode_tensor_maps(&maps, Loop::E::kType, params.a, params.packed_weights, params.scales,
                                             Loop::Format::kZeros ? params.zeros : nullptr, params.m, params.n,
                                             params.k, params.group_size, Tile::kTileM,
                                             Tile::kTileN / layout::kTileRows, Loop::kKBlocksPerSlot);
      error != cudaSuccess) {
    return error;
  }
  return launch_kernel(warp_specialized_kernel<Loop>, grid_shape<Tile>(params), dim3(Loop::kBlockThreads),
                       Loop::kSharedBytes, stream, programmatic, params, maps);
}

// The grouped (mixture-of-experts) launch of the same mainloop: the block's expert and tile come
// from the device offsets (grouped_scheduler.cuh, every warp computing the same answer), the
// producer adds the expert's origin to its TMA coordinates, and the consumers store through the
// expert's Params. Rows of the m-tile past the expert's last row are loaded (they belong to the
// next expert, or read as zeros past the last row) but never stored.
template <class Loop>
__device__ __forceinline__ void grouped_warp_specialized_tile(const GroupedParams& grouped, const TensorMaps& maps,
                                                              uint8_t* dynamic_shared) {
  using Tile = typename Loop::Tile;
  using Scalar = typename Loop::E::Scalar;
  const uint32_t misalignment = ptx::shared_address(dynamic_shared) % Loop::kBaseSlack;
  uint8_t* slots = dynamic_shared + (misalignment == 0 ? 0 : Loop::kBaseSlack - misalignment);
  uint64_t* full = reinterpret_cast<uint64_t*>(slots + Tile::kStages * Loop::kSlotBytes);
  uint64_t* empty = full + Tile::kStages;
  GroupedTile tile;
  if (!schedule_grouped_tile<Tile>(grouped, &tile)) return;  // the same in every warp: no barrier is left waiting
  const int warp = __shfl_sync(0xffffffff, static_cast<int>(threadIdx.x) / 32, 0);
  const uint32_t slots_address = ptx::shared_address(slots);
  const uint32_t full_address = ptx::shared_address(full), empty_address = ptx::shared_address(empty);
  if (threadIdx.x == 0) {
    for (int s = 0; s < Tile::kStages; ++s) {
      cutlass::arch::ClusterBarrier::init(&full[s], 1);
      cutlass::arch::ClusterBarrier::init(&empty[s], Loop::kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  const Params& base = grouped.base;
  const TileWork work{tile.m_begin, tile.n_begin, 0, base.k / Tile::kBlockK, 0};
  if (warp >= Loop::kConsumerWarps) {
    cutlass::arch::warpgroup_reg_dealloc<Loop::kProducerRegisters>();
    ExpertOrigin origin;
    origin.row_block = tile.expert * (base.n / layout::kTileRows);
    origin.group_row = tile.expert * static_cast<int>(grouped.groups_per_expert / base.n);
    origin.activation_row = tile.row_begin;
    if (threadIdx.x == Tile::kThreads) {
      Loop::produce(base, maps, work, slots_address, full_address, empty_address, origin);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Loop::kConsumerRegisters>();
    const int warp_n = warp % Tile::kWarpsN;
    const int warp_m = (warp / Tile::kWarpsN) % Tile::kWarpsM;
    typename Loop::Accumulators accumulators;
    Loop::consume(base, work, slots_address, full_address, empty_address, warp_m, warp_n, accumulators);
    ptx::launch_dependent_grids();
    Params params = base;
    const long long row_begin = tile.row_begin, expert = tile.expert;
    params.c = static_cast<Scalar*>(params.c) + row_begin * params.n;
    params.m = tile.rows;
    if (params.bias != nullptr) params.bias = static_cast<const Scalar*>(params.bias) + expert * params.n;
    const float* row_weights = grouped.row_weights != nullptr ? grouped.row_weights + row_begin : nullptr;
    Epilogue<Tile, typename Loop::E>::store(params, work, warp_m, warp_n, accumulators, row_weights);
  }
}

template <class Loop>
__global__ void __launch_bounds__(Loop::kBlockThreads, Loop::kMinBlocksPerSM)
    grouped_warp_specialized_kernel(const __grid_constant__ GroupedParams grouped, const __grid_constant__ TensorMaps maps) {
  extern __shared__ __align__(128) uint8_t dynamic_shared[];
  if constexpr (compiled_here<Loop>()) grouped_warp_specialized_tile<Loop>(grouped, maps, dynamic_shared);
}

template <class Loop>
cudaError_t launch_grouped_warp_specialized(const GroupedParams& grouped, cudaStream_t stream) {
  using Tile = typename Loop::Tile;
  const Params& base = grouped.base;
  TensorMaps maps;
  if (cudaError_t error = encode_grouped_tensor_maps(
          &maps, Loop::E::kType, base.a, base.packed_weights, base.scales, Loop::Format::kZeros ? base.zeros : nullptr,
          base.m, grouped.experts, base.n, base.k, base.group_size, Tile::kTileM, Tile::kTileN / layout::kTileRows,
          Loop::kKBlocksPerSlot);
      error != cudaSuccess) {
    return error;
  }
  const long long n_tiles = (static_cast<long long>(base.n) + Tile::kTileN - 1) / Tile::kTileN;
  return launch_kernel(grouped_warp_specialized_kernel<Loop>, dim3(static_cast<unsigned>(grouped.m_slots * n_tiles)),
                       dim3(Loop::kBlockThreads), Loop::kSharedBytes, stream, false, grouped, maps);
}

// The generic probe, plus two conditions under which the kernel must not be offered:
//  - the driver cannot encode tensor maps (launch would fail);
//  - ptxas gave the kernel fewer registers than the launch-bounds cap the setmaxnreg counts are
//    computed from, so the consumers' increase could exceed what the producer releases, and
//    setmaxnreg.inc would wait forever. (ptxas 13.0 allocates exactly the cap for kernels that
//    use setmaxnreg; this turns a change of that into a missing config rather than a hang.)
// (Kernel: the dense or the grouped kernel of Loop; both are checked the same way.)
template <class Loop, auto Kernel = warp_specialized_kernel<Loop>>
cudaError_t prepare_warp_specialized() {
  using Tile = typename Loop::Tile;
  if (cudaError_t error = prepare<Loop, Kernel>(); error != cudaSuccess) {
    return error;
  }
  if (!tensor_maps_supported()) return cudaErrorNotSupported;
  cudaFuncAttributes attributes;
  if (cudaError_t error = cudaFuncGetAttributes(&attributes, Kernel); error != cudaSuccess) {
    return error;
  }
  const long long released = static_cast<long long>(Loop::kProducerThreads) * (attributes.numRegs - Loop::kProducerRegisters);
  const long long requested = static_cast<long long>(Tile::kThreads) * (Loop::kConsumerRegisters - attributes.numRegs);
  return requested <= released ? cudaSuccess : cudaErrorNotSupported;
}

template <class Loop>
CompiledKernel compiled_warp_specialized_kernel(TileRole role) {
  return make_compiled_kernel<Loop, warp_specialized_kernel<Loop>, &launch_warp_specialized<Loop>,
                              &prepare_warp_specialized<Loop>>(role);
}

// The same with the tile's grouped kernel (instantiate.inc: the heuristic tiles).
template <class Loop>
CompiledKernel compiled_warp_specialized_kernel_with_grouped(TileRole role) {
  CompiledKernel kernel = compiled_warp_specialized_kernel<Loop>(role);
  kernel.launch_grouped = &launch_grouped_warp_specialized<Loop>;
  kernel.prepare_grouped = &prepare_warp_specialized<Loop, grouped_warp_specialized_kernel<Loop>>;
  return kernel;
}

}  // namespace w4a16::fused
