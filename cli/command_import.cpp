// w4a16 import: a GPTQ, AWQ or compressed-tensors checkpoint (one .safetensors file, or a directory
// of shards with its config) into one w4a16 container (w4a16/checkpoint.h). Host only: no GPU.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli_support.h"
#include "cli/commands.h"
#include "w4a16/checkpoint.h"

namespace w4a16::cli {

namespace {

namespace fs = std::filesystem;

struct ImportOptions {
  std::string in, out, format, config, dtype = "fp16";
  int group = 0;  // 0: from the config
  bool sym = false, act_order = false, gptq_v2 = false;
  CLI::Option* sym_option = nullptr;
  CLI::Option* act_order_option = nullptr;
  CLI::Option* gptq_v2_option = nullptr;
};

std::string read_text(const fs::path& path) {
  std::ifstream file(path);
  if (!file) throw CliError("cannot read " + path.string());
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// The shards of the input, and the config file that describes them (explicit, or the first of
// the usual names beside them).
void find_inputs(const ImportOptions& options, std::vector<fs::path>* shards, fs::path* config) {
  std::error_code error;
  const fs::path in(options.in);
  if (fs::is_directory(in, error)) {
    for (const auto& entry : fs::directory_iterator(in, error)) {
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors") shards->push_back(entry.path());
    }
    std::sort(shards->begin(), shards->end());
  } else if (fs::is_regular_file(in, error)) {
    shards->push_back(in);
  } else {
    throw CliError("--in " + options.in + ": no such file or directory");
  }
  if (shards->empty()) throw CliError("--in " + options.in + ": no .safetensors file");
  if (!options.config.empty()) {
    *config = options.config;
    return;
  }
  const fs::path folder = fs::is_directory(in, error) ? in : in.parent_path();
  for (const char* name : {"quantize_config.json", "quant_config.json", "config.json"}) {
    if (fs::is_regular_file(folder / name, error)) {
      *config = folder / name;
      return;
    }
  }
}

CheckpointFormat parse_format(const std::string& name) {
  if (name == "gptq") return CheckpointFormat::kGptq;
  if (name == "awq") return CheckpointFormat::kAwq;
  if (name == "compressed-tensors") return CheckpointFormat::kCompressedTensors;
  throw CliError("unknown --format '" + name + "': use gptq, awq or compressed-tensors");
}

int run_import(const ImportOptions& options) {
  std::vector<fs::path> shards;
  fs::path config_path;
  find_inputs(options, &shards, &config_path);

  // Settings: the config file first, then whatever the command line says explicitly.
  CheckpointFormat format = options.format.empty() ? CheckpointFormat::kGptq : parse_format(options.format);
  CheckpointConfig config;
  config.element = parse_element_type(options.dtype);
  if (!config_path.empty()) {
    CheckpointFormat from_config = format;
    check_status(read_checkpoint_config(read_text(config_path), &from_config, &config), config_path.string().c_str());
    if (!options.format.empty() && from_config != format) {
      throw CliError(config_path.string() + " describes a " + to_string(from_config) + " checkpoint, not " +
                     options.format);
    }
    format = from_config;
  } else if (options.format.empty()) {
    throw CliError("no config file beside the checkpoint: give --format (and --group, --sym, --act-order as needed)");
  }
  if (options.group != 0) {
    if (options.group < -1) throw CliError("--group " + std::to_string(options.group) + ": a group size, or -1 for per-channel");
    config.group_size = options.group;
  }
  if (options.sym_option->count() > 0) config.symmetric = options.sym;
  if (options.act_order_option->count() > 0) config.act_order = options.act_order;
  if (options.gptq_v2_option->count() > 0) config.gptq_v2 = options.gptq_v2;
  std::fprintf(stderr, "import %s checkpoint: %zu file(s), group %d, %s, %s%s%s\n", to_string(format), shards.size(),
               config.group_size, to_string(config.element), config.symmetric ? "symmetric" : "zero points",
               config.act_order ? ", act-order" : "", config.gptq_v2 ? ", gptq_v2" : "");

  // Every shard mapped at once: a layer's tensors may sit in different shards.
  std::vector<SafetensorsFile> files(shards.size());
  std::vector<const SafetensorsFile*> views;
  for (size_t i = 0; i < shards.size(); ++i) {
    check_status(SafetensorsFile::open(shards[i].string(), &files[i]), "open");
    views.push_back(&files[i]);
  }
  std::vector<TensorData> tensors;
  ImportResult result;
  // A progress line on stderr, rewritten per layer.
  check_status(import_checkpoint_tensors(views, format, config, &tensors, &result,
                                         [](int done, int total) { std::fprintf(stderr, "\r  layer %d/%d", done, total); }),
               "import");
  std::fprintf(stderr, "\n");
  const std::map<std::string, std::string> metadata = files.front().metadata();
  if (result.layers == 0) throw CliError("no quantized layer found in " + options.in);
  std::vector<uint8_t> bytes;
  check_status(write_safetensors(tensors, container_metadata(format, config, metadata), &bytes), "write");
  std::ofstream out(options.out, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!out) throw CliError("could not write " + options.out);
  std::printf("wrote %s: %d quantized layers, %d tensors copied through, %.1f MB\n", options.out.c_str(), result.layers,
              result.copied, bytes.size() / 1e6);
  return 0;
}

}  // namespace

void register_import(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ImportOptions>();
  CLI::App* command =
      app.add_subcommand("import", "Convert a GPTQ, AWQ or compressed-tensors checkpoint into a w4a16 container");
  command->add_option("--in", options->in, "a .safetensors file, or a directory of shards")->required();
  command->add_option("--out", options->out, "the container to write (.safetensors)")->required();
  command->add_option("--format", options->format, "gptq, awq or compressed-tensors (default: from the config)")
      ->check(CLI::IsMember({"gptq", "awq", "compressed-tensors"}));
  command->add_option("--config", options->config,
                      "quantize_config.json / quant_config.json / config.json (default: found beside --in)");
  command->add_option("--dtype", options->dtype, "activation type the model runs in: fp16 or bf16")
      ->check(CLI::IsMember({"fp16", "bf16"}));
  command->add_option("--group", options->group, "group size (overrides the config; -1: per-channel)");
  options->sym_option = command->add_flag("--sym,!--no-sym", options->sym, "symmetric weights (overrides the config)");
  options->act_order_option =
      command->add_flag("--act-order,!--no-act-order", options->act_order,
                        "the checkpoint uses act-order: g_idx required, and a reordering g_idx is an error without it "
                        "(overrides the config)");
  options->gptq_v2_option =
      command->add_flag("--gptq-v2,!--gptq-v1", options->gptq_v2, "GPTQ zero points stored as is (v2) or minus one (v1)");
  command->callback([options, exit_code] { *exit_code = run_import(*options); });
}

}  // namespace w4a16::cli
