// w4a16: device info, correctness check against the CPU reference, the benchmark, checkpoint import.
#include <cstdio>

#include "cli/cli_support.h"
#include "cli/commands.h"
#include "w4a16/quantize.h"

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

void check_problem_options(int m, int n, int k, int group) {
  auto positive = [](const char* option, int value) {
    if (value <= 0) throw CliError(std::string(option) + " " + std::to_string(value) + ": must be a positive integer");
  };
  positive("--m", m);
  positive("--n", n);
  positive("--k", k);
  if (n % 16 != 0) throw CliError("--n " + std::to_string(n) + ": must be a multiple of 16 (the packed layout's tile rows)");
  if (k % 64 != 0) throw CliError("--k " + std::to_string(k) + ": must be a multiple of 64 (the packed layout's tile columns)");
  if (Status s = check_group_size(k, group); !s.ok()) throw CliError("--group " + std::to_string(group) + ": " + s.message());
}

}  // namespace w4a16::cli

int main(int argc, char** argv) {
  CLI::App app{"w4a16: 16-bit activations x INT4 weights GEMM library tool"};
  app.require_subcommand(1);
  // An unknown word is named, with the commands there are (CLI11 alone says "A subcommand is required").
  if (argc >= 2 && argv[1][0] != '-') {
    const std::string word = argv[1];
    if (word != "info" && word != "verify" && word != "bench" && word != "import") {
      std::fprintf(stderr, "w4a16: unknown command '%s': use info, verify, bench or import (--help for more)\n",
                   word.c_str());
      return 2;
    }
  }
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
