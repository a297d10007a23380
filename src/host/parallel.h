#pragma once
// Splits [0, count) into one contiguous range per hardware thread (at most 32) and runs
// work(begin, end) on each, in parallel; returns when all are done. For the CPU reference's
// independent output columns (and the tests' error magnitudes, computed the same way).

#include <algorithm>
#include <thread>
#include <vector>

namespace w4a16 {

template <class Work>
void parallel_ranges(int count, Work work) {
  const int threads = std::clamp(int(std::thread::hardware_concurrency()), 1, 32);
  const int chunk = (count + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    const int begin = t * chunk, end = std::min(count, begin + chunk);
    if (begin < end) pool.emplace_back(work, begin, end);
  }
  for (auto& thread : pool) thread.join();
}

}  // namespace w4a16
