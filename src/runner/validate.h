#pragma once
// The argument rules of GemmRunner::gemm that need no device, as one pure function: what
// GemmRunner::check() applies after its device checks (the runner's status, the current device,
// the config being compiled for it in the arguments' format), and what the randomized CPU test
// holds against an independent statement of the documented rules.

#include <cstddef>

#include "w4a16/runner.h"
#include "w4a16/status.h"

namespace w4a16 {

// Workspace bytes `config` needs for (m, n, k): split-K partials, or dequant_cublas's dense
// weights plus cuBLAS's slice; saturates at SIZE_MAX instead of wrapping.
size_t required_workspace_bytes(int m, int n, int k, const KernelConfig& config);
// The same for a whole call: with a k_permutation, the gathered copy of A comes first
// (act_order::gathered_bytes) and the family's own workspace after it.
size_t required_workspace_bytes(const GemmArguments& args, const KernelConfig& config);

// In this order (the first rule broken is the one reported):
//   element type known                                    kInvalidArgument
//   a, packed_weights, scales, c not null                 kInvalidArgument
//   m, n, k positive                                      kInvalidArgument
//   n % 16 == 0, k % 64 == 0                              kUnsupportedShape
//   group in {32, 64, 128, k}, dividing k                 kUnsupportedGroupSize
//   alpha finite                                          kInvalidArgument
//   a, packed_weights, scales, zeros, bias, c, k_permutation 16-byte aligned  kMisalignedPointer
//   dequant_cublas_lt configs: c, and a unless k_permutation, 256-byte aligned  kMisalignedPointer
//   fused configs: at most 2^31 - 1 output tiles          kUnsupportedShape
//   fused configs: split_k <= k / 64                      kInvalidArgument
//   workspace of required_workspace_bytes(args), non-null kWorkspaceTooSmall
//   ... and 256-byte aligned                              kMisalignedPointer
//   C overlaps no input (a, packed_weights, scales, zeros, bias, k_permutation) and not the workspace; the
//   workspace overlaps no input                           kInvalidArgument
// Inputs may alias each other (they are only read). Sizes: a m*k, c m*n, scales and zeros
// (k/group)*n, bias n elements of 2 bytes; packed n*k/2 bytes; k_permutation 4*k bytes; the
// workspace's first required_workspace_bytes(args) bytes. The permutation's values are not checked
// here (that would be O(k) host work on device memory): load_packed_layer checks them once.
Status check_arguments(const GemmArguments& args, const KernelConfig& config, const void* workspace,
                       size_t workspace_bytes);

// Whether the operands cuBLASLt reads and writes are 256-byte aligned, as the
// dequant_cublas_lt<r> configs need: c, and a unless act-order gathers it into the workspace.
bool lt_operands_aligned(const GemmArguments& args);

// The grouped launch's m-slots (fused::GroupedParams::m_slots): rows / tile_m + min(experts,
// rows), an upper bound on the (expert, m-tile) pairs of any routing of `rows` rows.
long long grouped_m_slots(long long rows, long long experts, int tile_m);

// GemmRunner::grouped_gemm's device-free rules, in this order:
//   element type known                                               kInvalidArgument
//   a, packed_weights, scales, c, expert_offsets not null            kInvalidArgument
//   experts in 1 .. 65536, rows >= 0, n and k positive               kInvalidArgument
//   n % 16 == 0, k % 64 == 0                                         kUnsupportedShape
//   group in {32, 64, 128, k}, dividing k                            kUnsupportedGroupSize
//   alpha finite; float_zeros only with zeros                        kInvalidArgument
//   config: a fused config with split_k == 1                         kInvalidArgument
//   a, packed_weights, scales, zeros, bias, c 16-byte aligned;
//   expert_offsets, row_weights 4-byte aligned                       kMisalignedPointer
//   at most 2^31 - 1 blocks (m-slots x n-tiles)                      kUnsupportedShape
//   warp-specialized: experts * n and experts * k / group < 2^31     kUnsupportedShape
//   C overlaps no input                                              kInvalidArgument
// Sizes: a rows*k, c rows*n, scales and zeros experts*(k/group)*n, bias experts*n elements of 2
// bytes; packed experts*n*k/2 bytes; expert_offsets 4*(experts+1), row_weights 4*rows bytes.
Status check_grouped_arguments(const GroupedGemmArguments& args, const KernelConfig& config);

}  // namespace w4a16
