#pragma once
// A test-only kernel for programmatic dependent launch: it lets the next kernel in the stream
// launch at once (griddepcontrol.launch_dependents at entry), waits about `delay_cycles`, and only
// then copies its buffers. A kernel launched behind it with PDL therefore runs its pre-wait code
// while these copies have not happened yet: if it read any of the destinations before its
// griddepcontrol.wait, it would see the old contents, deterministically.

#include <cstddef>

#include <cuda_runtime_api.h>

namespace w4a16::test {

struct DelayedCopy {
  static constexpr int kMaxCopies = 3;
  void* destination[kMaxCopies] = {};
  const void* source[kMaxCopies] = {};
  size_t bytes[kMaxCopies] = {};  // multiples of 4; 4-byte aligned buffers
  long long delay_cycles = 0;
};

cudaError_t launch_delayed_copy(const DelayedCopy& job, cudaStream_t stream);

}  // namespace w4a16::test
