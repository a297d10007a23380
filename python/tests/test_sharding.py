"""CPU tests of w4a16.sharding (NumPy only): tensor-parallel shards against the unsharded layer,
through the float64 reference (w4a16.reference_gemm).

Column shards compute a subset of the output features with the same products summed in the same
order, so their concatenation must equal the unsharded output bit for bit. Row shards split each
dot product into per-rank partial sums, so their sum differs from the unsharded output only by
float64 rounding. fold_permutation only reorders features, so the MLP chain must give the same
bits before and after it. The last test runs the same on the GPU through W4A16Linear.shard and
skips without PyTorch or a device.
"""

import numpy as np
import pytest

import w4a16
from helpers import random_weights, write_container
from w4a16.sharding import (
    HostLayer,
    fold_permutation,
    pack_layer,
    permutation_from_g_idx,
    shard_columns,
    shard_rows,
)

M = 8  # activation rows: enough to catch a row mix-up, cheap for the reference


def gptq_permutation(rng, k, group):
    """An act-order permutation made as GPTQ makes it: columns quantized in a random order (GPTQ's
    order of decreasing Hessian diagonal), the i-th of them in group i // group (g_idx), then
    sorted by group (what the importer stores)."""
    order = rng.permutation(k)
    g_idx = np.empty(k, dtype=np.int64)
    g_idx[order] = np.arange(k) // group
    return permutation_from_g_idx(g_idx, group)


def make_layer(rng, n, k, group, dtype="fp16", zeros=False, permutation=None, bias=False):
    """A random quantized layer; with a permutation, quantized in the packed order w[:, perm] (as
    GPTQ's groups are formed), so every group is a contiguous run of packed columns."""
    w = random_weights(rng, n, k)
    if permutation is not None:
        w = np.ascontiguousarray(w[:, permutation])
    q = w4a16.quantize(w, group_size=group, dtype=dtype, zeros=zeros)
    bias_bits = w4a16.to_bits(rng.uniform(-1, 1, size=n), dtype) if bias else None
    return HostLayer.from_quantized(q, k_permutation=permutation, bias_bits=bias_bits)


def activations(rng, m, k, dtype):
    return w4a16.to_bits(rng.uniform(-1, 1, size=(m, k)), dtype)


def magnitude(layer, a_bits):
    """float64 |x| @ |W|.T (x in the original order): the scale of each output's rounding error."""
    a = np.abs(w4a16.from_bits(a_bits, layer.dtype).astype(np.float64))
    w = np.abs(layer.to_quantized().dequantized())
    if layer.k_permutation is not None:
        a = a[:, layer.k_permutation]
    return a @ w.T


def assert_close_in_float64(got, expected, scale):
    # A few float64 roundings of the partial sums (k terms each, summed in another order).
    bound = 64 * np.finfo(np.float64).eps * scale + 1e-300
    error = np.abs(got - expected)
    assert np.all(error <= bound), f"max |error| {error.max():.3g}, bound there {bound.flat[np.argmax(error)]:.3g}"


def slice_local_permutation(rng, k, world_size, group):
    """A permutation that moves columns only inside each rank's slice (GPTQ-style within it)."""
    width = k // world_size
    return np.concatenate([r * width + gptq_permutation(rng, width, group) for r in range(world_size)]).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Conversions.


@pytest.mark.parametrize("zeros", [False, True])
def test_conversions_round_trip(rng, tmp_path, zeros):
    n, k, group = 64, 256, 64
    permutation = gptq_permutation(rng, k, group)
    layer = make_layer(rng, n, k, group, "bf16", zeros=zeros, permutation=permutation, bias=True)
    assert (layer.n, layer.k, layer.has_zeros) == (n, k, zeros)
    packed = pack_layer(layer)
    np.testing.assert_array_equal(packed.packed.reshape(-1), w4a16.pack(layer.codes))
    assert packed.packed.shape == (n, k // 2) and packed.k_permutation.dtype == np.int32
    back = HostLayer.from_packed_layer(packed)
    for name in ("codes", "scale_bits", "zero_bits", "k_permutation", "bias_bits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(layer, name))
    # to_quantized() keeps w = s * (q - z) (z = 8 without zero points), written out here in float64.
    group_of = np.arange(k) // group
    scales = w4a16.from_bits(layer.scale_bits, "bf16").astype(np.float64)[group_of].T
    zero_points = (w4a16.from_bits(layer.zero_bits, "bf16").astype(np.float64)[group_of].T if zeros
                   else np.full((n, k), 8.0))
    np.testing.assert_array_equal(layer.to_quantized().dequantized(),
                                  scales * (layer.codes.astype(np.float64) - zero_points))

    # A container layer (load_packed_layer) converts the same way.
    path = tmp_path / "container.safetensors"
    write_container(path, {"p.": {"packed": packed.packed, "scale_bits": packed.scale_bits,
                                  "zero_bits": packed.zero_bits, "k_permutation": packed.k_permutation}}, "bf16")
    loaded = HostLayer.from_packed_layer(w4a16.load_packed_layer(str(path), "p."))
    np.testing.assert_array_equal(loaded.codes, layer.codes)
    np.testing.assert_array_equal(loaded.k_permutation, permutation)

    # reference_gemm reads x in its own order: the same as gathering x by hand.
    a_bits = activations(rng, M, k, "bf16")
    expected = w4a16.reference_gemm(np.ascontiguousarray(a_bits[:, permutation]), layer.to_quantized(),
                                    layer.bias_bits)
    np.testing.assert_array_equal(layer.reference_gemm(a_bits), expected)


# ---------------------------------------------------------------------------------------------
# Column-parallel.


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("group", [32, 128, 512])  # 512 = k: per-channel splits column-wise fine
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("act_order", [False, True])
def test_column_shards_concatenate_to_the_unsharded_output_exactly(rng, world_size, group, zeros, act_order):
    n, k, dtype = 256, 512, "fp16"
    permutation = gptq_permutation(rng, k, group) if act_order else None
    layer = make_layer(rng, n, k, group, dtype, zeros=zeros, permutation=permutation, bias=True)
    a_bits = activations(rng, M, k, dtype)
    shards = [shard_columns(layer, world_size, r) for r in range(world_size)]
    for shard in shards:
        assert (shard.n, shard.k, shard.group_size) == (n // world_size, k, group)
        if act_order:
            np.testing.assert_array_equal(shard.k_permutation, permutation)  # every rank has all of x
        pack_layer(shard)  # a valid packed layer
    got = np.concatenate([shard.reference_gemm(a_bits) for shard in shards], axis=1)
    np.testing.assert_array_equal(got, layer.reference_gemm(a_bits))


# ---------------------------------------------------------------------------------------------
# Row-parallel.


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_row_shards_sum_to_the_unsharded_output(rng, world_size, group, zeros, dtype):
    n, k = 256, 512
    layer = make_layer(rng, n, k, group, dtype, zeros=zeros, bias=True)
    a_bits = activations(rng, M, k, dtype)
    width = k // world_size
    total = np.zeros((M, n))
    for r in range(world_size):
        shard = shard_rows(layer, world_size, r)
        assert (shard.n, shard.k, shard.scale_bits.shape) == (n, width, (width // group, n))
        assert shard.k_permutation is None
        assert (shard.bias_bits is not None) == (r == 0)  # the sum adds the bias once
        pack_layer(shard)
        # Each rank holds only its slice of x, in x's order.
        total += shard.reference_gemm(np.ascontiguousarray(a_bits[:, r * width:(r + 1) * width]))
    assert_close_in_float64(total, layer.reference_gemm(a_bits), magnitude(layer, a_bits) + 1.0)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("zeros", [False, True])
def test_row_shards_keep_a_permutation_that_stays_inside_each_slice(rng, world_size, zeros):
    n, k, group, dtype = 256, 512, 64, "fp16"
    permutation = slice_local_permutation(rng, k, world_size, group)
    layer = make_layer(rng, n, k, group, dtype, zeros=zeros, permutation=permutation)
    a_bits = activations(rng, M, k, dtype)
    width = k // world_size
    total = np.zeros((M, n))
    for r in range(world_size):
        shard = shard_rows(layer, world_size, r)
        # Relative to the slice: packed column j of the shard reads the slice's column perm[j].
        np.testing.assert_array_equal(shard.k_permutation, permutation[r * width:(r + 1) * width] - r * width)
        assert shard.k_permutation.dtype == np.int32
        total += shard.reference_gemm(np.ascontiguousarray(a_bits[:, r * width:(r + 1) * width]))
    assert_close_in_float64(total, layer.reference_gemm(a_bits), magnitude(layer, a_bits))


def test_an_identity_permutation_inside_the_slice_is_dropped(rng):
    # Slices swapped back into place by the permutation of another rank's slice only: rank 1's
    # local permutation is the identity, rank 0's is not.
    k, group = 512, 128
    permutation = np.arange(k, dtype=np.int32)
    permutation[:256] = gptq_permutation(rng, 256, group)
    layer = make_layer(rng, 64, k, group, permutation=permutation)
    assert shard_rows(layer, 2, 0).k_permutation is not None
    assert shard_rows(layer, 2, 1).k_permutation is None


def test_row_shards_refuse_a_permutation_that_crosses_slices(rng):
    n, k, group = 256, 512, 128
    permutation = gptq_permutation(rng, k, group)
    layer = make_layer(rng, n, k, group, permutation=permutation)
    with pytest.raises(ValueError, match=r"rank 0 of 2 holds x's columns \[0, 256\), but \d+ of its 256 packed "
                                         r"columns read x outside that slice .*fold_permutation"):
        shard_rows(layer, 2, 0)
    with pytest.raises(ValueError, match=r"rank 3 of 4 holds x's columns \[384, 512\)"):
        shard_rows(layer, 4, 3)
    # Column-parallel keeps it whole: fine.
    shard_columns(layer, 2, 1)


# ---------------------------------------------------------------------------------------------
# fold_permutation: a Llama MLP, down(silu(gate(x)) * up(x)).


def silu(v):
    return v / (1.0 + np.exp(-v))


def mlp_hidden(gate_out, up_out, dtype):
    """silu(gate) * up in float64, rounded to the activation type down_proj reads (as bits)."""
    return w4a16.to_bits(silu(gate_out) * up_out, dtype)


@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("producers_act_order", [False, True])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_fold_permutation_keeps_the_mlp_and_lets_down_split(rng, zeros, producers_act_order, dtype):
    hidden, intermediate, group = 256, 512, 64
    down_permutation = gptq_permutation(rng, intermediate, group)

    def producer():
        permutation = gptq_permutation(rng, hidden, group) if producers_act_order else None
        return make_layer(rng, intermediate, hidden, group, dtype, zeros=zeros, permutation=permutation, bias=True)

    gate, up = producer(), producer()
    down = make_layer(rng, hidden, intermediate, group, dtype, zeros=zeros, permutation=down_permutation, bias=True)
    x_bits = activations(rng, M, hidden, dtype)
    gate_out, up_out = gate.reference_gemm(x_bits), up.reference_gemm(x_bits)
    before = down.reference_gemm(mlp_hidden(gate_out, up_out, dtype))

    folded_down, (folded_gate, folded_up) = fold_permutation(down, [gate, up])
    assert folded_down.k_permutation is None
    np.testing.assert_array_equal(folded_down.codes, down.codes)  # the consumer's packed order is kept
    # Producer feature i is the original's feature down_permutation[i] ...
    np.testing.assert_array_equal(folded_gate.reference_gemm(x_bits), gate_out[:, down_permutation])
    # ... so the chain gives the same bits.
    folded_hidden = mlp_hidden(folded_gate.reference_gemm(x_bits), folded_up.reference_gemm(x_bits), dtype)
    np.testing.assert_array_equal(folded_down.reference_gemm(folded_hidden), before)

    # And now it shards: gate/up column-parallel, down row-parallel, partial outputs summed.
    down_magnitude = magnitude(down, mlp_hidden(gate_out, up_out, dtype))
    for world_size in (2, 4):
        total = np.zeros_like(before)
        for r in range(world_size):
            h = mlp_hidden(shard_columns(folded_gate, world_size, r).reference_gemm(x_bits),
                           shard_columns(folded_up, world_size, r).reference_gemm(x_bits), dtype)
            total += shard_rows(folded_down, world_size, r).reference_gemm(h)
        assert_close_in_float64(total, before, down_magnitude + 1.0)


def test_fold_without_a_permutation_changes_nothing(rng):
    gate = make_layer(rng, 512, 256, 128)
    down = make_layer(rng, 256, 512, 128)
    folded_down, (folded_gate,) = fold_permutation(down, [gate])
    assert folded_down is down and folded_gate is gate


# ---------------------------------------------------------------------------------------------
# Fractional zero points (float_zeros) travel with every conversion and shard.


def test_float_zeros_are_carried_through_conversions_and_shards(rng):
    n, k, group = 256, 512, 64
    q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype="bf16", zeros=True, float_zeros=True)
    z = w4a16.from_bits(q.zero_bits, "bf16") + rng.uniform(-0.5, 0.5, size=q.zero_bits.shape)
    layer = HostLayer(q.codes, q.scale_bits, w4a16.to_bits(z, "bf16"), None, group, "bf16", float_zeros=True)
    assert HostLayer.from_quantized(q).float_zeros  # quantize's mark is kept
    assert layer.to_quantized().float_zeros and layer.to_quantized().format == "bf16+float-zeros"
    packed = pack_layer(layer)
    assert packed.float_zeros and HostLayer.from_packed_layer(packed).float_zeros
    assert all(shard_columns(layer, 2, r).float_zeros and shard_rows(layer, 2, r).float_zeros for r in range(2))
    consumer = make_layer(rng, 64, n, group, "bf16", zeros=True, permutation=gptq_permutation(rng, n, group))
    _, (folded,) = fold_permutation(consumer, [layer])
    assert folded.float_zeros
    # The reference computes with the fractions: row shards still sum to the whole layer.
    a_bits = activations(rng, M, k, "bf16")
    total = sum(shard_rows(layer, 2, r).reference_gemm(np.ascontiguousarray(a_bits[:, r * 256:(r + 1) * 256]))
                for r in range(2))
    assert_close_in_float64(total, layer.reference_gemm(a_bits), magnitude(layer, a_bits))
    # Integer-zero layers stay as they were.
    assert not make_layer(rng, n, k, group, zeros=True).float_zeros
    assert not pack_layer(make_layer(rng, n, k, group, zeros=True)).float_zeros


# ---------------------------------------------------------------------------------------------
# Errors: ValueErrors that name the numbers.


def test_errors_name_the_numbers(rng):
    layer = make_layer(rng, 256, 512, 128)
    cases = [
        (lambda: shard_columns(layer, 3, 0), r"n = 256 over world_size 3 gives 85.3333 output features per rank; "
                                             r"that must be a whole multiple of 16"),
        (lambda: shard_columns(layer, 32, 0), r"n = 256 over world_size 32 gives 8 output features per rank"),
        (lambda: shard_rows(layer, 8, 0), r"k = 512 over world_size 8 gives 64 input features per rank; that must "
                                          r"be a whole multiple of group_size 128 .* and of 64"),
        (lambda: shard_rows(layer, 3, 0), r"k = 512 over world_size 3 gives 170.667 input features"),
        (lambda: shard_rows(make_layer(rng, 64, 512, 32), 16, 0),
         r"k = 512 over world_size 16 gives 32 input features per rank; that must be a whole multiple of "
         r"group_size 32 .* and of 64"),
        (lambda: shard_rows(make_layer(rng, 64, 512, 512), 2, 0),
         r"per-channel groups \(group_size = k = 512\) cannot be split over world_size 2"),
        (lambda: shard_columns(layer, 2, 2), r"rank 2; expected 0 <= rank < world_size = 2"),
        (lambda: shard_rows(layer, 2, -1), r"rank -1; expected 0 <= rank < world_size = 2"),
        (lambda: shard_rows(layer, 0, 0), r"world_size 0; expected a positive integer"),
        (lambda: fold_permutation(make_layer(rng, 256, 512, 128, permutation=gptq_permutation(rng, 512, 128)),
                                  [make_layer(rng, 256, 256, 128)]),
         r"producer 0 has n = 256 output features, the consumer's k is 512"),
        (lambda: fold_permutation(layer, []), r"no producers"),
        (lambda: HostLayer(layer.codes, layer.scale_bits[:2], None, None, 128),
         r"scale_bits has shape \[2, 256\]; expected \[4, 256\]"),
        (lambda: HostLayer(layer.codes + 16, layer.scale_bits, None, None, 128), r"codes reach \d+"),
        (lambda: HostLayer(layer.codes, layer.scale_bits, None, np.zeros(512, np.int32), 128),
         r"k_permutation is not a permutation of \[0, 512\)"),
        (lambda: HostLayer(layer.codes, layer.scale_bits, None, None, 96), r"group_size 96 with k = 512"),
        (lambda: HostLayer(layer.codes, layer.scale_bits, None, None, 128, float_zeros=True),
         r"float_zeros is set without zero_bits"),
        (lambda: pack_layer(make_layer(rng, 8, 128, 64)), r"multiple of 16"),
        (lambda: permutation_from_g_idx(np.zeros(256, np.int64), 128), r"every one of the 2 groups must have 128"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------------------------
# The same on the GPU, through W4A16Linear.shard (skips without PyTorch or a CUDA device).


@pytest.mark.parametrize("act_order", [False, True])
def test_w4a16linear_shards_on_the_gpu(rng, act_order):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import w4a16.torch as wt

    n, k, group, world_size = 512, 1024, 128, 2
    layer = make_layer(rng, n, k, group, "fp16", zeros=True,
                       permutation=gptq_permutation(rng, k, group) if act_order else None, bias=True)
    full = wt.W4A16Linear.from_host_layer(layer, device="cuda")
    x = torch.empty(16, k, dtype=torch.float16, device="cuda").uniform_(-1, 1)
    y = full(x).double()

    def relative(got):
        return ((got.double() - y).norm() / y.norm()).item()

    columns = torch.cat([full.shard(world_size, r, mode="column")(x) for r in range(world_size)], dim=1)
    # Not bit-identical: the dispatch (tile, split-K) depends on n, and with it the summation order.
    assert relative(columns) < 2e-3
    if act_order:
        with pytest.raises(ValueError, match="fold_permutation"):
            full.shard(world_size, 0, mode="row")
        return
    width = k // world_size
    rows = sum(full.shard(world_size, r, mode="row")(x[:, r * width:(r + 1) * width].contiguous()).float()
               for r in range(world_size))
    assert relative(rows) < 2e-3
    with pytest.raises(ValueError, match="mode 'diagonal'"):
        full.shard(world_size, 0, mode="diagonal")
