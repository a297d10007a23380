// Deterministic split-K reduction: every output element sums its split_k fp32 partials in slice
// order 0, 1, 2, ..., so the result does not depend on which block finished first.
#include <algorithm>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common/element.cuh"
#include "kernels/common/launch.cuh"
#include "kernels/common/ptx.cuh"
#include "kernels/fused/params.h"

namespace w4a16::fused {

namespace {

// One thread per 4 consecutive channels (n % 16 == 0, so a float4 never crosses a row).
template <class E>
__global__ void split_k_reduce_kernel(const __grid_constant__ Params params) {
  using Scalar = typename E::Scalar;
  using Pair = typename E::Pair;
  ptx::grid_dependency_wait();  // the partials come from the kernel just before this one
  const long long quads = static_cast<long long>(params.m) * params.n / 4;
  const long long slice_stride = static_cast<long long>(params.m) * params.n / 4;
  const float4* partials = reinterpret_cast<const float4*>(params.partials);
  for (long long quad = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; quad < quads;
       quad += static_cast<long long>(gridDim.x) * blockDim.x) {
    float4 sum = partials[quad];
    for (int split = 1; split < params.split_k; ++split) {
      const float4 part = partials[split * slice_stride + quad];
      sum.x += part.x;
      sum.y += part.y;
      sum.z += part.z;
      sum.w += part.w;
    }
    const int channel = static_cast<int>((quad * 4) % params.n);
    float bias[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (params.bias != nullptr) {
      for (int i = 0; i < 4; ++i) bias[i] = E::to_float(static_cast<const Scalar*>(params.bias)[channel + i]);
    }
    Pair* out = reinterpret_cast<Pair*>(static_cast<Scalar*>(params.c) + quad * 4);
    out[0] = E::pair(params.alpha * sum.x + bias[0], params.alpha * sum.y + bias[1]);
    out[1] = E::pair(params.alpha * sum.z + bias[2], params.alpha * sum.w + bias[3]);
  }
  // Only now may the next kernel launch. Triggering at entry (as first written) let the next GEMM's
  // blocks launch while this grid still had blocks to place: they took the SM slots and then idled
  // in grid_dependency_wait until this kernel finished, and split-K shapes ran up to 1.7x slower
  // with PDL than without (bench/NOTES.md, entries 5 and 9).
  ptx::launch_dependent_grids();
}

}  // namespace

cudaError_t launch_split_k_reduce(const Params& params, ElementType element, cudaStream_t stream, bool programmatic) {
  constexpr int kThreads = 256;
  const long long quads = static_cast<long long>(params.m) * params.n / 4;
  // A grid-stride loop over at most 1024 blocks (~8 per SM): enough to saturate bandwidth on this
  // small pass without a grid that grows with m * n.
  const dim3 grid(static_cast<unsigned>(std::min<long long>((quads + kThreads - 1) / kThreads, 1024)));
  return with_element(element, [&](auto e) {
    return launch_kernel(split_k_reduce_kernel<decltype(e)>, grid, dim3(kThreads), 0, stream, programmatic, params);
  });
}

}  // namespace w4a16::fused
