#pragma once
// The profiler's results as a file: a server profiles once and loads the results at start-up.
// JSON, keyed by the device (name, SM count) and the library version, so results from another
// GPU or another build are not applied; each entry maps (m bucket, n, k, group, format) to the
// fastest config's name. Host only.

#include <map>
#include <string>
#include <tuple>

#include "w4a16/format.h"
#include "w4a16/runner.h"
#include "w4a16/status.h"

namespace w4a16 {

// The m a profiled result applies to: m rounded up to a power of two, so one profile at m = 17
// serves m = 17..32 (the kernels' tiles change at powers of two).
int tuning_m_bucket(int m);

using TuningKey = std::tuple<int, int, int, int, Format>;  // m bucket, n, k, group, format
using TuningTable = std::map<TuningKey, KernelConfig>;

struct TuningDevice {
  std::string name;     // cudaDeviceProp::name
  int sm_count = 0;
  std::string version;  // the library's version
  // cuBLASLt's version (cublasLtGetVersion): a dequant_cublas_lt<r> entry names the r-th entry of
  // that version's heuristic list, so such entries load only where it matches.
  long long cublas_version = 0;
};

std::string tuning_to_json(const TuningDevice& device, const TuningTable& table);
// Reads entries written for `device` into *table (replacing equal keys). A file for another device
// or library version is kInvalidArgument, as is a dequant_cublas_lt entry from another cuBLASLt
// version and anything malformed; config names are parsed but not checked against a runner's list
// (GemmRunner::load_tuning does that).
Status tuning_from_json(const std::string& text, const TuningDevice& device, TuningTable* table);

}  // namespace w4a16
