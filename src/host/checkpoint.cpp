// Decoding GPTQ, AWQ and compressed-tensors 4-bit layers into QuantizedWeights (host only; see
// w4a16/checkpoint.h). Each format's bit layout is written out beside its extractor, with where
// the format's own code defines it.
#include "w4a16/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

namespace w4a16 {

namespace {

Status invalid(const std::string& message) { return Status(StatusCode::kInvalidArgument, "checkpoint: " + message); }

// Element e of a little-endian int32 tensor (the data may be unaligned: memcpy).
uint32_t word_at(const TensorView& t, int64_t e) {
  uint32_t value;
  std::memcpy(&value, t.data + 4 * e, 4);
  return value;
}

// A 16- or 32-bit float tensor's element e as a float.
float float_at(const TensorView& t, int64_t e) {
  if (t.dtype == TensorDtype::kF32) {
    float value;
    std::memcpy(&value, t.data + 4 * e, 4);
    return value;
  }
  uint16_t bits;
  std::memcpy(&bits, t.data + 2 * e, 2);
  return element_to_float(t.dtype == TensorDtype::kBF16 ? ElementType::kBFloat16 : ElementType::kFloat16, bits);
}

Status expect_shape(const TensorView* t, const char* role, TensorDtype dtype, std::vector<int64_t> shape) {
  if (t == nullptr) return invalid(std::string("no ") + role + " tensor");
  if (t->dtype != dtype || t->shape != shape) {
    std::string want = std::string(to_string(dtype)) + " [", got = std::string(to_string(t->dtype)) + " [";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    for (size_t i = 0; i < t->shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t->shape[i]);
    return invalid(t->name + " (" + role + "): expected " + want + "], got " + got + "]");
  }
  return Status::success();
}

Status expect_float(const TensorView* t, const char* role, std::vector<int64_t> shape) {
  if (t == nullptr) return invalid(std::string("no ") + role + " tensor");
  if (t->dtype != TensorDtype::kF16 && t->dtype != TensorDtype::kBF16 && t->dtype != TensorDtype::kF32) {
    return invalid(t->name + " (" + role + "): expected F16, BF16 or F32, got " + to_string(t->dtype));
  }
  return expect_shape(t, role, t->dtype, std::move(shape));
}

// Layer extents are checked before anything is sized from them: a tensor with a zero extent holds
// no bytes, so the reader accepts [2^40, 0], and a loop over its other extent would run for ages.
constexpr int64_t kMaxExtent = int64_t(1) << 30;
Status check_extents(int64_t n, int64_t k) {
  if (n <= 0 || k <= 0 || n > kMaxExtent || k > kMaxExtent) {
    return invalid("layer of n = " + std::to_string(n) + ", k = " + std::to_string(k) +
                   " outside [1, 2^30] (a tensor with a zero or huge extent)");
  }
  return Status::success();
}
// An extent of a packed dimension times its pack factor, refusing products past kMaxExtent.
int64_t unpacked_extent(int64_t packed, int factor) { return packed > kMaxExtent / factor ? kMaxExtent + 1 : packed * factor; }

// The layer in the checkpoint's column order, before act-order sorting.
struct RawLayer {
  int64_t n = 0, k = 0, groups = 0, group_size = 0;
  std::vector<uint8_t> codes;     // [n][k], q in [0, 15]
  std::vector<float> scales;      // [groups][n]
  std::vector<float> zeros;       // [groups][n] in w = s (q - z), or empty (z = 8)
  std::vector<int32_t> group_of;  // [k]
};

// ---------------------------------------------------------------------------------------------
// GPTQ (AutoGPTQ, GPTQModel).
//   qweight int32 [k/8, n]: packed along k; q(i, j) = (qweight[i/8][j] >> 4 (i % 8)) & 0xF.
//   qzeros  int32 [G, n/8]: packed along n; gptq_v2 stores z: z(g, j) = (qzeros[g][j/8] >> 4 (j % 8)) & 0xF.
//           v1 checkpoints store z - 1, and the one is added back to the whole word: z(g, j) =
//           ((qzeros[g][j/8] + 0x11111111) mod 2^32 >> 4 (j % 8)) & 0xF. GPTQModel writes v1 by
//           subtracting 0x11111111 from each word (utils/model.py convert_gptq_v2_to_v1_format_module,
//           as AutoAWQ's packing_utils.unpack_reorder_pack does for exllama), so a zero point of 0
//           borrows from the nibble above; its loader adds 0x11111111 back to the word
//           (convert_gptq_v1_to_v2_format_module), which undoes the borrow. Where no nibble holds 15
//           this is one added to each nibble, as AutoGPTQ's QuantLinear (and vLLM's v1 path) read
//           it. The two readings differ only for a stored 15: GPTQModel's borrow (z = 0 here,
//           what GPTQModel runs) or, in an AutoGPTQ file, a zero point of 0 that AutoGPTQ's own
//           packer could not store (it ORs -1 into the word, overwriting every higher nibble too,
//           and its reader then runs z = 16): there is no faithful reading of such a file, and
//           this one follows the maintained producer.
//   scales  [G, n]; g_idx int32 [k]: the group of input column i (i / group_size without act-order).
//   w[j][i] = scales[g][j] * (q(i, j) - z(g, j)), g = g_idx[i].
Status extract_gptq(const CheckpointTensors& t, const CheckpointConfig& config, RawLayer* raw) {
  if (t.weight == nullptr || t.weight->shape.size() != 2) return invalid("GPTQ qweight must be 2-D");
  raw->k = unpacked_extent(t.weight->shape[0], 8);
  raw->n = t.weight->shape[1];
  if (Status s = check_extents(raw->n, raw->k); !s.ok()) return s;
  const int64_t group_size = config.group_size <= 0 ? raw->k : config.group_size;
  if (group_size <= 0 || raw->k % group_size != 0) return invalid("k = " + std::to_string(raw->k) + " is not a multiple of group_size");
  if (raw->n % 8 != 0) return invalid("GPTQ n must be a multiple of 8");
  raw->group_size = group_size;
  raw->groups = raw->k / group_size;
  if (Status s = expect_shape(t.weight, "qweight", TensorDtype::kI32, {raw->k / 8, raw->n}); !s.ok()) return s;
  if (Status s = expect_shape(t.zeros, "qzeros", TensorDtype::kI32, {raw->groups, raw->n / 8}); !s.ok()) return s;
  if (Status s = expect_float(t.scales, "scales", {raw->groups, raw->n}); !s.ok()) return s;
  const int64_t n = raw->n, k = raw->k;
  raw->codes.resize(size_t(n * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j)
      raw->codes[size_t(j * k + i)] = uint8_t((word_at(*t.weight, (i / 8) * n + j) >> (4 * (i % 8))) & 0xF);
  raw->scales.resize(size_t(raw->groups * n));
  raw->zeros.resize(size_t(raw->groups * n));
  const uint32_t v1_offset = config.gptq_v2 ? 0u : 0x11111111u;  // unsigned: the sum wraps mod 2^32
  for (int64_t g = 0; g < raw->groups; ++g)
    for (int64_t j = 0; j < n; ++j) {
      raw->scales[size_t(g * n + j)] = float_at(*t.scales, g * n + j);
      const uint32_t word = word_at(*t.zeros, g * (n / 8) + j / 8) + v1_offset;
      raw->zeros[size_t(g * n + j)] = float((word >> (4 * (j % 8))) & 0xF);
    }
  raw->group_of.resize(size_t(k));
  if (t.g_idx != nullptr) {
    if (Status s = expect_shape(t.g_idx, "g_idx", TensorDtype::kI32, {k}); !s.ok()) return s;
    for (int64_t i = 0; i < k; ++i) raw->group_of[size_t(i)] = int32_t(word_at(*t.g_idx, i));
  } else {
    for (int64_t i = 0; i < k; ++i) raw->group_of[size_t(i)] = int32_t(i / group_size);
  }
  return Status::success();
}

// ---------------------------------------------------------------------------------------------
// AWQ (AutoAWQ "GEMM").
//   qweight int32 [k, n/8]: packed along n in the interleaved order kOrder: nibble slot s of word
//           qweight[i][w] holds output column 8 w + kOrder[s], so column j is in slot
//           kSlotOf[j % 8]; q(i, j) = (qweight[i][j/8] >> 4 kSlotOf[j % 8]) & 0xF.
//   qzeros  int32 [G, n/8]: the same packing; zero points stored as is.
//   scales  [G, n]; groups are contiguous (no g_idx).
//   w[j][i] = scales[i / g][j] * (q(i, j) - z(i / g, j)).
// The inverse permutation of kOrder = {0, 2, 4, 6, 1, 3, 5, 7} (the packer's order_map).
constexpr int kAwqSlotOf[8] = {0, 4, 1, 5, 2, 6, 3, 7};

Status extract_awq(const CheckpointTensors& t, const CheckpointConfig& config, RawLayer* raw) {
  if (t.weight == nullptr || t.weight->shape.size() != 2) return invalid("AWQ qweight must be 2-D");
  raw->k = t.weight->shape[0];
  raw->n = unpacked_extent(t.weight->shape[1], 8);
  if (Status s = check_extents(raw->n, raw->k); !s.ok()) return s;
  const int64_t group_size = config.group_size <= 0 ? raw->k : config.group_size;
  if (group_size <= 0 || raw->k % group_size != 0) return invalid("k = " + std::to_string(raw->k) + " is not a multiple of group_size");
  raw->group_size = group_size;
  raw->groups = raw->k / group_size;
  if (Status s = expect_shape(t.weight, "qweight", TensorDtype::kI32, {raw->k, raw->n / 8}); !s.ok()) return s;
  if (Status s = expect_shape(t.zeros, "qzeros", TensorDtype::kI32, {raw->groups, raw->n / 8}); !s.ok()) return s;
  if (Status s = expect_float(t.scales, "scales", {raw->groups, raw->n}); !s.ok()) return s;
  const int64_t n = raw->n, k = raw->k;
  auto nibble = [](uint32_t word, int64_t column) { return uint8_t((word >> (4 * kAwqSlotOf[column % 8])) & 0xF); };
  raw->codes.resize(size_t(n * k));
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) raw->codes[size_t(j * k + i)] = nibble(word_at(*t.weight, i * (n / 8) + j / 8), j);
  raw->scales.resize(size_t(raw->groups * n));
  raw->zeros.resize(size_t(raw->groups * n));
  for (int64_t g = 0; g < raw->groups; ++g)
    for (int64_t j = 0; j < n; ++j) {
      raw->scales[size_t(g * n + j)] = float_at(*t.scales, g * n + j);
      raw->zeros[size_t(g * n + j)] = float(nibble(word_at(*t.zeros, g * (n / 8) + j / 8), j));
    }
  raw->group_of.resize(size_t(k));
  for (int64_t i = 0; i < k; ++i) raw->group_of[size_t(i)] = int32_t(i / group_size);
  return Status::success();
}

// ---------------------------------------------------------------------------------------------
// compressed-tensors pack-quantized (compressors/quantized_compressors/pack_quantized.py:
// pack_to_int32 adds 1 << (bits - 1) and packs low nibble first; lifecycle/forward.py
// _dequantize: w = (q - zp) * scale).
//   weight_packed     int32 [n, ceil(k/8)]: packed along k; the signed value v in [-8, 7] is
//                     stored as v + 8: stored(r, c) = (weight_packed[r][c/8] >> 4 (c % 8)) & 0xF.
//   weight_shape      int64 (or int32) [2]: n, k.
//   weight_scale      [n, G] (channel strategy: [n, 1]).
//   weight_zero_point asymmetric only, signed zp in [-8, 7]: since 0.9.4 int32 [ceil(n/8), G]
//                     packed along n the same way (stored zp + 8); before, int8 [n, G] unpacked.
//   weight_g_idx      int32 [k] with actorder "group": the group of input column c (a -1 anywhere
//                     means column order).
//   w[r][c] = scale[r][g] * (v - zp[r][g]) = scale * (stored - (zp + 8)): z = zp + 8 here.
Status extract_compressed_tensors(const CheckpointTensors& t, const CheckpointConfig& config, RawLayer* raw) {
  if (t.weight == nullptr || t.weight->shape.size() != 2) return invalid("compressed-tensors weight_packed must be 2-D");
  raw->n = t.n > 0 ? t.n : t.weight->shape[0];
  raw->k = t.k > 0 ? t.k : unpacked_extent(t.weight->shape[1], 8);
  if (Status s = check_extents(raw->n, raw->k); !s.ok()) return s;
  const int64_t group_size = config.group_size <= 0 ? raw->k : config.group_size;
  if (group_size <= 0 || raw->k % group_size != 0) {
    return invalid("k = " + std::to_string(raw->k) + " is not a multiple of group_size");
  }
  raw->group_size = group_size;
  raw->groups = raw->k / group_size;
  const int64_t n = raw->n, k = raw->k;
  if (Status s = expect_shape(t.weight, "weight_packed", TensorDtype::kI32, {n, (k + 7) / 8}); !s.ok()) return s;
  if (Status s = expect_float(t.scales, "weight_scale", {n, raw->groups}); !s.ok()) return s;
  raw->codes.resize(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c)
      raw->codes[size_t(r * k + c)] = uint8_t((word_at(*t.weight, r * ((k + 7) / 8) + c / 8) >> (4 * (c % 8))) & 0xF);
  raw->scales.resize(size_t(raw->groups * n));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < raw->groups; ++g) raw->scales[size_t(g * n + r)] = float_at(*t.scales, r * raw->groups + g);
  if (t.zeros == nullptr && !config.symmetric) {
    return invalid(t.weight->name + ": the config says asymmetric but the layer has no weight_zero_point");
  }
  if (t.zeros != nullptr) {
    raw->zeros.resize(size_t(raw->groups * n));
    if (t.zeros->dtype != TensorDtype::kI8 && t.zeros->dtype != TensorDtype::kI32) {
      return invalid(t.zeros->name + ": expected I32 (packed) or I8 (before compressed-tensors 0.9.4), got " +
                     to_string(t.zeros->dtype));
    }
    if (t.zeros->dtype == TensorDtype::kI8) {  // before compressed-tensors 0.9.4: unpacked, signed
      if (Status s = expect_shape(t.zeros, "weight_zero_point", TensorDtype::kI8, {n, raw->groups}); !s.ok()) return s;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t g = 0; g < raw->groups; ++g) {
          const int zp = int(static_cast<int8_t>(t.zeros->data[r * raw->groups + g]));
          if (zp < -8 || zp > 7) return invalid(t.zeros->name + ": zero point " + std::to_string(zp) + " outside [-8, 7]");
          raw->zeros[size_t(g * n + r)] = float(zp + 8);
        }
    } else {
      if (Status s = expect_shape(t.zeros, "weight_zero_point", TensorDtype::kI32, {(n + 7) / 8, raw->groups}); !s.ok()) {
        return s;
      }
      for (int64_t r = 0; r < n; ++r)
        for (int64_t g = 0; g < raw->groups; ++g) {
          const int stored = int((word_at(*t.zeros, (r / 8) * raw->groups + g) >> (4 * (r % 8))) & 0xF);
          raw->zeros[size_t(g * n + r)] = float(stored);  // zp + 8: the stored nibble is our z
        }
    }
  }
  raw->group_of.resize(size_t(k));
  bool column_order = t.g_idx == nullptr;
  if (t.g_idx != nullptr) {
    if (Status s = expect_shape(t.g_idx, "weight_g_idx", TensorDtype::kI32, {k}); !s.ok()) return s;
    for (int64_t c = 0; c < k; ++c) {
      raw->group_of[size_t(c)] = int32_t(word_at(*t.g_idx, c));
      column_order |= raw->group_of[size_t(c)] == -1;
    }
  }
  if (column_order) {
    for (int64_t c = 0; c < k; ++c) raw->group_of[size_t(c)] = int32_t(c / group_size);
  }
  return Status::success();
}

}  // namespace

const char* to_string(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::kGptq: return "gptq";
    case CheckpointFormat::kAwq: return "awq";
    case CheckpointFormat::kCompressedTensors: return "compressed-tensors";
  }
  return "unknown";
}

Status find_checkpoint_tensors(const SafetensorsFile& file, CheckpointFormat format, const std::string& prefix,
                               CheckpointTensors* out) {
  return find_checkpoint_tensors(std::vector<const SafetensorsFile*>{&file}, format, prefix, out);
}

Status find_checkpoint_tensors(const std::vector<const SafetensorsFile*>& shards, CheckpointFormat format,
                               const std::string& prefix, CheckpointTensors* out) {
  if (out == nullptr) return invalid("null output");
  // A name in whichever shard holds it.
  struct {
    const std::vector<const SafetensorsFile*>& shards;
    const TensorView* find(const std::string& name) const {
      for (const SafetensorsFile* shard : shards)
        if (const TensorView* t = shard->find(name); t != nullptr) return t;
      return nullptr;
    }
  } file{shards};
  CheckpointTensors t;
  if (format == CheckpointFormat::kCompressedTensors) {
    t.weight = file.find(prefix + "weight_packed");
    t.scales = file.find(prefix + "weight_scale");
    t.zeros = file.find(prefix + "weight_zero_point");
    t.g_idx = file.find(prefix + "weight_g_idx");
    if (const TensorView* shape = file.find(prefix + "weight_shape"); shape != nullptr) {
      if ((shape->dtype != TensorDtype::kI64 && shape->dtype != TensorDtype::kI32) || shape->elements() != 2) {
        return invalid(shape->name + ": expected two integers");
      }
      int64_t dims[2];
      for (int i = 0; i < 2; ++i) {
        if (shape->dtype == TensorDtype::kI64) {
          std::memcpy(&dims[i], shape->data + 8 * i, 8);
        } else {
          int32_t d;
          std::memcpy(&d, shape->data + 4 * i, 4);
          dims[i] = d;
        }
      }
      t.n = dims[0];
      t.k = dims[1];
    }
  } else {
    t.weight = file.find(prefix + "qweight");
    t.scales = file.find(prefix + "scales");
    t.zeros = file.find(prefix + "qzeros");
    t.g_idx = file.find(prefix + "g_idx");
  }
  if (t.weight == nullptr || t.scales == nullptr) {
    return invalid("no " + std::string(to_string(format)) + " layer '" + prefix + "' in the file");
  }
  *out = t;
  return Status::success();
}

Status decode_checkpoint_layer(CheckpointFormat format, const CheckpointTensors& tensors,
                               const CheckpointConfig& config, DecodedLayer* out) {
  if (out == nullptr) return invalid("null output");
  RawLayer raw;
  Status status;
  switch (format) {
    case CheckpointFormat::kGptq: status = extract_gptq(tensors, config, &raw); break;
    case CheckpointFormat::kAwq: status = extract_awq(tensors, config, &raw); break;
    case CheckpointFormat::kCompressedTensors: status = extract_compressed_tensors(tensors, config, &raw); break;
    default: return invalid("unknown format");
  }
  if (!status.ok()) return status;
  const int64_t n = raw.n, k = raw.k;

  // Act-order: sort the columns by group (stable) when g_idx is not already i / group_size. The
  // config and the tensors must agree: act-order needs a g_idx, and a g_idx that reorders columns
  // means act-order (decoding it as column order would give wrong weights).
  if (config.act_order && tensors.g_idx == nullptr) {
    return invalid(tensors.weight->name + ": the config says act-order but the layer has no g_idx");
  }
  std::vector<int32_t> permutation(static_cast<size_t>(k));
  std::iota(permutation.begin(), permutation.end(), 0);
  bool trivial = true;
  for (int64_t c = 0; c < k; ++c) {
    const int32_t g = raw.group_of[size_t(c)];
    if (g < 0 || g >= raw.groups) return invalid("g_idx[" + std::to_string(c) + "] = " + std::to_string(g) + " outside [0, groups)");
    trivial &= g == c / raw.group_size;
  }
  if (!trivial && !config.act_order) {
    return invalid(tensors.weight->name + ": g_idx reorders the columns but the config says no act-order");
  }
  if (!trivial) {
    std::stable_sort(permutation.begin(), permutation.end(),
                     [&](int32_t x, int32_t y) { return raw.group_of[size_t(x)] < raw.group_of[size_t(y)]; });
    for (int64_t c = 0; c < k; ++c) {
      if (raw.group_of[size_t(permutation[size_t(c)])] != c / raw.group_size) {
        return invalid("act-order groups are not all of group_size = " + std::to_string(raw.group_size) + " columns");
      }
    }
  }

  DecodedLayer layer;
  QuantizedWeights& q = layer.weights;
  q.n = int(n);
  q.k = int(k);
  q.group_size = int(raw.group_size);
  q.element = config.element;
  q.codes.resize(size_t(n * k));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < k; ++c) q.codes[size_t(r * k + c)] = raw.codes[size_t(r * k + permutation[size_t(c)])];
  q.scales.resize(raw.scales.size());
  for (size_t i = 0; i < raw.scales.size(); ++i) {
    q.scales[i] = float_to_element(config.element, raw.scales[i]);
    if (!std::isfinite(element_to_float(config.element, q.scales[i]))) {
      return invalid("scale " + std::to_string(i) + " (" + std::to_string(raw.scales[i]) + ") is not finite in " +
                     to_string(config.element));
    }
  }
  // Symmetric checkpoints whose zero points are all 8 (GPTQ sym stores 7 in v1) run scale-only.
  const bool all_eight = std::all_of(raw.zeros.begin(), raw.zeros.end(), [](float z) { return z == 8.0f; });
  if (!raw.zeros.empty() && !(config.symmetric && all_eight)) {
    q.zeros.resize(raw.zeros.size());
    for (size_t i = 0; i < raw.zeros.size(); ++i) q.zeros[i] = float_to_element(config.element, raw.zeros[i]);
  }
  if (!trivial) layer.k_permutation = std::move(permutation);
  *out = std::move(layer);
  return Status::success();
}

namespace {

// The format's weight tensor suffix, which marks a quantized layer, and every suffix of its tensors.
const char* weight_suffix(CheckpointFormat format) {
  return format == CheckpointFormat::kCompressedTensors ? "weight_packed" : "qweight";
}
std::vector<std::string> layer_suffixes(CheckpointFormat format) {
  if (format == CheckpointFormat::kCompressedTensors) {
    return {"weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape"};
  }
  return {"qweight", "scales", "qzeros", "g_idx"};
}

template <class T>
std::vector<uint8_t> as_bytes(const std::vector<T>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

}  // namespace

Status import_checkpoint_tensors(const std::vector<const SafetensorsFile*>& shards, CheckpointFormat format,
                                 const CheckpointConfig& config, std::vector<TensorData>* tensors,
                                 ImportResult* result, void (*progress)(int done, int total)) {
  if (tensors == nullptr) return invalid("null output");
  const std::string suffix = weight_suffix(format);
  // A layer is a tensor named P + suffix with P empty or ending in '.' (so "foo_qweight" is not one).
  std::vector<std::string> prefixes;
  for (const SafetensorsFile* shard : shards) {
    for (const TensorView& t : shard->tensors()) {
      if (t.name.size() < suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      const std::string prefix = t.name.substr(0, t.name.size() - suffix.size());
      if (prefix.empty() || prefix.back() == '.') prefixes.push_back(prefix);
    }
  }
  std::sort(prefixes.begin(), prefixes.end());  // none: a shard of embeddings, norms, lm_head, copied through
  const TensorDtype scale_dtype = config.element == ElementType::kBFloat16 ? TensorDtype::kBF16 : TensorDtype::kF16;
  std::vector<TensorData>& out = *tensors;
  std::set<std::string> consumed;
  int done = 0;
  for (const std::string& prefix : prefixes) {
    CheckpointTensors layer_tensors;
    if (Status s = find_checkpoint_tensors(shards, format, prefix, &layer_tensors); !s.ok()) return s;
    DecodedLayer layer;
    if (Status s = decode_checkpoint_layer(format, layer_tensors, config, &layer); !s.ok()) {
      return Status(s.code(), s.message() + " (layer '" + prefix + "')");
    }
    const QuantizedWeights& q = layer.weights;
    std::vector<uint8_t> packed;
    if (Status s = pack_weights(q, &packed); !s.ok()) return Status(s.code(), s.message() + " (layer '" + prefix + "')");
    const int64_t groups = q.k / q.group_size;
    out.push_back({prefix + "w4a16.packed", TensorDtype::kU8, {q.n, q.k / 2}, std::move(packed)});
    out.push_back({prefix + "w4a16.scales", scale_dtype, {groups, q.n}, as_bytes(q.scales)});
    if (!q.zeros.empty()) out.push_back({prefix + "w4a16.zeros", scale_dtype, {groups, q.n}, as_bytes(q.zeros)});
    if (!layer.k_permutation.empty()) {
      out.push_back({prefix + "w4a16.k_permutation", TensorDtype::kI32, {q.k}, as_bytes(layer.k_permutation)});
    }
    for (const std::string& role : layer_suffixes(format)) consumed.insert(prefix + role);
    if (progress != nullptr) progress(++done, int(prefixes.size()));
  }
  int copied = 0;
  for (const SafetensorsFile* shard : shards) {
    for (const TensorView& t : shard->tensors()) {
      if (consumed.count(t.name)) continue;
      out.push_back({t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.bytes)});
      ++copied;
    }
  }
  if (result != nullptr) {
    result->layers += int(prefixes.size());
    result->copied += copied;
  }
  return Status::success();
}

std::map<std::string, std::string> container_metadata(CheckpointFormat format, const CheckpointConfig& config,
                                                      std::map<std::string, std::string> base) {
  base["w4a16.layout_version"] = kContainerLayoutVersion;
  base["w4a16.element"] = to_string(config.element);
  base["w4a16.source_format"] = to_string(format);
  return base;
}

Status import_checkpoint(const SafetensorsFile& checkpoint, CheckpointFormat format, const CheckpointConfig& config,
                         std::vector<uint8_t>* container, ImportResult* result, void (*progress)(int done, int total)) {
  if (container == nullptr) return invalid("null output");
  std::vector<TensorData> tensors;
  ImportResult counts;
  if (Status s = import_checkpoint_tensors({&checkpoint}, format, config, &tensors, &counts, progress); !s.ok()) return s;
  if (counts.layers == 0) {
    return invalid(std::string("no ") + to_string(format) + " layer (no tensor named *" + weight_suffix(format) + ")");
  }
  if (Status s = write_safetensors(tensors, container_metadata(format, config, checkpoint.metadata()), container); !s.ok()) {
    return s;
  }
  if (result != nullptr) *result = counts;
  return Status::success();
}

Status read_checkpoint_config(const std::string& json_text, CheckpointFormat* format, CheckpointConfig* config) {
  if (format == nullptr || config == nullptr) return invalid("null output");
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& error) {
    return invalid(std::string("config is not valid JSON: ") + error.what());
  }
  if (!root.is_object()) return invalid("config is not a JSON object");
  const nlohmann::json& q = root.contains("quantization_config") ? root["quantization_config"] : root;
  if (!q.is_object()) return invalid("quantization_config is not an object");
  // A typed read of an optional field: absent leaves *value alone; a wrong type is an error.
  Status status;
  auto read_int = [&](const nlohmann::json& object, std::initializer_list<const char*> keys, int* value) {
    for (const char* key : keys) {
      if (!object.contains(key) || object[key].is_null()) continue;
      if (!object[key].is_number_integer() || object[key].get<long long>() < std::numeric_limits<int>::min() ||
          object[key].get<long long>() > std::numeric_limits<int>::max()) {
        status = invalid(std::string("config: '") + key + "' is not an int");
        return;
      }
      *value = object[key].get<int>();
      return;
    }
  };
  auto read_bool = [&](const nlohmann::json& object, const char* key, bool* value) {
    if (!object.contains(key) || object[key].is_null()) return;
    if (!object[key].is_boolean()) {
      status = invalid(std::string("config: '") + key + "' is not a boolean");
      return;
    }
    *value = object[key].get<bool>();
  };
  auto read_string = [&](const nlohmann::json& object, const char* key) {
    return object.contains(key) && object[key].is_string() ? object[key].get<std::string>() : std::string();
  };
  const std::string method = read_string(q, "quant_method");
  if (method == "gptq") *format = CheckpointFormat::kGptq;
  if (method == "awq") *format = CheckpointFormat::kAwq;
  if (method == "compressed-tensors") *format = CheckpointFormat::kCompressedTensors;
  int bits = 4;
  if (*format == CheckpointFormat::kCompressedTensors || q.contains("config_groups")) {
    *format = CheckpointFormat::kCompressedTensors;
    const std::string packing = read_string(q, "format");
    if (!packing.empty() && packing != "pack-quantized") {
      return invalid("compressed-tensors format '" + packing + "' is not pack-quantized");
    }
    if (!q.contains("config_groups") || !q["config_groups"].is_object() || q["config_groups"].empty()) {
      return invalid("compressed-tensors config without config_groups");
    }
    // Every group must agree (a model quantized with two weight schemes is not supported yet).
    bool first = true;
    for (const auto& [name, group] : q["config_groups"].items()) {
      if (!group.is_object() || !group.contains("weights") || !group["weights"].is_object()) {
        return invalid("config group '" + name + "' has no weights scheme");
      }
      const nlohmann::json& w = group["weights"];
      CheckpointConfig c = *config;
      int group_bits = 4;
      read_int(w, {"num_bits"}, &group_bits);
      read_int(w, {"group_size"}, &c.group_size);
      read_bool(w, "symmetric", &c.symmetric);
      const std::string strategy = read_string(w, "strategy");
      if (strategy == "channel") c.group_size = -1;
      c.act_order = w.contains("actorder") && !w["actorder"].is_null() &&
                    !(w["actorder"].is_boolean() && !w["actorder"].get<bool>());
      if (!status.ok()) return status;
      if (!first && (c.group_size != config->group_size || c.symmetric != config->symmetric || group_bits != bits)) {
        return invalid("config groups with different weight schemes");
      }
      bits = group_bits;
      *config = c;
      first = false;
    }
  } else if (*format == CheckpointFormat::kAwq) {
    read_int(q, {"w_bit", "bits"}, &bits);
    read_int(q, {"q_group_size", "group_size"}, &config->group_size);
    bool zero_point = true;
    read_bool(q, "zero_point", &zero_point);
    if (!zero_point) return invalid("AWQ without zero points has no GEMM checkpoint layout");
    config->symmetric = false;
    config->act_order = false;
    const std::string version = read_string(q, "version");
    if (!version.empty() && version != "gemm" && version != "GEMM") {
      return invalid("AWQ version '" + version + "' is not supported (only GEMM)");
    }
  } else {
    read_int(q, {"bits"}, &bits);
    read_int(q, {"group_size"}, &config->group_size);
    read_bool(q, "desc_act", &config->act_order);
    read_bool(q, "sym", &config->symmetric);
    const std::string checkpoint_format = !read_string(q, "format").empty() ? read_string(q, "format")
                                                                            : read_string(q, "checkpoint_format");
    config->gptq_v2 = checkpoint_format == "gptq_v2";
    if (!checkpoint_format.empty() && checkpoint_format != "gptq" && checkpoint_format != "gptq_v2") {
      return invalid("GPTQ checkpoint format '" + checkpoint_format + "' is not supported (gptq, gptq_v2)");
    }
  }
  if (!status.ok()) return status;
  if (bits != 4) return invalid("only 4-bit weights are supported, the config says " + std::to_string(bits));
  if (config->group_size == 0 || config->group_size < -1) {
    return invalid("group_size " + std::to_string(config->group_size) + " is not valid");
  }
  return Status::success();
}

Status load_packed_layer(const SafetensorsFile& container, const std::string& prefix, PackedLayer* out) {
  if (out == nullptr) return invalid("null output");
  const auto& metadata = container.metadata();
  const auto version = metadata.find("w4a16.layout_version");
  if (version == metadata.end() || version->second != kContainerLayoutVersion) {
    return invalid("not a w4a16 container of layout version " + std::string(kContainerLayoutVersion));
  }
  const auto element_name = metadata.find("w4a16.element");
  if (element_name == metadata.end() || (element_name->second != "fp16" && element_name->second != "bf16")) {
    return invalid("container without a valid w4a16.element");
  }
  PackedLayer layer;
  layer.format.element = element_name->second == "bf16" ? ElementType::kBFloat16 : ElementType::kFloat16;
  const TensorDtype scale_dtype = layer.format.element == ElementType::kBFloat16 ? TensorDtype::kBF16 : TensorDtype::kF16;
  layer.packed = container.find(prefix + "w4a16.packed");
  layer.scales = container.find(prefix + "w4a16.scales");
  layer.zeros = container.find(prefix + "w4a16.zeros");
  layer.k_permutation = container.find(prefix + "w4a16.k_permutation");
  if (layer.packed == nullptr || layer.scales == nullptr) return invalid("no packed layer '" + prefix + "'");
  if (layer.packed->dtype != TensorDtype::kU8 || layer.packed->shape.size() != 2 || layer.scales->shape.size() != 2) {
    return invalid(layer.packed->name + ": not a packed layer");
  }
  const int64_t n = layer.packed->shape[0], k = 2 * layer.packed->shape[1], groups = layer.scales->shape[0];
  if (n <= 0 || k <= 0 || n > (1 << 30) || k > (1 << 30) || groups <= 0 || k % groups != 0) {
    return invalid(layer.packed->name + ": implausible shape");
  }
  if (Status s = expect_shape(layer.scales, "scales", scale_dtype, {groups, n}); !s.ok()) return s;
  if (layer.zeros != nullptr) {
    if (Status s = expect_shape(layer.zeros, "zeros", scale_dtype, {groups, n}); !s.ok()) return s;
  }
  if (n % 16 != 0 || k % 64 != 0 || !check_group_size(int(k), int(k / groups)).ok()) {
    return invalid(layer.packed->name + ": n = " + std::to_string(n) + ", k = " + std::to_string(k) + ", group " +
                   std::to_string(k / groups) + " is not a shape the kernels take");
  }
  if (layer.k_permutation != nullptr) {
    if (Status s = expect_shape(layer.k_permutation, "k_permutation", TensorDtype::kI32, {k}); !s.ok()) return s;
    // A permutation of [0, k): whoever gathers A's columns with it must stay inside A.
    std::vector<bool> seen(static_cast<size_t>(k), false);
    for (int64_t c = 0; c < k; ++c) {
      const int32_t source = int32_t(word_at(*layer.k_permutation, c));
      if (source < 0 || source >= k || seen[size_t(source)]) {
        return invalid(layer.k_permutation->name + " is not a permutation of [0, k)");
      }
      seen[size_t(source)] = true;
    }
  }
  layer.n = int(n);
  layer.k = int(k);
  layer.group_size = int(k / groups);
  // Zero points: whole numbers (every importer writes those) run the free path; a container with
  // fractional ones (written by hand, HQQ-style) gets the float-zeros op rather than an error.
  layer.format.quant = QuantOp::kScaleOnly;
  if (layer.zeros != nullptr) {
    std::vector<uint16_t> zeros(size_t(groups * n));
    std::memcpy(zeros.data(), layer.zeros->data, zeros.size() * sizeof(uint16_t));
    layer.format.quant = check_integer_zeros(zeros.data(), zeros.size(), layer.format.element).ok()
                             ? QuantOp::kScaleAndZeros
                             : QuantOp::kScaleAndFloatZeros;
  }
  *out = layer;
  return Status::success();
}

}  // namespace w4a16
