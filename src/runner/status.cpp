#include "w4a16/status.h"

namespace w4a16 {

const char* to_string(StatusCode code) {
  switch (code) {
    case StatusCode::kSuccess: return "success";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kMisalignedPointer: return "misaligned pointer";
    case StatusCode::kUnsupportedShape: return "unsupported shape";
    case StatusCode::kUnsupportedGroupSize: return "unsupported group size";
    case StatusCode::kWorkspaceTooSmall: return "workspace too small";
    case StatusCode::kUnsupportedArch: return "unsupported architecture";
    case StatusCode::kNoDevice: return "no device";
    case StatusCode::kCudaError: return "CUDA error";
    case StatusCode::kCublasError: return "cuBLAS error";
  }
  return "unknown status";
}

std::string Status::to_string() const {
  if (ok()) return "success";
  return std::string(w4a16::to_string(code_)) + ": " + message_;
}

}  // namespace w4a16
