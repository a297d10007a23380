// The Python extension (nanobind): w4a16's host tools on NumPy arrays, and the GPU runner on raw
// device pointers. Plain bindings over the C++ API (include/w4a16/); every failing Status becomes
// a ValueError carrying its message. 16-bit element arrays (scales, zero points, activations)
// cross as uint16 bit patterns, since NumPy has no bfloat16; python/w4a16/__init__.py adds the
// float16 conveniences.
//
// The runner takes device pointers and a stream as Python ints, so the extension never compiles
// against PyTorch (or any array library): python/w4a16/torch.py passes tensor.data_ptr() and the
// handle of PyTorch's current stream, and one build serves every PyTorch version.
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "w4a16/checkpoint.h"
#include "w4a16/quantize.h"
#include "w4a16/reference.h"
#include "w4a16/runner.h"
#include "w4a16/safetensors.h"

namespace nb = nanobind;

namespace {

void throw_if_failed(const w4a16::Status& status) {
  if (!status.ok()) throw nb::value_error(status.to_string().c_str());
}

w4a16::ElementType element_of(const std::string& dtype) {
  if (dtype == "fp16") return w4a16::ElementType::kFloat16;
  if (dtype == "bf16") return w4a16::ElementType::kBFloat16;
  throw nb::value_error(("dtype must be 'fp16' or 'bf16', got '" + dtype + "'").c_str());
}

// The quant op from Python's two flags: `zeros` (there are zero points) and `float_zeros` (they
// may be fractional, QuantOp::kScaleAndFloatZeros). float_zeros describes zero points, so it
// without them is an error here as in GemmArguments (runner.h), not silently the symmetric op.
w4a16::QuantOp quant_of(bool zeros, bool float_zeros) {
  if (float_zeros && !zeros) throw nb::value_error("float_zeros is set without zero points (it describes them)");
  if (!zeros) return w4a16::QuantOp::kScaleOnly;
  return float_zeros ? w4a16::QuantOp::kScaleAndFloatZeros : w4a16::QuantOp::kScaleAndZeros;
}

// A NumPy array owning a copy of `values`, shaped `shape`.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(const std::vector<T>& values, std::vector<size_t> shape) {
  auto* copy = new std::vector<T>(values);
  nb::capsule owner(copy, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(copy->data(), shape.size(), shape.data(), owner);
}

template <class Array>
std::vector<size_t> shape_of(const Array& array) {
  std::vector<size_t> shape(array.ndim());
  for (size_t d = 0; d < shape.size(); ++d) shape[d] = array.shape(d);
  return shape;
}

using Codes = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Bits2D = nb::ndarray<const uint16_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// ---------------------------------------------------------------------------------------------
// The runner.

// GemmRunner for Python. GemmRunner's const methods (gemm, workspace_bytes, default_config, ...)
// may run on several threads at once, but profile(), load_tuning() and set_programmatic_launch()
// change it and must not overlap anything (include/w4a16/runner.h). Python threads share objects
// freely and the GPU calls below run with the GIL released, so the binding states that contract
// as a reader-writer lock: the const calls take it shared, the three mutators exclusive.
// Uncontended it costs tens of nanoseconds, nothing next to a launch. Lock order: the GIL is
// released before the lock is taken, and nothing holding the lock needs the GIL, so the two
// cannot deadlock.
struct Runner {
  Runner() {
    // No GPU, no kernel for it, cuBLAS failing: nothing this object could do would work.
    if (!runner.status().ok()) throw std::runtime_error(runner.status().to_string());
  }
  w4a16::GemmRunner runner;
  std::shared_mutex mutex;
};

// Runs `work` (C++ only: it must not touch a Python object) under the runner's lock with the GIL
// released, so that a thread waiting for the lock (profile() on another thread holds it for
// seconds) does not hold every other Python thread up with it.
template <class Lock, class Work>
auto under_lock(Runner& r, Work work) {
  nb::gil_scoped_release release;
  Lock lock(r.mutex);
  return work();
}
using SharedLock = std::shared_lock<std::shared_mutex>;
using ExclusiveLock = std::unique_lock<std::shared_mutex>;

// A pointer argument: a Python int (tensor.data_ptr(), 0 for none).
template <class T = void>
T* pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// One call's GemmArguments from the Python arguments; the format follows from `dtype`, whether
// `zeros` is set and `float_zeros`, exactly as in C++ (float_zeros without zeros is the runner's
// argument error, reported with its message).
w4a16::GemmArguments arguments_of(uintptr_t a, uintptr_t packed_weights, uintptr_t scales, uintptr_t zeros,
                                  uintptr_t bias, uintptr_t c, uintptr_t k_permutation, int m, int n, int k,
                                  int group_size, float alpha, const std::string& dtype, bool float_zeros) {
  w4a16::GemmArguments args;
  args.a = pointer<const void>(a);
  args.packed_weights = pointer<const void>(packed_weights);
  args.scales = pointer<const void>(scales);
  args.zeros = pointer<const void>(zeros);
  args.bias = pointer<const void>(bias);
  args.c = pointer(c);
  args.k_permutation = pointer<const int32_t>(k_permutation);
  args.m = m;
  args.n = n;
  args.k = k;
  args.group_size = group_size;
  args.alpha = alpha;
  args.element = element_of(dtype);
  args.float_zeros = float_zeros;
  return args;
}

w4a16::KernelConfig config_named(const std::string& name) {
  w4a16::KernelConfig config;
  if (!w4a16::parse_kernel_config(name, &config)) {
    throw nb::value_error(("config '" + name + "' is not a config name (Runner.configs() lists this GPU's)").c_str());
  }
  return config;
}

std::vector<std::string> names_of(const std::vector<w4a16::KernelConfig>& configs) {
  std::vector<std::string> names;
  names.reserve(configs.size());
  for (const auto& config : configs) names.push_back(config.name());
  return names;
}

// The CLI's names for the launch modes (w4a16 bench --pdl).
const char* launch_mode_name(w4a16::GemmRunner::ProgrammaticLaunch mode) {
  switch (mode) {
    case w4a16::GemmRunner::ProgrammaticLaunch::kOff: return "off";
    case w4a16::GemmRunner::ProgrammaticLaunch::kWhereItHelps: return "auto";
    case w4a16::GemmRunner::ProgrammaticLaunch::kAlways: return "always";
  }
  return "?";
}

// The Python signature every pointer-level runner call starts with (gemm, workspace_bytes,
// profile): one list, so the three cannot drift apart. Each then ends in the keyword float_zeros
// (GemmArguments::float_zeros), after the arguments it had before, so positional calls keep working.
#define W4A16_GEMM_ARGUMENT_NAMES                                                                         \
  nb::arg("a"), nb::arg("packed_weights"), nb::arg("scales"), nb::arg("zeros"), nb::arg("bias"), nb::arg("c"), \
      nb::arg("k_permutation"), nb::arg("m"), nb::arg("n"), nb::arg("k"), nb::arg("group_size"),             \
      nb::arg("alpha"), nb::arg("dtype")

// ---------------------------------------------------------------------------------------------
// One layer of a w4a16 container, copied out of the mapped file (PackedLayer's views die with the
// file, and the caller wants arrays it can upload).
struct HostPackedLayer {
  int n = 0, k = 0, group_size = 0;
  w4a16::ElementType element = w4a16::ElementType::kFloat16;
  std::vector<uint8_t> packed;          // [n, k / 2]: pack_weights() output
  std::vector<uint16_t> scales;         // [k / group, n] bits of element
  std::vector<uint16_t> zeros;          // the same, or empty (symmetric)
  bool float_zeros = false;             // the zeros are not all whole numbers (kScaleAndFloatZeros)
  std::vector<int32_t> k_permutation;   // [k], or empty (the checkpoint's own column order)
  std::vector<uint16_t> bias;           // [n] bits of element, or empty
};

template <class T>
std::vector<T> copy_of(const w4a16::TensorView& view) {
  std::vector<T> out(view.bytes / sizeof(T));
  std::memcpy(out.data(), view.data, out.size() * sizeof(T));  // the mapping promises no alignment
  return out;
}

// The layer's bias, when the container has one: `prefix` + "bias", which the importer copies
// through from the checkpoint unchanged (so it may be fp32, or the other 16-bit type). Returned
// as bits of the layer's element type, rounded to nearest even where it was wider.
std::vector<uint16_t> bias_of(const w4a16::SafetensorsFile& file, const std::string& prefix, int n,
                              w4a16::ElementType element) {
  const w4a16::TensorView* view = file.find(prefix + "bias");
  if (view == nullptr) return {};
  if (view->elements() != n || view->shape.size() != 1) {
    throw nb::value_error((view->name + ": a bias of " + std::to_string(n) + " elements expected").c_str());
  }
  std::vector<uint16_t> bits(static_cast<size_t>(n));
  switch (view->dtype) {
    case w4a16::TensorDtype::kF32: {
      const std::vector<float> values = copy_of<float>(*view);
      for (int i = 0; i < n; ++i) bits[size_t(i)] = w4a16::float_to_element(element, values[size_t(i)]);
      return bits;
    }
    case w4a16::TensorDtype::kF16:
    case w4a16::TensorDtype::kBF16: {
      const w4a16::ElementType stored =
          view->dtype == w4a16::TensorDtype::kF16 ? w4a16::ElementType::kFloat16 : w4a16::ElementType::kBFloat16;
      const std::vector<uint16_t> values = copy_of<uint16_t>(*view);
      if (stored == element) return values;
      for (int i = 0; i < n; ++i)
        bits[size_t(i)] = w4a16::float_to_element(element, w4a16::element_to_float(stored, values[size_t(i)]));
      return bits;
    }
    default:
      throw nb::value_error((view->name + ": bias of dtype " + w4a16::to_string(view->dtype) +
                             ", expected F32, F16 or BF16")
                                .c_str());
  }
}

}  // namespace

NB_MODULE(_w4a16, m) {
  m.doc() = "w4a16: host tools (quantize, pack, unpack, CPU reference, checkpoints) and the GPU runner";

  nb::class_<w4a16::QuantizedWeights>(m, "QuantizedWeights",
                                      "Weights of one linear layer: w = s * (q - z), z = 8 without zero points")
      .def(nb::init<>())
      // From arrays, e.g. a tensor-parallel shard (w4a16.sharding), so reference_gemm and
      // dequantized() work on weights that quantize() did not make. Copies; checks every shape.
      .def("__init__", [](w4a16::QuantizedWeights* self, Codes codes, Bits2D scale_bits, nb::object zero_bits,
                          int group_size, const std::string& dtype, bool float_zeros) {
        const int n = int(codes.shape(0)), k = int(codes.shape(1));
        throw_if_failed(w4a16::check_group_size(k, group_size));
        const auto expect_group_shape = [&](const Bits2D& bits, const char* name) {
          if (int(bits.shape(0)) != k / group_size || int(bits.shape(1)) != n) {
            throw nb::value_error((std::string(name) + " has shape [" + std::to_string(bits.shape(0)) + ", " +
                                   std::to_string(bits.shape(1)) + "], expected [k / group_size, n] = [" +
                                   std::to_string(k / group_size) + ", " + std::to_string(n) + "]")
                                      .c_str());
          }
        };
        expect_group_shape(scale_bits, "scale_bits");
        for (size_t i = 0; i < codes.size(); ++i) {
          if (codes.data()[i] > 15) {
            throw nb::value_error(("codes[" + std::to_string(i / size_t(k)) + "][" + std::to_string(i % size_t(k)) +
                                   "] = " + std::to_string(codes.data()[i]) + " outside [0, 15]")
                                      .c_str());
          }
        }
        w4a16::QuantizedWeights q;
        q.n = n;
        q.k = k;
        q.group_size = group_size;
        q.element = element_of(dtype);
        q.codes.assign(codes.data(), codes.data() + codes.size());
        q.scales.assign(scale_bits.data(), scale_bits.data() + scale_bits.size());
        if (!zero_bits.is_none()) {
          const Bits2D zeros = nb::cast<Bits2D>(zero_bits, /*convert=*/false);
          expect_group_shape(zeros, "zero_bits");
          q.zeros.assign(zeros.data(), zeros.data() + zeros.size());
        }
        // Only marks the op: the values are not checked here, since dequantized() and
        // reference_gemm compute with the exact zero points either way (check_integer_zeros and
        // W4A16Linear check them where the kernels would round them).
        quant_of(!q.zeros.empty(), float_zeros);
        q.float_zeros = float_zeros;
        new (self) w4a16::QuantizedWeights(std::move(q));
      // noconvert: an int64 code of 256 or float16 scales would otherwise be converted by value
      // (256 wraps to 0, 0.5 becomes 0) before any check sees them.
      }, nb::arg("codes").noconvert(), nb::arg("scale_bits").noconvert(), nb::arg("zero_bits") = nb::none(),
         nb::arg("group_size") = 128,
         nb::arg("dtype") = "fp16", nb::arg("float_zeros") = false,
         "From arrays: codes [n, k] uint8 in [0, 15], scale_bits and zero_bits (or None) [k / group_size, n] uint16 "
         "bits of dtype; float_zeros: the zero points may be fractional (the float-zeros format).")
      .def_ro("n", &w4a16::QuantizedWeights::n)
      .def_ro("k", &w4a16::QuantizedWeights::k)
      .def_ro("group_size", &w4a16::QuantizedWeights::group_size)
      .def_prop_ro("dtype", [](const w4a16::QuantizedWeights& q) { return std::string(w4a16::to_string(q.element)); })
      .def_prop_ro("has_zeros", [](const w4a16::QuantizedWeights& q) { return !q.zeros.empty(); })
      .def_prop_ro("float_zeros", [](const w4a16::QuantizedWeights& q) {
        return q.quant() == w4a16::QuantOp::kScaleAndFloatZeros;
      }, "The zero points may be fractional (run them with float_zeros=True)")
      .def_prop_ro("format", [](const w4a16::QuantizedWeights& q) {
        return std::string(w4a16::format_name(q.format()));
      }, "e.g. 'fp16', 'bf16+zeros', 'fp16+float-zeros' (the tuning file's format names)")
      // Properties return copies as new arrays (nb::object: a property's default reference_internal
      // policy would try to tie an already-owned array to the QuantizedWeights).
      .def_prop_ro("codes", [](const w4a16::QuantizedWeights& q) -> nb::object {
        return nb::cast(to_numpy(q.codes, {size_t(q.n), size_t(q.k)}));
      }, "[n, k] uint8 codes q in [0, 15]")
      .def_prop_ro("scale_bits", [](const w4a16::QuantizedWeights& q) -> nb::object {
        return nb::cast(to_numpy(q.scales, {size_t(q.k / q.group_size), size_t(q.n)}));
      }, "[k / group, n] uint16: bits of dtype")
      .def_prop_ro("zero_bits", [](const w4a16::QuantizedWeights& q) -> nb::object {
        if (q.zeros.empty()) return nb::none();
        return nb::cast(to_numpy(q.zeros, {size_t(q.k / q.group_size), size_t(q.n)}));
      }, "[k / group, n] uint16 bits of dtype, or None (symmetric)")
      .def("dequantized", [](const w4a16::QuantizedWeights& q) {
        std::vector<double> w(size_t(q.n) * q.k);
        for (int r = 0; r < q.n; ++r)
          for (int c = 0; c < q.k; ++c) w[size_t(r) * q.k + c] = q.dequantized(r, c);
        return to_numpy(w, {size_t(q.n), size_t(q.k)});
      }, "[n, k] float64: s * (q - z), exact");

  m.def("quantize", [](nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu> weights, int group_size,
                       const std::string& dtype, bool zeros, bool float_zeros) {
    w4a16::QuantizeOptions options;
    options.group_size = group_size;
    options.element = element_of(dtype);
    options.quant = quant_of(zeros, float_zeros);
    w4a16::QuantizedWeights q;
    throw_if_failed(w4a16::quantize(weights.data(), int(weights.shape(0)), int(weights.shape(1)), options, &q));
    return q;
  }, nb::arg("weights"), nb::arg("group_size") = 128, nb::arg("dtype") = "fp16", nb::arg("zeros") = false,
        nb::arg("float_zeros") = false,
        "Quantize [n, k] float32 weights (nn.Linear layout) per group along k. The zero points are whole numbers "
        "either way; float_zeros (with zeros) marks them for the float-zeros format.");

  m.def("check_integer_zeros", [](nb::ndarray<const uint16_t, nb::c_contig, nb::device::cpu> zero_bits,
                                  const std::string& dtype) {
    throw_if_failed(w4a16::check_integer_zeros(zero_bits.data(), zero_bits.size(), element_of(dtype)));
  }, nb::arg("zero_bits").noconvert(), nb::arg("dtype") = "fp16",
        "ValueError naming the first zero point (uint16 bits of dtype, flat index) that is not a whole number in "
        "[0, 15]: those need float_zeros (the kernels round them otherwise).");

  m.def("pack", [](Codes codes) {
    std::vector<uint8_t> packed;
    throw_if_failed(w4a16::pack_weights(codes.data(), int(codes.shape(0)), int(codes.shape(1)), &packed));
    return to_numpy(packed, {packed.size()});
  }, nb::arg("codes"), "Pack [n, k] uint8 codes into the kernels' layout (n % 16 == 0, k % 64 == 0).");

  m.def("unpack", [](nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> packed, int n, int k) {
    if (packed.size() != w4a16::packed_weight_bytes(n, k)) {
      throw nb::value_error(("packed holds " + std::to_string(packed.size()) + " bytes, n * k / 2 = " +
                             std::to_string(w4a16::packed_weight_bytes(n, k)))
                                .c_str());
    }
    std::vector<uint8_t> codes;
    throw_if_failed(w4a16::unpack_weights(packed.data(), n, k, &codes));
    return to_numpy(codes, {size_t(n), size_t(k)});
  }, nb::arg("packed"), nb::arg("n"), nb::arg("k"), "Exact inverse of pack.");

  m.def("reference_gemm", [](Bits2D a, const w4a16::QuantizedWeights& weights, nb::object bias, float alpha) {
    if (int(a.shape(1)) != weights.k) {
      throw nb::value_error(("a has " + std::to_string(a.shape(1)) + " columns, the weights' k is " +
                             std::to_string(weights.k))
                                .c_str());
    }
    std::vector<uint16_t> bias_bits;
    if (!bias.is_none()) {
      auto b = nb::cast<nb::ndarray<const uint16_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>>(bias);
      if (int(b.shape(0)) != weights.n) throw nb::value_error("bias must have n elements");
      bias_bits.assign(b.data(), b.data() + b.size());
    }
    std::vector<double> c;
    throw_if_failed(w4a16::reference_gemm(a.data(), int(a.shape(0)), weights, bias_bits.empty() ? nullptr : bias_bits.data(),
                                          alpha, {}, &c));
    return to_numpy(c, {size_t(a.shape(0)), size_t(weights.n)});
  }, nb::arg("a_bits"), nb::arg("weights"), nb::arg("bias_bits") = nb::none(), nb::arg("alpha") = 1.0f,
        "C = alpha * A * dequant(W)^T (+ bias) in float64; A [m, k] and bias [n] as uint16 bits of the weights' dtype.");

  m.def("element_bits", [](nb::ndarray<const float, nb::c_contig, nb::device::cpu> values, const std::string& dtype) {
    const w4a16::ElementType element = element_of(dtype);
    std::vector<uint16_t> bits(values.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = w4a16::float_to_element(element, values.data()[i]);
    return to_numpy(bits, shape_of(values));
  }, nb::arg("values"), nb::arg("dtype"), "float32 -> uint16 bits of fp16 or bf16 (round to nearest even).");

  m.def("element_values", [](nb::ndarray<const uint16_t, nb::c_contig, nb::device::cpu> bits, const std::string& dtype) {
    const w4a16::ElementType element = element_of(dtype);
    std::vector<float> values(bits.size());
    for (size_t i = 0; i < values.size(); ++i) values[i] = w4a16::element_to_float(element, bits.data()[i]);
    return to_numpy(values, shape_of(bits));
  }, nb::arg("bits"), nb::arg("dtype"), "uint16 bits of fp16 or bf16 -> float32.");

  m.def("import_checkpoint", [](const std::string& path, const std::string& out_path, const std::string& format,
                                int group_size, bool symmetric, bool act_order, bool gptq_v2, const std::string& dtype) {
    w4a16::CheckpointFormat f;
    if (format == "gptq") f = w4a16::CheckpointFormat::kGptq;
    else if (format == "awq") f = w4a16::CheckpointFormat::kAwq;
    else if (format == "compressed-tensors") f = w4a16::CheckpointFormat::kCompressedTensors;
    else throw nb::value_error("format must be 'gptq', 'awq' or 'compressed-tensors'");
    w4a16::CheckpointConfig config;
    config.group_size = group_size;
    config.symmetric = symmetric;
    config.act_order = act_order;
    config.gptq_v2 = gptq_v2;
    config.element = element_of(dtype);
    w4a16::SafetensorsFile file;
    throw_if_failed(w4a16::SafetensorsFile::open(path, &file));
    std::vector<uint8_t> bytes;
    w4a16::ImportResult result;
    {
      nb::gil_scoped_release release;  // pure host work on the mapped file
      throw_if_failed(w4a16::import_checkpoint(file, f, config, &bytes, &result));
    }
    FILE* out = std::fopen(out_path.c_str(), "wb");
    if (out == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), out) != bytes.size()) {
      if (out) std::fclose(out);
      throw nb::value_error(("could not write " + out_path).c_str());
    }
    std::fclose(out);
    return result.layers;
  }, nb::arg("path"), nb::arg("out_path"), nb::arg("format"), nb::arg("group_size") = 128, nb::arg("symmetric") = false,
        nb::arg("act_order") = false, nb::arg("gptq_v2") = false, nb::arg("dtype") = "fp16",
        "Convert one checkpoint .safetensors file into a w4a16 container; returns the number of layers.");

  nb::class_<HostPackedLayer>(m, "PackedLayer", "One layer of a w4a16 container, as host arrays ready to upload")
      .def_ro("n", &HostPackedLayer::n)
      .def_ro("k", &HostPackedLayer::k)
      .def_ro("group_size", &HostPackedLayer::group_size)
      .def_prop_ro("dtype", [](const HostPackedLayer& l) { return std::string(w4a16::to_string(l.element)); })
      .def_prop_ro("has_zeros", [](const HostPackedLayer& l) { return !l.zeros.empty(); })
      .def_prop_ro("float_zeros", [](const HostPackedLayer& l) { return l.float_zeros; },
                   "The container's zero points are not all whole numbers (run them with float_zeros=True)")
      .def_prop_ro("format", [](const HostPackedLayer& l) {
        return std::string(w4a16::format_name({l.element, quant_of(!l.zeros.empty(), l.float_zeros)}));
      }, "e.g. 'fp16', 'bf16+zeros', 'fp16+float-zeros'")
      .def_prop_ro("packed", [](const HostPackedLayer& l) -> nb::object {
        return nb::cast(to_numpy(l.packed, {size_t(l.n), size_t(l.k / 2)}));
      }, "[n, k / 2] uint8: the packed weights (pack's output)")
      .def_prop_ro("scale_bits", [](const HostPackedLayer& l) -> nb::object {
        return nb::cast(to_numpy(l.scales, {size_t(l.k / l.group_size), size_t(l.n)}));
      }, "[k / group, n] uint16: bits of dtype")
      .def_prop_ro("zero_bits", [](const HostPackedLayer& l) -> nb::object {
        if (l.zeros.empty()) return nb::none();
        return nb::cast(to_numpy(l.zeros, {size_t(l.k / l.group_size), size_t(l.n)}));
      }, "[k / group, n] uint16 bits of dtype, or None (symmetric)")
      .def_prop_ro("k_permutation", [](const HostPackedLayer& l) -> nb::object {
        if (l.k_permutation.empty()) return nb::none();
        return nb::cast(to_numpy(l.k_permutation, {size_t(l.k)}));
      }, "[k] int32 (act-order: packed column j multiplies A's column k_permutation[j]), or None")
      .def_prop_ro("bias_bits", [](const HostPackedLayer& l) -> nb::object {
        if (l.bias.empty()) return nb::none();
        return nb::cast(to_numpy(l.bias, {size_t(l.n)}));
      }, "[n] uint16 bits of dtype (the checkpoint's prefix + 'bias', converted), or None");

  m.def("load_packed_layer", [](const std::string& path, const std::string& prefix) {
    w4a16::SafetensorsFile file;
    throw_if_failed(w4a16::SafetensorsFile::open(path, &file));
    w4a16::PackedLayer layer;
    throw_if_failed(w4a16::load_packed_layer(file, prefix, &layer));
    HostPackedLayer out;
    out.n = layer.n;
    out.k = layer.k;
    out.group_size = layer.group_size;
    out.element = layer.format.element;
    out.packed = copy_of<uint8_t>(*layer.packed);
    out.scales = copy_of<uint16_t>(*layer.scales);
    if (layer.zeros != nullptr) out.zeros = copy_of<uint16_t>(*layer.zeros);
    // load_packed_layer chose the op from the values: fractional zeros get the float-zeros op.
    out.float_zeros = layer.format.quant == w4a16::QuantOp::kScaleAndFloatZeros;
    if (layer.k_permutation != nullptr) out.k_permutation = copy_of<int32_t>(*layer.k_permutation);
    out.bias = bias_of(file, prefix, layer.n, layer.format.element);
    return out;
  }, nb::arg("path"), nb::arg("prefix"),
        "One layer of a w4a16 container (import_checkpoint's output), e.g. prefix 'model.layers.0.mlp.up_proj.'.");

  // -------------------------------------------------------------------------------------------
  nb::class_<Runner>(m, "Runner",
                     "The GEMM runner of the current CUDA device, on raw device pointers (ints, 0 = none) and a "
                     "stream handle (int). C = alpha * A * dequant(W)^T (+ bias); see include/w4a16/runner.h.")
      .def(nb::init<>(), "Binds the current CUDA device; RuntimeError when it cannot (no GPU, no kernel for it).")
      .def_prop_ro("device", [](const Runner& r) { return r.runner.device(); })
      .def_prop_ro("sm_version", [](const Runner& r) { return r.runner.sm_version(); }, "e.g. 90")
      .def_prop_ro("sm_count", [](const Runner& r) { return r.runner.sm_count(); })
      .def("configs", [](const Runner& r) { return names_of(r.runner.configs()); },
           "Names of every config this device has a kernel for.")
      .def("heuristic_config", [](Runner& r, int m, int n, int k) {
        return under_lock<SharedLock>(r, [&] { return r.runner.heuristic_config(m, n, k).name(); });
      }, nb::arg("m"), nb::arg("n"), nb::arg("k"), "The tile-size table's choice (no profiled results).")
      .def("default_config", [](Runner& r, int m, int n, int k, int group_size, const std::string& dtype, bool zeros,
                                bool float_zeros) {
        const w4a16::Format format{element_of(dtype), quant_of(zeros, float_zeros)};
        return under_lock<SharedLock>(r, [&] { return r.runner.default_config(m, n, k, group_size, format).name(); });
      }, nb::arg("m"), nb::arg("n"), nb::arg("k"), nb::arg("group_size") = 128, nb::arg("dtype") = "fp16",
           nb::arg("zeros") = false, nb::arg("float_zeros") = false,
           "The config gemm() uses without one: the profiled best, else the heuristic.")
      .def("workspace_bytes", [](Runner& r, uintptr_t a, uintptr_t packed_weights, uintptr_t scales, uintptr_t zeros,
                                 uintptr_t bias, uintptr_t c, uintptr_t k_permutation, int m, int n, int k,
                                 int group_size, float alpha, const std::string& dtype,
                                 const std::optional<std::string>& config, bool float_zeros) {
        const w4a16::GemmArguments args = arguments_of(a, packed_weights, scales, zeros, bias, c, k_permutation, m, n,
                                                       k, group_size, alpha, dtype, float_zeros);
        const std::optional<w4a16::KernelConfig> forced =
            config ? std::optional<w4a16::KernelConfig>(config_named(*config)) : std::nullopt;
        return under_lock<SharedLock>(
            r, [&] { return forced ? r.runner.workspace_bytes(args, *forced) : r.runner.workspace_bytes(args); });
      }, W4A16_GEMM_ARGUMENT_NAMES, nb::arg("config") = nb::none(), nb::arg("float_zeros") = false,
           "Workspace bytes gemm() with these arguments needs (with `config`, or the default config).")
      .def("gemm", [](Runner& r, uintptr_t a, uintptr_t packed_weights, uintptr_t scales, uintptr_t zeros,
                      uintptr_t bias, uintptr_t c, uintptr_t k_permutation, int m, int n, int k, int group_size,
                      float alpha, const std::string& dtype, uintptr_t workspace, size_t workspace_bytes,
                      uintptr_t stream, const std::optional<std::string>& config, bool float_zeros) {
        const w4a16::GemmArguments args = arguments_of(a, packed_weights, scales, zeros, bias, c, k_permutation, m, n,
                                                       k, group_size, alpha, dtype, float_zeros);
        const std::optional<w4a16::KernelConfig> forced =
            config ? std::optional<w4a16::KernelConfig>(config_named(*config)) : std::nullopt;
        // Only enqueues work (no sync, no allocation): other Python threads may run meanwhile.
        throw_if_failed(under_lock<SharedLock>(r, [&] {
          return forced ? r.runner.gemm(args, *forced, pointer(workspace), workspace_bytes, pointer<CUstream_st>(stream))
                        : r.runner.gemm(args, pointer(workspace), workspace_bytes, pointer<CUstream_st>(stream));
        }));
      }, W4A16_GEMM_ARGUMENT_NAMES, nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("stream"),
           nb::arg("config") = nb::none(), nb::arg("float_zeros") = false,
           "Enqueue C = alpha * A * dequant(W)^T (+ bias) on `stream`; graph-capturable. ValueError on bad arguments. "
           "float_zeros: the zero points may be fractional (the float-zeros format; without it they are rounded).")
      .def("profile", [](Runner& r, uintptr_t a, uintptr_t packed_weights, uintptr_t scales, uintptr_t zeros,
                         uintptr_t bias, uintptr_t c, uintptr_t k_permutation, int m, int n, int k, int group_size,
                         float alpha, const std::string& dtype, uintptr_t workspace, size_t workspace_bytes,
                         uintptr_t stream, int iterations, int repeats, bool float_zeros) {
        const w4a16::GemmArguments args = arguments_of(a, packed_weights, scales, zeros, bias, c, k_permutation, m, n,
                                                       k, group_size, alpha, dtype, float_zeros);
        w4a16::ProfileResult result;
        // Synchronizes the stream many times: other Python threads run meanwhile.
        throw_if_failed(under_lock<ExclusiveLock>(r, [&] {
          return r.runner.profile(args, pointer(workspace), workspace_bytes, pointer<CUstream_st>(stream), &result,
                                  iterations, repeats);
        }));
        nb::dict timings, skipped, out;
        for (const auto& [config, microseconds] : result.timings) timings[config.name().c_str()] = microseconds;
        for (const auto& [config, reason] : result.skipped) skipped[config.name().c_str()] = reason;
        out["best"] = result.best.name();
        out["best_us"] = result.best_microseconds;
        out["timings"] = timings;
        out["skipped"] = skipped;
        return out;
      }, W4A16_GEMM_ARGUMENT_NAMES, nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("stream"),
           nb::arg("iterations") = 20, nb::arg("repeats") = 5, nb::arg("float_zeros") = false,
           "Time every config whose workspace fits and make the fastest the default for this problem's m bucket, "
           "n, k, group and format. Synchronizes `stream`; writes C. Returns {'best', 'best_us', 'timings': "
           "{name: us}, 'skipped': {name: why}}.")
      // The grouped (mixture-of-experts) GEMM: GroupedGemmArguments (runner.h), one launch for
      // every expert. Its configs are a list of their own (the grouped kernels are a subset of
      // the tiles, without split-K) and it takes no workspace.
      .def("grouped_configs", [](const Runner& r) { return names_of(r.runner.grouped_configs()); },
           "Names of the configs with a grouped kernel on this device (empty: this build has none for it).")
      .def("default_grouped_config", [](Runner& r, int rows, int experts, int n, int k) -> std::optional<std::string> {
        return under_lock<SharedLock>(r, [&]() -> std::optional<std::string> {
          // With no grouped kernel the C++ default is a blank KernelConfig, whose name is no config's.
          if (r.runner.grouped_configs().empty()) return std::nullopt;
          return r.runner.default_grouped_config(rows, experts, n, k).name();
        });
      }, nb::arg("rows"), nb::arg("experts"), nb::arg("n"), nb::arg("k"),
           "The config grouped_gemm() uses without one (picked by the rows per routed expert), or None when this "
           "device has no grouped kernel.")
      .def("grouped_gemm", [](Runner& r, uintptr_t a, uintptr_t packed_weights, uintptr_t scales, uintptr_t zeros,
                              uintptr_t bias, uintptr_t c, uintptr_t expert_offsets, uintptr_t row_weights,
                              int experts, int rows, int n, int k, int group_size, float alpha,
                              const std::string& dtype, uintptr_t stream, const std::optional<std::string>& config,
                              bool float_zeros) {
        w4a16::GroupedGemmArguments args;
        args.a = pointer<const void>(a);
        args.packed_weights = pointer<const void>(packed_weights);
        args.scales = pointer<const void>(scales);
        args.zeros = pointer<const void>(zeros);
        args.bias = pointer<const void>(bias);
        args.c = pointer(c);
        args.expert_offsets = pointer<const int32_t>(expert_offsets);
        args.row_weights = pointer<const float>(row_weights);
        args.experts = experts;
        args.rows = rows;
        args.n = n;
        args.k = k;
        args.group_size = group_size;
        args.alpha = alpha;
        args.element = element_of(dtype);
        args.float_zeros = float_zeros;
        const std::optional<w4a16::KernelConfig> forced =
            config ? std::optional<w4a16::KernelConfig>(config_named(*config)) : std::nullopt;
        // Without a grouped kernel the runner's default config is a blank one, which the runner
        // refuses (kUnsupportedArch); said here first so that the message names the device.
        if (!forced && r.runner.grouped_configs().empty()) {
          throw nb::value_error(("grouped_gemm: no grouped kernel for sm_" + std::to_string(r.runner.sm_version()) +
                                 " in this build (grouped_configs() is empty)")
                                    .c_str());
        }
        // Only enqueues work (no sync, no allocation, no host read of the routing).
        throw_if_failed(under_lock<SharedLock>(r, [&] {
          return forced ? r.runner.grouped_gemm(args, *forced, pointer<CUstream_st>(stream))
                        : r.runner.grouped_gemm(args, pointer<CUstream_st>(stream));
        }));
      }, nb::arg("a"), nb::arg("packed_weights"), nb::arg("scales"), nb::arg("zeros"), nb::arg("bias"), nb::arg("c"),
           nb::arg("expert_offsets"), nb::arg("row_weights"), nb::arg("experts"), nb::arg("rows"), nb::arg("n"),
           nb::arg("k"), nb::arg("group_size"), nb::arg("alpha"), nb::arg("dtype"), nb::arg("stream"),
           nb::arg("config") = nb::none(), nb::arg("float_zeros") = false,
           "Enqueue the grouped GEMM on `stream`: rows of A sorted by expert, expert e owning rows "
           "[expert_offsets[e], expert_offsets[e + 1]) (int32 [experts + 1] in device memory), C[r] = row_weights[r] "
           "* (alpha * A[r] * dequant(W_e)^T + bias_e) (row_weights fp32 [rows] or 0). packed_weights [experts][n * k "
           "/ 2] bytes, scales and zeros [experts][k / group][n], bias [experts][n]. Graph-capturable: replays read "
           "the offsets and row weights anew. ValueError on bad arguments.")
      .def("save_tuning", [](Runner& r, const std::string& path) {
        throw_if_failed(under_lock<SharedLock>(r, [&] { return r.runner.save_tuning(path); }));
      }, nb::arg("path"), "Write the profiled defaults as JSON (keyed by device name, SM count, library version).")
      .def("load_tuning", [](Runner& r, const std::string& path) {
        throw_if_failed(under_lock<ExclusiveLock>(r, [&] { return r.runner.load_tuning(path); }));
      }, nb::arg("path"), "Read save_tuning's file; rejects another device's or version's.")
      .def_prop_ro("programmatic_launch", [](Runner& r) {
        return under_lock<SharedLock>(r, [&] { return std::string(launch_mode_name(r.runner.programmatic_launch())); });
      }, "The launch mode in effect: 'auto', 'always' or 'off' (always 'off' before sm_90)")
      .def("set_programmatic_launch", [](Runner& r, const std::string& mode) {
        using Mode = w4a16::GemmRunner::ProgrammaticLaunch;
        Mode value;
        if (mode == "auto") value = Mode::kWhereItHelps;
        else if (mode == "always") value = Mode::kAlways;
        else if (mode == "off") value = Mode::kOff;
        else throw nb::value_error(("mode must be 'auto', 'always' or 'off', got '" + mode + "'").c_str());
        under_lock<ExclusiveLock>(r, [&] { r.runner.set_programmatic_launch(value); });
      }, nb::arg("mode"), "Programmatic dependent launch (sm_90+): 'auto' (the default), 'always' or 'off'.");
}

#undef W4A16_GEMM_ARGUMENT_NAMES
