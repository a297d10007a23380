"""CPU tests of W4A16Linear's rules that need PyTorch but no GPU: the float_zeros flag, the check
that zero points are whole numbers when a layer is made without it, and the flag's way through
the state_dict, host layers and shards; and w4a16::moe_gemm's fake implementation and argument
checks, which run before anything touches a GPU. Skipped without PyTorch (test_torch_gpu.py and
test_moe_gpu.py run the rest).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import w4a16  # noqa: E402
import w4a16.torch as wt  # noqa: E402
from helpers import random_weights, write_container  # noqa: E402
from w4a16.sharding import HostLayer  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
N, K, GROUP = 64, 256, 64


def host_layer(rng, dtype, zero_point=None, float_zeros=False):
    """A quantized [N, K] HostLayer with zero points; zero_point: a value put at [1, 3] ([group,
    output feature]) in place of quantize's whole number there."""
    q = w4a16.quantize(random_weights(rng, N, K), group_size=GROUP, dtype=dtype, zeros=True)
    z = w4a16.from_bits(q.zero_bits, dtype)
    if zero_point is not None:
        z[1, 3] = zero_point
    return HostLayer(q.codes, q.scale_bits, w4a16.to_bits(z, dtype), None, GROUP, dtype, float_zeros=float_zeros)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zero_point", [7.5, -1.0, 16.0, float("nan")])
def test_zero_points_that_are_not_whole_numbers_are_refused_when_the_layer_is_made(rng, dtype, zero_point):
    layer = host_layer(rng, dtype, zero_point)
    shown = "nan" if np.isnan(zero_point) else f"{zero_point:g}"
    with pytest.raises(ValueError, match=rf"W4A16Linear: zero point \[1, 3\] is {shown}, not a whole number in "
                                         rf"\[0, 15\]; fractional \(HQQ-style\) zero points need float_zeros=True"):
        wt.W4A16Linear.from_host_layer(layer)
    # With the flag (the host layer's, or from_host_layer's) the same arrays make a layer.
    for made in (wt.W4A16Linear.from_host_layer(layer, float_zeros=True),
                 wt.W4A16Linear.from_host_layer(host_layer(rng, dtype, zero_point, float_zeros=True))):
        assert made.float_zeros and "float_zeros=True" in repr(made)
    # Whole numbers 0..15 need no flag.
    whole = wt.W4A16Linear.from_host_layer(host_layer(rng, dtype, 15.0))
    assert not whole.float_zeros and "zeros=True, float_zeros=False" in repr(whole)


def test_float_zeros_need_zeros():
    with pytest.raises(ValueError, match=r"float_zeros=True needs zeros=True"):
        wt.W4A16Linear(K, N, float_zeros=True)
    assert wt.W4A16Linear(K, N, zeros=True, float_zeros=True).float_zeros


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_float_zeros_round_trip_through_the_state_dict(rng, tmp_path, dtype):
    layer = wt.W4A16Linear.from_host_layer(host_layer(rng, dtype, 7.25, float_zeros=True))
    state = layer.state_dict()
    assert set(state) == {"packed", "scales", "zeros", "float_zeros"}
    assert state["float_zeros"].dtype == torch.bool and bool(state["float_zeros"])
    torch.save(state, tmp_path / "layer.pt")
    loaded = torch.load(tmp_path / "layer.pt")

    fresh = wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, dtype=DTYPES[dtype], float_zeros=True)
    fresh.load_state_dict(loaded)
    assert fresh.float_zeros
    for name in ("packed", "scales", "zeros"):
        assert torch.equal(getattr(fresh, name), getattr(layer, name))
    assert fresh.zeros[1, 3].item() == 7.25
    assert set(fresh.state_dict()) == set(state)
    torch.testing.assert_close(fresh.dequantized_weight(), layer.dequantized_weight(), rtol=0, atol=0)

    # An integer-zeros layer refuses the state, strict or not: it would round the fractions.
    integer = wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, dtype=DTYPES[dtype])
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"float_zeros: the state's zero points may be fractional, this layer "
                                               r"takes whole numbers \(make the layer with float_zeros=True\)"):
            integer.load_state_dict(loaded, strict=strict)
    # ... and the same zero points without the flag: the values themselves are checked, once.
    unflagged = {name: tensor for name, tensor in loaded.items() if name != "float_zeros"}
    with pytest.raises(RuntimeError, match=r"zeros: zero point \[1, 3\] is 7.25, not a whole number in \[0, 15\]; "
                                           r".*float_zeros=True"):
        integer.load_state_dict(unflagged)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_integer_zero_states_are_as_before(rng, dtype):
    layer = wt.W4A16Linear.from_host_layer(host_layer(rng, dtype))
    state = layer.state_dict()
    assert set(state) == {"packed", "scales", "zeros"} and not layer.float_zeros
    fresh = wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, dtype=DTYPES[dtype])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.zeros, layer.zeros) and not fresh.float_zeros
    # A float-zeros layer takes whole numbers too, but strict loading wants the flag, as it wants
    # every buffer of the layer.
    flagged = wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, dtype=DTYPES[dtype], float_zeros=True)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"float_zeros\""):
        flagged.load_state_dict(state)
    flagged.load_state_dict(state, strict=False)
    assert torch.equal(flagged.zeros, layer.zeros) and flagged.float_zeros


def test_the_flag_in_a_model_state(rng):
    # Keys are prefixed like buffers' in a module tree, and each layer keeps its own flag.
    model = torch.nn.Sequential(wt.W4A16Linear.from_host_layer(host_layer(rng, "fp16", 0.5, float_zeros=True)),
                                wt.W4A16Linear.from_host_layer(host_layer(rng, "fp16")))
    state = model.state_dict()
    assert "0.float_zeros" in state and "1.float_zeros" not in state
    fresh = torch.nn.Sequential(wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, float_zeros=True),
                                wt.W4A16Linear(K, N, group_size=GROUP, zeros=True))
    fresh.load_state_dict(state)
    assert [m.float_zeros for m in fresh] == [True, False]
    swapped = torch.nn.Sequential(wt.W4A16Linear(K, N, group_size=GROUP, zeros=True),
                                  wt.W4A16Linear(K, N, group_size=GROUP, zeros=True, float_zeros=True))
    with pytest.raises(RuntimeError, match=r"0\.float_zeros: the state's zero points may be fractional"):
        swapped.load_state_dict(state)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_from_linear_and_from_checkpoint_give_integer_zeros(rng, tmp_path, dtype):
    linear = torch.nn.Linear(K, N, dtype=DTYPES[dtype])
    assert not wt.W4A16Linear.from_linear(linear, group_size=GROUP, zeros=True).float_zeros
    q = w4a16.quantize(random_weights(rng, N, K), group_size=GROUP, dtype=dtype, zeros=True)
    packed = w4a16.pack(q.codes).reshape(N, K // 2)
    z = w4a16.from_bits(q.zero_bits, dtype)
    z[0, 0] += 0.5
    path = tmp_path / "model.w4a16.safetensors"
    write_container(path, {"whole.": {"packed": packed, "scale_bits": q.scale_bits, "zero_bits": q.zero_bits},
                           "hqq.": {"packed": packed, "scale_bits": q.scale_bits,
                                    "zero_bits": w4a16.to_bits(z, dtype)}}, dtype)
    assert not wt.W4A16Linear.from_checkpoint(path, "whole").float_zeros
    # A container with fractional zero points (no importer writes one) loads as load_packed_layer
    # marks it.
    hqq = wt.W4A16Linear.from_checkpoint(path, "hqq")
    assert hqq.float_zeros and hqq.zeros[0, 0].item() == z[0, 0]


def test_host_layers_and_shards_keep_the_flag(rng):
    layer = wt.W4A16Linear.from_host_layer(host_layer(rng, "bf16", 3.5, float_zeros=True))
    host = layer.to_host_layer()
    assert host.float_zeros
    np.testing.assert_array_equal(host.zero_bits, layer.zeros.view(torch.int16).numpy().view(np.uint16))
    for mode in ("column", "row"):
        assert all(layer.shard(2, r, mode=mode).float_zeros for r in range(2))


# ---------------------------------------------------------------------------------------------
# w4a16::moe_gemm without a GPU.


def test_moe_gemm_fake_gives_the_output_without_a_gpu():
    # torch.compile traces the op through its fake implementation on fake CUDA tensors: built
    # here from meta tensors, so neither a GPU nor the extension's runner is needed.
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()
    cuda = torch.device("cuda", 0)
    experts, rows, n, k, group = 4, 10, 64, 256, 64

    def fake(shape, dtype):
        meta = torch.empty(shape, dtype=dtype, device="meta")
        return mode.fake_tensor_converter.from_meta_and_device(mode, meta, cuda)

    a = fake((rows, k), torch.bfloat16)
    packed = fake((experts, n, k // 2), torch.uint8)
    scales = fake((experts, k // group, n), torch.bfloat16)
    offsets = fake((experts + 1,), torch.int32)
    bias = fake((experts, n), torch.bfloat16)
    row_weights = fake((rows,), torch.float32)
    wrong_offsets = fake((experts + 1,), torch.int64)
    with mode:
        out = torch.ops.w4a16.moe_gemm(a, packed, scales, offsets, None, bias, row_weights, group, 1.0)
        assert out.shape == (rows, n) and out.dtype == torch.bfloat16 and out.device == cuda
        with pytest.raises(ValueError, match=r"w4a16::moe_gemm: expert_offsets has dtype torch.int64; expected "
                                             r"torch.int32"):
            torch.ops.w4a16.moe_gemm(a, packed, scales, wrong_offsets, None, None, None, group, 1.0)


def test_moe_gemm_checks_its_arguments_before_any_gpu_work():
    # CPU tensors are refused by the op's own checks, before the runner (and CUDA) is touched.
    a = torch.zeros(4, K, dtype=torch.float16)
    packed = torch.zeros(2, N, K // 2, dtype=torch.uint8)
    scales = torch.ones(2, K // GROUP, N, dtype=torch.float16)
    offsets = torch.tensor([0, 2, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"w4a16::moe_gemm: a is on cpu; expected a CUDA tensor"):
        torch.ops.w4a16.moe_gemm(a, packed, scales, offsets, None, None, None, GROUP, 1.0)
    with pytest.raises(ValueError, match=r"w4a16::moe_gemm: a has dtype torch.float32"):
        wt.moe_gemm(a.float(), packed, scales, offsets, group_size=GROUP)
