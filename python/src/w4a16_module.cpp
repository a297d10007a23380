// The Python extension (nanobind): w4a16's host tools on NumPy arrays. Plain bindings over the C++
// API (include/w4a16/); every failing Status becomes a ValueError carrying its message. 16-bit
// element arrays (scales, zero points, activations) cross as uint16 bit patterns, since NumPy has
// no bfloat16; python/w4a16/__init__.py adds the float16 conveniences.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "w4a16/checkpoint.h"
#include "w4a16/quantize.h"
#include "w4a16/reference.h"

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

}  // namespace

NB_MODULE(_w4a16, m) {
  m.doc() = "w4a16 host tools: quantize, pack, unpack, CPU reference";

  nb::class_<w4a16::QuantizedWeights>(m, "QuantizedWeights",
                                      "Weights of one linear layer: w = s * (q - z), z = 8 without zero points")
      .def(nb::init<>())
      .def_ro("n", &w4a16::QuantizedWeights::n)
      .def_ro("k", &w4a16::QuantizedWeights::k)
      .def_ro("group_size", &w4a16::QuantizedWeights::group_size)
      .def_prop_ro("dtype", [](const w4a16::QuantizedWeights& q) { return std::string(w4a16::to_string(q.element)); })
      .def_prop_ro("has_zeros", [](const w4a16::QuantizedWeights& q) { return !q.zeros.empty(); })
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
                       const std::string& dtype, bool zeros) {
    w4a16::QuantizeOptions options;
    options.group_size = group_size;
    options.element = element_of(dtype);
    options.quant = zeros ? w4a16::QuantOp::kScaleAndZeros : w4a16::QuantOp::kScaleOnly;
    w4a16::QuantizedWeights q;
    throw_if_failed(w4a16::quantize(weights.data(), int(weights.shape(0)), int(weights.shape(1)), options, &q));
    return q;
  }, nb::arg("weights"), nb::arg("group_size") = 128, nb::arg("dtype") = "fp16", nb::arg("zeros") = false,
        "Quantize [n, k] float32 weights (nn.Linear layout) per group along k.");

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
}
