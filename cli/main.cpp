// w4a16: device info, correctness check against the CPU reference, the benchmark, checkpoint import.
#include <cstdio>

#include "cli/cli_support.h"
#include "cli/commands.h"

namespace w4a16::cli {

bool require_gpu(const char* command) {
  int devices = 0;
  const cudaError_t error = cudaGetDeviceCount(&devices);
  if (error != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "w4a16 %s: no CUDA device found (%s); this command needs a GPU\n", command,
                 error != cudaSuccess ? cudaGetErrorString(error) : "0 devices");
    cudaGetLastError();
    return false;
  }
  return true;
}

}  // namespace w4a16::cli

int main(int argc, char** argv) {
  CLI::App app{"w4a16: 16-bit activations x INT4 weights GEMM library tool"};
  app.require_subcommand(1);
  int exit_code = 0;
  w4a16::cli::register_info(app, &exit_code);
  w4a16::cli::register_verify(app, &exit_code);
  w4a16::cli::register_bench(app, &exit_code);
  w4a16::cli::register_import(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  } catch (const w4a16::cli::CliError& error) {
    std::fprintf(stderr, "w4a16: %s\n", error.what());
    return 1;
  }
  return exit_code;
}
