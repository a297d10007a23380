#pragma once
// Small helpers shared by the CLI's commands: CUDA error checks that throw, and a device buffer.

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

#include "w4a16/format.h"
#include "w4a16/status.h"

namespace w4a16::cli {

struct CliError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess) throw CliError(std::string(what) + ": " + cudaGetErrorString(error));
}

inline void check_status(const Status& status, const char* what) {
  if (!status.ok()) throw CliError(std::string(what) + ": " + status.to_string());
}

// Owns one cudaMalloc allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) check_cuda(cudaMalloc(&pointer_, bytes), "cudaMalloc");
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : pointer_(std::exchange(other.pointer_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(pointer_, other.pointer_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (pointer_ != nullptr) cudaFree(pointer_);
  }

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(pointer_);
  }
  size_t bytes() const { return bytes_; }

  void upload(const void* host, size_t bytes) {
    check_cuda(cudaMemcpy(pointer_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }

 private:
  void* pointer_ = nullptr;
  size_t bytes_ = 0;
};

// "fp16" or "bf16" (what --dtype accepts).
inline ElementType parse_element_type(const std::string& name) {
  if (name == "fp16") return ElementType::kFloat16;
  if (name == "bf16") return ElementType::kBFloat16;
  throw CliError("unknown dtype '" + name + "': use fp16 or bf16");
}

// The problem-shape rules every command checks before it touches a GPU (the runner's own, stated
// for the command line): positive m, n, k; n % 16 == 0, k % 64 == 0 (the packed layout); a group
// of 32, 64, 128 or k dividing k. Throws a CliError naming the option, the value and the rule.
void check_problem_options(int m, int n, int k, int group);

// Returns false (and prints why) when no CUDA device is usable.
bool require_gpu(const char* command);

}  // namespace w4a16::cli
