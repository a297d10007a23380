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

// Finds `prefix` + the format's tensor names in `file` (e.g. prefix "model.layers.0.mlp.up_proj.").
// n and k come from the tensors' shapes (compressed-tensors: from weight_shape when present).
Status find_checkpoint_tensors(const SafetensorsFile& file, CheckpointFormat format, const std::string& prefix,
                               CheckpointTensors* out);

// Decodes one layer. Every layout claim is checked against the tensors (dtypes, shapes, the group
// count, act-order groups of exactly group_size columns, codes and zero points in range).
Status decode_checkpoint_layer(CheckpointFormat format, const CheckpointTensors& tensors,
                               const CheckpointConfig& config, DecodedLayer* out);

}  // namespace w4a16
