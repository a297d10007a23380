"""CPU tests of the Python extension: the host tools against NumPy statements of their definitions."""

import numpy as np
import pytest

import w4a16
from helpers import random_weights, write_container


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("group", [32, 128, 256])
def test_quantize_follows_the_definition(rng, dtype, zeros, group):
    n, k = 48, 256
    w = random_weights(rng, n, k)
    q = w4a16.quantize(w, group_size=group, dtype=dtype, zeros=zeros)
    assert (q.n, q.k, q.group_size, q.dtype, q.has_zeros) == (n, k, group, dtype, zeros)
    codes = q.codes
    assert codes.shape == (n, k) and codes.dtype == np.uint8 and codes.max() <= 15
    scales = w4a16.from_bits(q.scale_bits, dtype).astype(np.float64)  # [k / group, n]
    assert scales.shape == (k // group, n)
    z = 8.0 if not zeros else w4a16.from_bits(q.zero_bits, dtype).astype(np.float64)
    assert zeros == (q.zero_bits is not None)
    # dequantized() is s * (q - z), group by group.
    s_full = np.repeat(scales, group, axis=0).T
    z_full = z if not zeros else np.repeat(z, group, axis=0).T
    expected = s_full * (codes.astype(np.float64) - z_full)
    np.testing.assert_array_equal(q.dequantized(), expected)
    # Round to nearest with the stored scale: within half a step unless clamped.
    error = np.abs(expected - w)
    unclamped = (codes != 0) & (codes != 15)
    assert np.all(error[unclamped] <= s_full[unclamped] / 2 * (1 + 1e-6) + 1e-12)


def test_pack_unpack_round_trip(rng):
    for n, k in [(16, 64), (48, 192), (272, 1088)]:
        codes = rng.integers(0, 16, size=(n, k), dtype=np.uint8)
        packed = w4a16.pack(codes)
        assert packed.shape == (n * k // 2,) and packed.dtype == np.uint8
        np.testing.assert_array_equal(w4a16.unpack(packed, n, k), codes)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reference_gemm_matches_numpy(rng, dtype):
    m, n, k = 5, 32, 128
    q = w4a16.quantize(random_weights(rng, n, k), group_size=64, dtype=dtype, zeros=True)
    a_bits = w4a16.to_bits(rng.uniform(-1, 1, size=(m, k)), dtype)
    bias_bits = w4a16.to_bits(rng.uniform(-1, 1, size=n), dtype)
    a = w4a16.from_bits(a_bits, dtype).astype(np.float64)
    bias = w4a16.from_bits(bias_bits, dtype).astype(np.float64)
    c = w4a16.reference_gemm(a_bits, q, bias_bits, alpha=0.5)
    np.testing.assert_allclose(c, 0.5 * a @ q.dequantized().T + bias, rtol=1e-12, atol=1e-12)


def test_bits_round_trip():
    values = np.array([0.0, 1.0, -2.5, 65504.0, 3.0e4], dtype=np.float32)
    np.testing.assert_array_equal(w4a16.from_bits(w4a16.to_bits(values, "fp16"), "fp16"), values)
    assert w4a16.to_bits(np.array([1.0]), "bf16")[0] == 0x3F80
    assert w4a16.to_bits(np.array([1.0]), "fp16")[0] == 0x3C00


def test_bad_arguments_raise_value_errors(rng):
    w = random_weights(rng, 16, 128)
    with pytest.raises(ValueError, match="group_size 48 not supported"):
        w4a16.quantize(w, group_size=48)
    with pytest.raises(ValueError, match="dtype must be"):
        w4a16.quantize(w, dtype="fp8")
    with pytest.raises(ValueError, match="multiple of 16"):
        w4a16.pack(np.zeros((8, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="outside \\[0, 15\\]"):
        w4a16.pack(np.full((16, 64), 16, dtype=np.uint8))
    with pytest.raises(ValueError, match="n \\* k / 2"):
        w4a16.unpack(np.zeros(10, dtype=np.uint8), 16, 64)
    q = w4a16.quantize(w, group_size=64)
    with pytest.raises(ValueError, match="columns"):
        w4a16.reference_gemm(np.zeros((2, 64), dtype=np.uint16), q)
    with pytest.raises(ValueError, match="cannot open"):
        w4a16.import_checkpoint("/nonexistent.safetensors", "/tmp/out.safetensors", "gptq")


def test_runner_constructs_or_names_the_missing_device():
    # CI has no GPU: the runner must say so (RuntimeError) instead of failing later or crashing.
    try:
        runner = w4a16.Runner()
    except RuntimeError as error:
        assert "no device" in str(error) or "unsupported architecture" in str(error)
        return
    assert runner.sm_version > 0 and runner.sm_count > 0 and runner.configs()
    assert runner.default_config(1, 4096, 4096) in runner.configs()


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_load_packed_layer_returns_the_containers_arrays(rng, tmp_path, dtype):
    n, k, group = 32, 256, 64
    q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype=dtype, zeros=True)
    packed = w4a16.pack(q.codes).reshape(n, k // 2)
    permutation = rng.permutation(k).astype(np.int32)
    bias = rng.uniform(-1, 1, size=n).astype(np.float32)  # fp32, as a checkpoint may store it
    prefix = "model.layers.0.mlp.up_proj."
    path = tmp_path / "container.safetensors"
    write_container(path, {
        prefix: {"packed": packed, "scale_bits": q.scale_bits, "zero_bits": q.zero_bits,
                 "k_permutation": permutation, "bias": bias},
        "model.layers.0.mlp.down_proj.": {"packed": packed, "scale_bits": q.scale_bits},
    }, dtype)

    layer = w4a16.load_packed_layer(str(path), prefix)
    assert (layer.n, layer.k, layer.group_size, layer.dtype, layer.has_zeros) == (n, k, group, dtype, True)
    np.testing.assert_array_equal(layer.packed, packed)
    np.testing.assert_array_equal(layer.scale_bits, q.scale_bits)
    np.testing.assert_array_equal(layer.zero_bits, q.zero_bits)
    np.testing.assert_array_equal(layer.k_permutation, permutation)
    np.testing.assert_array_equal(layer.bias_bits, w4a16.to_bits(bias, dtype))  # converted to the layer's type

    plain = w4a16.load_packed_layer(str(path), "model.layers.0.mlp.down_proj.")
    assert plain.zero_bits is None and plain.k_permutation is None and plain.bias_bits is None
    with pytest.raises(ValueError, match="no packed layer 'model.layers.0.mlp.gate_proj.'"):
        w4a16.load_packed_layer(str(path), "model.layers.0.mlp.gate_proj.")
    with pytest.raises(ValueError, match="cannot open"):
        w4a16.load_packed_layer(str(tmp_path / "missing.safetensors"), prefix)


# ---------------------------------------------------------------------------------------------
# Zero points: whole numbers (the default zeros format) or fractional (float_zeros).


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_formats_name_the_zero_points(rng, dtype):
    w = random_weights(rng, 16, 128)
    plain = w4a16.quantize(w, group_size=64, dtype=dtype)
    whole = w4a16.quantize(w, group_size=64, dtype=dtype, zeros=True)
    marked = w4a16.quantize(w, group_size=64, dtype=dtype, zeros=True, float_zeros=True)
    assert (plain.format, whole.format, marked.format) == (dtype, f"{dtype}+zeros", f"{dtype}+float-zeros")
    assert (plain.float_zeros, whole.float_zeros, marked.float_zeros) == (False, False, True)
    # float_zeros only marks the format: quantize's zero points are the same whole numbers.
    np.testing.assert_array_equal(marked.zero_bits, whole.zero_bits)
    np.testing.assert_array_equal(marked.dequantized(), whole.dequantized())
    with pytest.raises(ValueError, match="float_zeros is set without zero points"):
        w4a16.quantize(w, group_size=64, dtype=dtype, float_zeros=True)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_quantized_weights_from_arrays_take_fractional_zero_points(rng, dtype):
    q = w4a16.quantize(random_weights(rng, 16, 128), group_size=64, dtype=dtype, zeros=True)
    z = w4a16.from_bits(q.zero_bits, dtype).astype(np.float64) + 0.25  # exact in either type
    fractional = w4a16.QuantizedWeights(q.codes, q.scale_bits, w4a16.to_bits(z, dtype), 64, dtype, float_zeros=True)
    assert fractional.float_zeros and fractional.format == f"{dtype}+float-zeros"
    # dequantized() (and so reference_gemm) uses the exact zero point.
    s = np.repeat(w4a16.from_bits(q.scale_bits, dtype).astype(np.float64), 64, axis=0).T
    np.testing.assert_array_equal(fractional.dequantized(), s * (q.codes - np.repeat(z, 64, axis=0).T))
    assert not w4a16.QuantizedWeights(q.codes, q.scale_bits, q.zero_bits, 64, dtype).float_zeros
    with pytest.raises(ValueError, match="float_zeros is set without zero points"):
        w4a16.QuantizedWeights(q.codes, q.scale_bits, None, 64, dtype, float_zeros=True)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_check_integer_zeros(dtype):
    whole = w4a16.to_bits(np.arange(16, dtype=np.float32).reshape(2, 8), dtype)
    w4a16.check_integer_zeros(whole, dtype)  # 0..15: fine
    for bad, index in [(7.5, 3), (-1.0, 5), (16.0, 0), (float("nan"), 9)]:
        values = np.arange(16, dtype=np.float32) % 16
        values[index] = bad
        with pytest.raises(ValueError, match=rf"zero point {index} is .*not a whole number in \[0, 15\]"):
            w4a16.check_integer_zeros(w4a16.to_bits(values, dtype), dtype)
    with pytest.raises(TypeError):  # uint16 bits only: float16 values would be converted by value
        w4a16.check_integer_zeros(np.zeros(4, dtype=np.float16), dtype)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_load_packed_layer_marks_fractional_zero_points(rng, tmp_path, dtype):
    # Whole zero points (what every importer writes) load as the zeros format; fractional ones,
    # written by hand, as float-zeros rather than being refused or rounded.
    n, k, group = 32, 256, 64
    q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype=dtype, zeros=True)
    packed = w4a16.pack(q.codes).reshape(n, k // 2)
    z = w4a16.from_bits(q.zero_bits, dtype)
    z[1, 3] += 0.5
    fractional_bits = w4a16.to_bits(z, dtype)
    path = tmp_path / "container.safetensors"
    write_container(path, {"whole.": {"packed": packed, "scale_bits": q.scale_bits, "zero_bits": q.zero_bits},
                           "fractional.": {"packed": packed, "scale_bits": q.scale_bits, "zero_bits": fractional_bits},
                           "plain.": {"packed": packed, "scale_bits": q.scale_bits}}, dtype)
    whole = w4a16.load_packed_layer(str(path), "whole.")
    assert (whole.float_zeros, whole.format) == (False, f"{dtype}+zeros")
    fractional = w4a16.load_packed_layer(str(path), "fractional.")
    assert (fractional.float_zeros, fractional.format) == (True, f"{dtype}+float-zeros")
    np.testing.assert_array_equal(fractional.zero_bits, fractional_bits)
    plain = w4a16.load_packed_layer(str(path), "plain.")
    assert (plain.float_zeros, plain.format) == (False, dtype)
