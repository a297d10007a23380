#pragma once
// Every public call that can fail returns a Status: a code a program can branch on and a message a
// person can read. (Queries such as workspace_bytes() and parse_kernel_config() cannot fail.)

#include <string>
#include <utility>

namespace w4a16 {

enum class StatusCode {
  kSuccess = 0,
  kInvalidArgument,      // null pointer, m/n/k out of range, bad alpha, overlapping buffers ...
  kMisalignedPointer,    // a device pointer that breaks the documented alignment
  kUnsupportedShape,     // n or k not a multiple of what the packed layout needs, or too many output tiles
  kUnsupportedGroupSize, // group size not in {32, 64, 128, k}, or k not a multiple of it
  kWorkspaceTooSmall,    // the caller's workspace is smaller than workspace_bytes() said
  kUnsupportedArch,      // the device has no kernel for this config (or none at all)
  kNoDevice,             // no CUDA device is visible (none installed, no driver, CUDA_VISIBLE_DEVICES)
  kCudaError,            // a CUDA runtime call failed
  kCublasError,          // a cuBLAS call failed
};

const char* to_string(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // success
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status success() { return Status(); }

  bool ok() const { return code_ == StatusCode::kSuccess; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "kind: message", or "success".
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kSuccess;
  std::string message_;
};

}  // namespace w4a16
