#pragma once
// A test-only kernel for programmatic dependent launch: it lets the next kernel in the stream
// launch at once (griddepcontrol.launch_dependents at entry), waits `delay_nanoseconds` (by the
// global timer), and only then copies its buffers, in order. A kernel launched behind it with PDL
// therefore runs its pre-wait code while these copies have not happened yet: if it read any of
// the destinations before its griddepcontrol.wait it would see the old contents, and whatever it
// wrote to a destination before then would be overwritten.

#include <cstddef>

#include <cuda_runtime_api.h>

namespace w4a16::test {

struct DelayedCopy {
  static constexpr int kMaxCopies = 5;
  void* destination[kMaxCopies] = {};
  const void* source[kMaxCopies] = {};
  size_t bytes[kMaxCopies] = {};  // multiples of 4; 4-byte aligned buffers
  unsigned long long delay_nanoseconds = 0;
};

cudaError_t launch_delayed_copy(const DelayedCopy& job, cudaStream_t stream);

}  // namespace w4a16::test
