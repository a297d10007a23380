// w4a16 info: the device and the kernel configs this build has for it.
#include <cstdio>

#include "cli/cli_support.h"
#include "cli/commands.h"
#include "w4a16/runner.h"

namespace w4a16::cli {

void register_info(CLI::App& app, int* exit_code) {
  CLI::App* command = app.add_subcommand("info", "Device, architecture, SM count and available kernels");
  command->callback([exit_code] {
    if (!require_gpu("info")) {
      *exit_code = 2;
      return;
    }
    int device = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp properties;
    check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    std::printf("device        %d: %s\n", device, properties.name);
    std::printf("architecture  sm_%d%d\n", properties.major, properties.minor);
    std::printf("SMs           %d\n", properties.multiProcessorCount);
    std::printf("L2            %.1f MiB\n", properties.l2CacheSize / 1048576.0);
    std::printf("memory        %.1f GiB\n", properties.totalGlobalMem / 1073741824.0);
    std::printf("CUDA          runtime %d, driver %d\n", runtime, driver);

    GemmRunner runner;
    if (!runner.status().ok()) {
      std::printf("kernels       none: %s\n", runner.status().to_string().c_str());
      *exit_code = 1;
      return;
    }
    std::printf("kernels       %zu configs\n", runner.configs().size());
    for (const KernelConfig& config : runner.configs()) {
      std::printf("  %-22s %s\n", to_string(config.family), config.name().c_str());
    }
  });
}

}  // namespace w4a16::cli
