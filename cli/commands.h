#pragma once
#include <CLI/CLI.hpp>

namespace w4a16::cli {

// Each registers its subcommand; the callback stores the command's exit code in *exit_code.
void register_info(CLI::App& app, int* exit_code);
void register_verify(CLI::App& app, int* exit_code);
void register_bench(CLI::App& app, int* exit_code);
void register_import(CLI::App& app, int* exit_code);

}  // namespace w4a16::cli
