#pragma once
// Decoding the 4-bit checkpoints people download (GPTQ, AWQ, compressed-tensors pack-quantized)
// into QuantizedWeights in this library's meaning, w = s * (q - z), ready for pack_weights().
// Host only; the tensors come from a SafetensorsFile (w4a16/safetensors.h).
//
// Act-order (GPTQ desc_act, compressed-tensors actorder): the checkpoint's g_idx gives each input
// column's group, in no particular order. The decoder sorts the columns by group (a stable sort,
// so columns keep their order inside a group), which makes every group a contiguous run of
// group_size columns as the kernels need, and returns the permutation: column c of the decoded
// weights is column k_permutation[c] of the checkpoint, so the GEMM must read A's columns in that
// order (A'[:, c] = A[:, k_permutation[c]]).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "w4a16/format.h"
#include "w4a16/quantize.h"
#include "w4a16/safetensors.h"
#include "w4a16/status.h"

namespace w4a16 {

enum class CheckpointFormat { kGptq, kAwq, kCompressedTensors };
const char* to_string(CheckpointFormat format);

struct DecodedLayer {
  QuantizedWeights weights;            // [n][k] codes, [k/g][n] scales (and zeros), in k_permutation's order
  std::vector<int32_t> k_permutation;  // empty: the checkpoint's own column order
};

// The quantization settings a checkpoint's config states (quantize_config.json, or config.json's
// "quantization_config").
struct CheckpointConfig {
  int group_size = 128;     // -1 or k: per-channel
  bool symmetric = false;   // GPTQ sym / compressed-tensors symmetric (no zero points stored as data)
  bool act_order = false;   // GPTQ desc_act / compressed-tensors actorder: use g_idx
  bool gptq_v2 = false;     // GPTQ checkpoint_format "gptq_v2": zero points stored as is (v1: minus one)
  // The activation type the layer will run with; scales and zero points are converted to it
  // (rounded to nearest even when the checkpoint stores the other 16-bit type).
  ElementType element = ElementType::kFloat16;
};

// The tensors of one linear layer, by role; null where the format has none.
struct CheckpointTensors {
  const TensorView* weight = nullptr;  // GPTQ/AWQ qweight, compressed-tensors weight_packed
  const TensorView* scales = nullptr;  // scales / weight_scale
  const TensorView* zeros = nullptr;   // qzeros / weight_zero_point
  const TensorView* g_idx = nullptr;   // g_idx / weight_g_idx
  int64_t n = 0, k = 0;                // the layer's shape (compressed-tensors also has weight_shape)
};

// Reads the settings from a checkpoint's config text: GPTQ's quantize_config.json (bits,
// group_size, desc_act, sym, checkpoint_format / format), AWQ's quant_config.json (w_bit / bits,
// q_group_size / group_size, zero_point), or a config.json whose "quantization_config" holds
// either, or compressed-tensors' (format "pack-quantized", config_groups.*.weights: num_bits,
// group_size, symmetric, actorder). Also sets *format from quant_method when it names one.
// Anything but 4-bit weights is an error. `config->element` is left as it is.
Status read_checkpoint_config(const std::string& json_text, CheckpointFormat* format, CheckpointConfig* config);

// Finds `prefix` + the format's tensor names in `file` (e.g. prefix "model.layers.0.mlp.up_proj.").
// n and k come from the tensors' shapes (compressed-tensors: from weight_shape when present).
Status find_checkpoint_tensors(const SafetensorsFile& file, CheckpointFormat format, const std::string& prefix,
                               CheckpointTensors* out);
// The same over the shards of one checkpoint (a layer's tensors may sit in different shards).
Status find_checkpoint_tensors(const std::vector<const SafetensorsFile*>& shards, CheckpointFormat format,
                               const std::string& prefix, CheckpointTensors* out);

// Decodes one layer. Every layout claim is checked against the tensors (dtypes, shapes, the group
// count, act-order groups of exactly group_size columns, codes and zero points in range).
Status decode_checkpoint_layer(CheckpointFormat format, const CheckpointTensors& tensors,
                               const CheckpointConfig& config, DecodedLayer* out);

// ---------------------------------------------------------------------------------------------
// Our container: a safetensors file holding, for every quantized linear layer with name prefix P
// (e.g. "model.layers.0.mlp.up_proj."), the device-ready tensors
//   P + "w4a16.packed"         U8 [n, k/2]       pack_weights() output
//   P + "w4a16.scales"         F16|BF16 [k/g, n]
//   P + "w4a16.zeros"          F16|BF16 [k/g, n] (zero points only)
//   P + "w4a16.k_permutation"  I32 [k]           (act-order only: A's column order)
// with metadata "w4a16.layout_version" = kContainerLayoutVersion and "w4a16.element" ("fp16",
// "bf16"); every tensor of the checkpoint that belongs to no quantized layer is copied through.
constexpr const char* kContainerLayoutVersion = "1";

struct ImportResult {
  int layers = 0;   // quantized layers converted
  int copied = 0;   // other tensors copied through
};

// Converts every quantized layer of the checkpoint's shards (found by the format's weight tensor
// name, its other tensors looked up in every shard) into the container's tensors, appended to
// *tensors; every other tensor is copied through. `progress`, when set, is called after each
// layer.
Status import_checkpoint_tensors(const std::vector<const SafetensorsFile*>& shards, CheckpointFormat format,
                                 const CheckpointConfig& config, std::vector<TensorData>* tensors,
                                 ImportResult* result, void (*progress)(int done, int total) = nullptr);
// The container's metadata for tensors imported with `config` (layout version, element, source
// format), on top of `base` (a checkpoint's own metadata).
std::map<std::string, std::string> container_metadata(CheckpointFormat format, const CheckpointConfig& config,
                                                      std::map<std::string, std::string> base);
// One file in, one container out, in memory; a file without any quantized layer is an error.
Status import_checkpoint(const SafetensorsFile& checkpoint, CheckpointFormat format, const CheckpointConfig& config,
                         std::vector<uint8_t>* container, ImportResult* result,
                         void (*progress)(int done, int total) = nullptr);

// One layer of a container, ready to upload: views into the mapped file.
struct PackedLayer {
  int n = 0, k = 0, group_size = 0;
  // format.quant is kScaleAndFloatZeros when the container's zero points are not all whole numbers
  // (set GemmArguments::float_zeros then), kScaleAndZeros for the whole ones every importer writes.
  Format format;
  const TensorView* packed = nullptr;
  const TensorView* scales = nullptr;
  const TensorView* zeros = nullptr;          // null without zero points
  const TensorView* k_permutation = nullptr;  // null without act-order
};
Status load_packed_layer(const SafetensorsFile& container, const std::string& prefix, PackedLayer* out);

}  // namespace w4a16
