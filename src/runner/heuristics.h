#pragma once
// The heuristic default config: a tile-size table indexed by m, and a split-K rule that fills the
// GPU; and where a programmatic launch pays. Kept apart from the runner so tuning touches one file.

#include <vector>

#include "w4a16/runner.h"

namespace w4a16::heuristics {

struct DeviceTraits {
  int sm_version;  // 80, 86, 89, 90, ...
  int sm_count;
};

// Split-K factors the config list offers for every tensor-core tile.
const std::vector<int>& split_k_choices();

// Picks from `available` (the runner's config list); falls back to dequant_cublas when the
// preferred tensor-core tile is not compiled for this device.
KernelConfig choose(int m, int n, int k, const DeviceTraits& device, const std::vector<KernelConfig>& available);

// The grouped (mixture-of-experts) launch's tile for `rows` routed rows over `experts` experts,
// from `available` (GemmRunner::grouped_configs()); its first entry when none of the preferred
// tiles is there, a default KernelConfig when it is empty.
KernelConfig choose_grouped(int rows, int experts, int n, int k, const DeviceTraits& device,
                            const std::vector<KernelConfig>& available);

// Programmatic dependent launch (sm_90) for one launch of a fused kernel whose grid has `blocks`
// blocks, `resident_blocks_per_sm` of which fit on an SM at once (0: unknown).
struct LaunchOverlap {
  bool programmatic_helps;          // launch it programmatically under ProgrammaticLaunch::kWhereItHelps
  bool launch_dependents_at_entry;  // streaming tiles: let the next kernel launch at this one's entry
};
LaunchOverlap launch_overlap(KernelFamily family, long long blocks, int resident_blocks_per_sm, int sm_count);

}  // namespace w4a16::heuristics
