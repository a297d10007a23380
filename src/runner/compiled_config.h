#pragma once
// How the runner names a compiled tile: the KernelConfig of its shape at one split-K factor. Shared
// by the runner's config list and the tests that check the heuristics against what is compiled.

#include "kernels/fused/params.h"
#include "w4a16/runner.h"

namespace w4a16 {

inline KernelConfig config_of(const fused::TileShape& shape, int split_k) {
  KernelConfig config;
  config.family = shape.family;
  config.tile_m = shape.tile_m;
  config.tile_n = shape.tile_n;
  config.warps_m = shape.warps_m;
  config.warps_n = shape.warps_n;
  config.warps_k = shape.warps_k;
  config.stages = shape.stages;
  config.split_k = split_k;
  return config;
}

}  // namespace w4a16
