"""GPU tests of w4a16.torch: the op against a float64 reference, torch.compile, CUDA graphs,
W4A16Linear, the tuning cache and every argument error. Skipped without PyTorch or a CUDA device.
(test_torch_cpu.py has W4A16Linear's rules that need no GPU.)

The reference is exact: the weights' float64 values come from the extension's own definition
(QuantizedWeights.dequantized(): w = s * (q - z), z = 8 without zero points), and each output
element must lie within the C++ tests' bound (tests/test_util.h, error_bound):
|c - ref| <= 4u * (|alpha| * sum_j |a_j| |s_j| (|q_j - z_j| + |z_j|) + |ref|) + 2^-14, u the unit
roundoff of the element type (fp16 2^-11, bf16 2^-8; the |z| term only with zero points).
"""

import json
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import w4a16  # noqa: E402
import w4a16.torch as wt  # noqa: E402  (registers torch.ops.w4a16.gemm)
from helpers import random_weights, write_container  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CUDA = torch.device("cuda", torch.cuda.current_device())


def tensor_of_bits(bits, dtype):
    """uint16 bit patterns -> a CUDA tensor of fp16 or bf16 ('fp16' / 'bf16')."""
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(DTYPES[dtype]).to(CUDA)


def weight_magnitude(q):
    """[n, k] float64 |s| (|q - z| + |z|) (the |z| term only with zero points): the weights' side of
    the error bound's sum."""
    s = np.abs(w4a16.from_bits(q.scale_bits, q.dtype).astype(np.float64)).repeat(q.group_size, axis=0).T
    codes = q.codes.astype(np.float64)
    if q.zero_bits is None:
        return s * np.abs(codes - 8.0)
    z = w4a16.from_bits(q.zero_bits, q.dtype).astype(np.float64).repeat(q.group_size, axis=0).T
    return s * (np.abs(codes - z) + np.abs(z))


def random_activations(rng, shape, dtype):
    return torch.from_numpy(rng.uniform(-1, 1, size=shape).astype(np.float32)).to(CUDA, DTYPES[dtype])


def assert_matches(out, ref, magnitude, dtype):
    """Every element finite and within the bound (see the module docstring)."""
    unit = 2.0**-8 if dtype == "bf16" else 2.0**-11
    got = out.double().reshape(ref.shape)
    assert torch.isfinite(got).all(), f"{int((~torch.isfinite(got)).sum())} non-finite outputs"
    bound = 4 * unit * (magnitude + ref.abs()) + 2.0**-14
    error = (got - ref).abs()
    bad = ~(error <= bound)
    if bad.any():
        rows, cols = bad.nonzero(as_tuple=True)
        examples = [f"C[{r}][{c}] = {got[r, c].item()}, reference {ref[r, c].item()}, "
                    f"|error| {error[r, c].item():.3g} > bound {bound[r, c].item():.3g}"
                    for r, c in zip(rows[:5].tolist(), cols[:5].tolist())]
        pytest.fail(f"{int(bad.sum())} of {bad.numel()} elements out of bounds:\n  " + "\n  ".join(examples))


def fractional_zeros(rng, q):
    """q (quantized with zero points) with each zero point moved by a random fraction in (-0.5,
    0.5), HQQ-style (some then lie just outside [0, 15]), marked float_zeros."""
    z = w4a16.from_bits(q.zero_bits, q.dtype).astype(np.float64)
    zero_bits = w4a16.to_bits(z + rng.uniform(-0.5, 0.5, size=z.shape), q.dtype)
    return w4a16.QuantizedWeights(q.codes, q.scale_bits, zero_bits, q.group_size, q.dtype, float_zeros=True)


class Layer:
    """A random quantized layer on the GPU (the op's arguments) and its exact float64 weights.
    fractional: zero points with fractions (fractional_zeros), run with float_zeros; float_zeros
    alone runs quantize's whole-number zero points through the float-zeros format."""

    def __init__(self, rng, n, k, group, dtype, zeros=False, bias=False, act_order=False, float_zeros=False,
                 fractional=False):
        self.n, self.k, self.group, self.dtype = n, k, group, dtype
        self.q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype=dtype, zeros=zeros or fractional,
                                float_zeros=float_zeros or fractional)
        if fractional:
            self.q = fractional_zeros(rng, self.q)
        self.float_zeros = self.q.float_zeros
        zeros = self.q.has_zeros
        self.packed = torch.from_numpy(w4a16.pack(self.q.codes)).to(CUDA)
        self.scales = tensor_of_bits(self.q.scale_bits, dtype)
        self.zeros = tensor_of_bits(self.q.zero_bits, dtype) if zeros else None
        self.bias = random_activations(rng, (n,), dtype) if bias else None
        self.k_permutation = torch.from_numpy(rng.permutation(k).astype(np.int32)).to(CUDA) if act_order else None
        self.w = torch.from_numpy(self.q.dequantized()).to(CUDA)
        self.w_magnitude = torch.from_numpy(weight_magnitude(self.q)).to(CUDA)

    def args(self):
        """The op's arguments after a, up to alpha."""
        return (self.packed, self.scales, self.zeros, self.bias, self.k_permutation, self.group)

    def run(self, x, alpha=1.0):
        return torch.ops.w4a16.gemm(x, *self.args(), alpha, float_zeros=self.float_zeros)

    def reference(self, x, alpha=1.0):
        """(reference, magnitude) as [rows, n] float64: alpha * x[:, perm] @ W.T (+ bias)."""
        a = x.double().reshape(-1, self.k)
        if self.k_permutation is not None:
            a = a[:, self.k_permutation.long()]  # packed column j multiplies a's column perm[j]
        ref = alpha * (a @ self.w.T)
        if self.bias is not None:
            ref = ref + self.bias.double()
        return ref, abs(alpha) * (a.abs() @ self.w_magnitude.T)

    def check(self, out, x, alpha=1.0):
        assert out.dtype == x.dtype and out.device == x.device
        assert out.shape == (*x.shape[:-1], self.n)
        assert_matches(out, *self.reference(x, alpha), self.dtype)


# ---------------------------------------------------------------------------------------------
# The op.

SHAPES = [(512, 1024, 128), (1040, 320, 64)]  # n, k, group: powers of two, and neither n nor k one
CALLS = [(1, False, 1.0), (3, True, -0.75), (17, False, 1.0), (300, True, 1.5)]  # m, bias, alpha


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zeros", [False, True], ids=["scale", "zeros"])
@pytest.mark.parametrize("n,k,group", SHAPES, ids=[f"n{n}_k{k}_g{g}" for n, k, g in SHAPES])
@pytest.mark.parametrize("m,bias,alpha", CALLS, ids=[f"m{m}{'_bias' if b else ''}" for m, b, _ in CALLS])
def test_op_matches_the_float64_reference(rng, dtype, zeros, n, k, group, m, bias, alpha):
    layer = Layer(rng, n, k, group, dtype, zeros=zeros, bias=bias)
    x = random_activations(rng, (m, k), dtype)
    layer.check(layer.run(x, alpha), x, alpha)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zeros", [False, True], ids=["scale", "zeros"])
@pytest.mark.parametrize("n,k,group", SHAPES, ids=[f"n{n}_k{k}_g{g}" for n, k, g in SHAPES])
@pytest.mark.parametrize("m", [1, 17, 300])
def test_act_order_reads_a_in_the_permutations_order(rng, dtype, zeros, n, k, group, m):
    layer = Layer(rng, n, k, group, dtype, zeros=zeros, bias=True, act_order=True)
    x = random_activations(rng, (m, k), dtype)
    layer.check(layer.run(x, 0.5), x, 0.5)


def rounded_zero_reference(layer, x, alpha=1.0):
    """[rows, n] float64: what the layer would compute with its zero points rounded to whole
    numbers (what the kernels do to them without float_zeros)."""
    q = layer.q
    rounded = w4a16.to_bits(np.rint(w4a16.from_bits(q.zero_bits, q.dtype)), q.dtype)
    w = w4a16.QuantizedWeights(q.codes, q.scale_bits, rounded, q.group_size, q.dtype).dequantized()
    a = x.double().reshape(-1, layer.k)
    if layer.k_permutation is not None:
        a = a[:, layer.k_permutation.long()]
    ref = alpha * (a @ torch.from_numpy(w).to(CUDA).T)
    return ref if layer.bias is None else ref + layer.bias.double()


def check_fractions_count(layer, out, x, alpha=1.0):
    """Beyond the error bound (which is loose enough to pass rounded zero points at bf16): the
    output is much nearer the exact reference than the reference of the rounded zero points."""
    exact, _ = layer.reference(x, alpha)
    error = (out.double().reshape(exact.shape) - exact).norm().item()
    rounding = (rounded_zero_reference(layer, x, alpha) - exact).norm().item()
    assert error < 0.25 * rounding, f"|out - exact| = {error:.4g}, |rounded zeros - exact| = {rounding:.4g}"


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("n,k,group", SHAPES, ids=[f"n{n}_k{k}_g{g}" for n, k, g in SHAPES])
@pytest.mark.parametrize("m,bias,alpha", CALLS, ids=[f"m{m}{'_bias' if b else ''}" for m, b, _ in CALLS])
def test_float_zeros_take_fractional_zero_points(rng, dtype, n, k, group, m, bias, alpha):
    layer = Layer(rng, n, k, group, dtype, bias=bias, fractional=True)
    z = w4a16.from_bits(layer.q.zero_bits, dtype)
    assert layer.float_zeros and np.any(z != np.rint(z))  # the test data has fractions to lose
    x = random_activations(rng, (m, k), dtype)
    out = layer.run(x, alpha)
    layer.check(out, x, alpha)
    check_fractions_count(layer, out, x, alpha)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 17, 300, 4096])  # decode, multistage, and dequant_cublas' range
def test_float_zeros_with_act_order_and_at_every_m(rng, dtype, m):
    layer = Layer(rng, 256, 512, 128, dtype, bias=True, act_order=True, fractional=True)
    x = random_activations(rng, (m, 512), dtype)
    out = layer.run(x, 0.5)
    layer.check(out, x, 0.5)
    check_fractions_count(layer, out, x, 0.5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 17, 300])
def test_whole_zero_points_by_default_and_through_float_zeros(rng, dtype, m):
    # quantize's zero points run by default (folded into the unpack) and, just as well, through
    # the float-zeros format: both within the bound of the same exact reference.
    layer = Layer(rng, 512, 1024, 128, dtype, zeros=True, bias=True)
    assert not layer.float_zeros
    x = random_activations(rng, (m, 1024), dtype)
    by_default = torch.ops.w4a16.gemm(x, *layer.args(), 1.0)
    layer.check(by_default, x)
    layer.check(torch.ops.w4a16.gemm(x, *layer.args(), 1.0, float_zeros=True), x)
    assert torch.equal(torch.ops.w4a16.gemm(x, *layer.args(), 1.0, False), by_default)  # positional, the default


@pytest.mark.parametrize("act_order", [False, True], ids=["plain", "act_order"])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_large_m(rng, dtype, act_order):
    # m = 4096: past the fused kernels' range on sm_90 (dequant_cublas and its workspace).
    layer = Layer(rng, 256, 512, 128, dtype, zeros=True, bias=True, act_order=act_order)
    x = random_activations(rng, (4096, 512), dtype)
    layer.check(layer.run(x), x)


def test_leading_dimensions_are_flattened_and_an_empty_batch_is_empty(rng):
    layer = Layer(rng, 512, 1024, 128, "fp16", zeros=True)
    x = random_activations(rng, (2, 3, 1024), "fp16")
    y = layer.run(x)
    assert y.shape == (2, 3, 512)
    layer.check(y, x)
    empty = layer.run(torch.empty(0, 7, 1024, dtype=torch.float16, device=CUDA))
    assert empty.shape == (0, 7, 512)


def test_threads_share_the_runner(rng):
    # Several Python threads, each on its own stream, call the op at once (the GIL is released
    # inside gemm; GEMM calls share the runner concurrently): every result must still be right.
    layer = Layer(rng, 512, 1024, 128, "bf16", zeros=True, bias=True)
    x = random_activations(rng, (17, 1024), "bf16")
    expected = layer.run(x)
    layer.check(expected, x)
    failures = []

    def work():
        # An exception would end the thread unseen (pytest only warns), so it is a failure too.
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                outputs = [layer.run(x) for _ in range(50)]
            stream.synchronize()
            failures.extend(i for i, y in enumerate(outputs) if not torch.equal(y, expected))
        except Exception as error:  # noqa: BLE001 - every exception is a failure of this test
            failures.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


# ---------------------------------------------------------------------------------------------
# The raw runner binding (what the op calls).


def test_raw_runner_runs_every_config(rng):
    layer = Layer(rng, 512, 1024, 128, "fp16", zeros=True, bias=True)
    m = 17
    x = random_activations(rng, (m, 1024), "fp16")
    r = wt.runner()
    assert r is wt.runner(CUDA) and r.device == CUDA.index
    assert r.sm_version >= 75 and r.sm_count > 0
    assert r.programmatic_launch in ("auto", "always", "off")
    c = torch.empty(m, 512, dtype=torch.float16, device=CUDA)
    args = (x.data_ptr(), layer.packed.data_ptr(), layer.scales.data_ptr(), layer.zeros.data_ptr(),
            layer.bias.data_ptr(), c.data_ptr(), 0, m, 512, 1024, 128, 1.0, "fp16")
    stream = torch.cuda.current_stream().cuda_stream
    assert r.default_config(m, 512, 1024, 128, "fp16", True) in r.configs()
    for config in [None] + r.configs():
        workspace_bytes = r.workspace_bytes(*args, config=config)
        workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=CUDA)
        c.fill_(float("nan"))
        r.gemm(*args, workspace.data_ptr(), workspace_bytes, stream, config=config)
        layer.check(c, x)
    with pytest.raises(ValueError, match="config 'ms_bogus' is not a config name"):
        r.gemm(*args, 0, 0, stream, config="ms_bogus")
    with pytest.raises(ValueError, match="dtype must be 'fp16' or 'bf16', got 'fp32'"):
        r.gemm(*args[:-1], "fp32", 0, 0, stream)
    with pytest.raises(ValueError, match="workspace too small: dequant_cublas needs"):
        r.gemm(*args, 0, 0, stream, config="dequant_cublas")
    with pytest.raises(ValueError, match="mode must be 'auto', 'always' or 'off'"):
        r.set_programmatic_launch("sometimes")
    mode = r.programmatic_launch
    r.set_programmatic_launch("off")
    assert r.programmatic_launch == "off"
    r.set_programmatic_launch("auto" if mode == "off" else mode)


@pytest.mark.parametrize("m", [1, 17])
def test_raw_runner_runs_every_config_with_float_zeros(rng, m):
    # Each kernel family has a float-zeros path of its own: every config on fractional zero points.
    layer = Layer(rng, 512, 1024, 128, "bf16", bias=True, fractional=True)
    x = random_activations(rng, (m, 1024), "bf16")
    r = wt.runner()
    c = torch.empty(m, 512, dtype=torch.bfloat16, device=CUDA)
    args = (x.data_ptr(), layer.packed.data_ptr(), layer.scales.data_ptr(), layer.zeros.data_ptr(),
            layer.bias.data_ptr(), c.data_ptr(), 0, m, 512, 1024, 128, 1.0, "bf16")
    stream = torch.cuda.current_stream().cuda_stream
    assert r.default_config(m, 512, 1024, 128, "bf16", True, float_zeros=True) in r.configs()
    for config in [None] + r.configs():
        workspace_bytes = r.workspace_bytes(*args, config=config, float_zeros=True)
        workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=CUDA)
        c.fill_(float("nan"))
        r.gemm(*args, workspace.data_ptr(), workspace_bytes, stream, config=config, float_zeros=True)
        layer.check(c, x)
        check_fractions_count(layer, c, x)
    with pytest.raises(ValueError, match="float_zeros is set but zeros is null"):
        r.gemm(*args[:3], 0, *args[4:], 0, 0, stream, float_zeros=True)
    with pytest.raises(ValueError, match="float_zeros is set without zero points"):
        r.default_config(m, 512, 1024, 128, "bf16", False, float_zeros=True)


# ---------------------------------------------------------------------------------------------
# torch.compile and CUDA graphs.


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_torch_compile_fullgraph(rng, dtype):
    layer = Layer(rng, 512, 1024, 128, dtype, zeros=True, bias=True, act_order=True)

    def f(x):
        return torch.ops.w4a16.gemm(x, *layer.args(), 0.5)

    compiled = torch.compile(f, fullgraph=True)
    for m in (1, 17, 5):  # the second shape recompiles with a dynamic m: the fake sees a symbolic one
        x = random_activations(rng, (m, 1024), dtype)
        y = compiled(x)
        assert torch.equal(y, f(x))  # the same kernel: the same bits
        layer.check(y, x, 0.5)


def test_torch_compile_passes_float_zeros(rng):
    layer = Layer(rng, 512, 1024, 128, "fp16", bias=True, fractional=True)

    def f(x):
        return torch.ops.w4a16.gemm(x, *layer.args(), 1.0, float_zeros=True)

    compiled = torch.compile(f, fullgraph=True)
    x = random_activations(rng, (9, 1024), "fp16")
    y = compiled(x)
    assert torch.equal(y, f(x))
    check_fractions_count(layer, y, x)
    module = wt.W4A16Linear.from_host_layer(
        w4a16.sharding.HostLayer.from_quantized(layer.q, bias_bits=None), device=CUDA)
    assert module.float_zeros
    assert torch.equal(torch.compile(module, fullgraph=True)(x), module(x))


def test_torch_compile_of_the_module_and_of_code_around_it(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    linear = torch.nn.Linear(1024, 512, bias=True, dtype=torch.bfloat16, device=CUDA)
    module = wt.W4A16Linear.from_linear(linear, zeros=True)
    x = random_activations(rng, (9, 1024), "bf16")
    assert torch.equal(torch.compile(module, fullgraph=True)(x), module(x))

    def mlp(x):  # Inductor code on both sides of the op
        return torch.nn.functional.silu(module(x * 2.0)) + 1.0

    torch.testing.assert_close(torch.compile(mlp, fullgraph=True)(x), mlp(x))


def exception_text(error):
    """The message of an exception and of every exception it was raised from (torch.compile wraps
    what fails while it traces)."""
    texts = []
    while error is not None and len(texts) < 20:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


def test_torch_compile_reports_bad_arguments_while_tracing(rng):
    layer = Layer(rng, 512, 1024, 128, "fp16")
    wrong_scales = layer.scales.to(torch.bfloat16)
    compiled = torch.compile(lambda x: torch.ops.w4a16.gemm(x, layer.packed, wrong_scales, None, None, None, 128, 1.0),
                             fullgraph=True)
    with pytest.raises(Exception) as info:
        compiled(random_activations(rng, (4, 1024), "fp16"))
    expected = "w4a16::gemm: scales has dtype torch.bfloat16; expected a's dtype torch.float16"
    assert expected in exception_text(info.value)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("m", [1, 300])
def test_cuda_graph_capture_and_replay(rng, compiled, m):
    layer = Layer(rng, 1040, 320, 64, "bf16", zeros=True, bias=True, act_order=True)

    def f(x):
        return torch.ops.w4a16.gemm(x, *layer.args(), 1.0)

    run = torch.compile(f, fullgraph=True) if compiled else f
    static_x = random_activations(rng, (m, 320), "bf16")
    # Warm up on a side stream first (creates the runner, compiles), as PyTorch's graph docs ask.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_x)
    for _ in range(3):
        fresh = random_activations(rng, (m, 320), "bf16")
        static_x.copy_(fresh)
        graph.replay()
        torch.cuda.current_stream().synchronize()
        layer.check(static_y, fresh)
        assert torch.equal(static_y, f(fresh))  # the replay computes what an eager call does


# ---------------------------------------------------------------------------------------------
# W4A16Linear.


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zeros", [False, True], ids=["scale", "zeros"])
def test_from_linear_matches_the_reference(rng, dtype, zeros):
    torch.manual_seed(int(rng.integers(1 << 31)))
    linear = torch.nn.Linear(1024, 512, bias=True, dtype=DTYPES[dtype], device=CUDA)
    layer = wt.W4A16Linear.from_linear(linear, group_size=128, zeros=zeros)
    assert (layer.in_features, layer.out_features, layer.group_size, layer.dtype) == (1024, 512, 128, DTYPES[dtype])
    assert layer.packed.shape == (512, 512) and layer.packed.device == CUDA
    assert (layer.zeros is not None) == zeros and layer.k_permutation is None
    # It holds w4a16.quantize's result for the linear's weight, and the linear's bias.
    q = w4a16.quantize(linear.weight.detach().float().cpu().numpy(), group_size=128, dtype=dtype, zeros=zeros)
    assert torch.equal(layer.dequantized_weight().cpu(), torch.from_numpy(q.dequantized()))
    assert torch.equal(layer.bias, linear.bias.detach())

    x = random_activations(rng, (2, 9, 1024), dtype)
    y = layer(x)
    assert y.shape == (2, 9, 512)
    a = x.double().reshape(-1, 1024)
    w_magnitude = torch.from_numpy(weight_magnitude(q)).to(CUDA)
    reference = a @ layer.dequantized_weight().T + linear.bias.double()
    assert_matches(y, reference, a.abs() @ w_magnitude.T, dtype)
    # And it is a 4-bit approximation of the linear itself (round to nearest: ~7% per weight).
    dense = linear(x).double()
    assert ((y.double() - dense).norm() / dense.norm()).item() < 0.15
    # Strided input works like nn.Linear's (forward makes it contiguous).
    wide = torch.zeros(18, 2048, dtype=DTYPES[dtype], device=CUDA)
    wide[:, :1024] = x.reshape(18, 1024)
    assert torch.equal(layer(wide[:, :1024]), y.reshape(18, 512))


def test_state_dict_round_trip(rng, tmp_path):
    torch.manual_seed(int(rng.integers(1 << 31)))
    linear = torch.nn.Linear(1024, 512, bias=True, dtype=torch.bfloat16, device=CUDA)
    layer = wt.W4A16Linear.from_linear(linear, zeros=True)
    state = layer.state_dict()
    assert set(state) == {"packed", "scales", "zeros", "bias"}
    torch.save(state, tmp_path / "layer.pt")
    fresh = wt.W4A16Linear(1024, 512, bias=True, group_size=128, zeros=True, dtype=torch.bfloat16, device=CUDA)
    fresh.load_state_dict(torch.load(tmp_path / "layer.pt"))
    x = random_activations(rng, (5, 1024), "bf16")
    assert torch.equal(fresh(x), layer(x))
    with pytest.raises(RuntimeError, match="zeros"):  # a layer of another format refuses the state
        wt.W4A16Linear(1024, 512, bias=True, zeros=False, dtype=torch.bfloat16, device=CUDA).load_state_dict(state)
    with pytest.raises(RuntimeError, match="the state holds torch.bfloat16"):  # ... and of another type
        wt.W4A16Linear(1024, 512, bias=True, zeros=True, dtype=torch.float16, device=CUDA).load_state_dict(state)
    # Casting the module to a type the kernels cannot run leaves its buffers in their own type;
    # fp16 <-> bf16 converts them.
    assert fresh.float().scales.dtype == torch.bfloat16 and fresh.to(torch.float16).scales.dtype == torch.float16

    # An act-order layer, filled from the op's arguments through load_state_dict.
    q = Layer(rng, 512, 1024, 128, "fp16", zeros=False, bias=False, act_order=True)
    ordered = wt.W4A16Linear(1024, 512, act_order=True, device=CUDA)
    ordered.load_state_dict({"packed": q.packed.view(512, 512), "scales": q.scales, "k_permutation": q.k_permutation})
    assert set(ordered.state_dict()) == {"packed", "scales", "k_permutation"}
    x = random_activations(rng, (5, 1024), "fp16")
    q.check(ordered(x), x)
    assert torch.equal(ordered.dequantized_weight(), wt.dequantize(q.packed, q.scales, None, q.k_permutation, 128))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_a_float_zeros_layer_runs_and_round_trips_its_state(rng, tmp_path, dtype):
    q = Layer(rng, 512, 1024, 128, dtype, bias=True, fractional=True)
    host = w4a16.sharding.HostLayer.from_quantized(q.q, bias_bits=w4a16.to_bits(q.bias.float().cpu().numpy(), dtype))
    layer = wt.W4A16Linear.from_host_layer(host, device=CUDA)
    assert layer.float_zeros and "float_zeros=True" in repr(layer)
    x = random_activations(rng, (2, 5, 1024), dtype)
    y = layer(x)
    q.check(y, x)
    check_fractions_count(q, y, x)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    fresh = wt.W4A16Linear(1024, 512, bias=True, zeros=True, dtype=DTYPES[dtype], device=CUDA, float_zeros=True)
    fresh.load_state_dict(torch.load(tmp_path / "layer.pt"))
    assert torch.equal(fresh(x), y)
    # Zero points on the device are checked there too, when they are loaded (test_torch_cpu.py
    # has the rest of the state's rules).
    unflagged = {name: tensor for name, tensor in layer.state_dict().items() if name != "float_zeros"}
    assert unflagged["zeros"].device == CUDA
    integer = wt.W4A16Linear(1024, 512, bias=True, zeros=True, dtype=DTYPES[dtype], device=CUDA)
    with pytest.raises(RuntimeError, match=r"zeros: zero point \[\d+, \d+\] is .*, not a whole number in \[0, 15\]"):
        integer.load_state_dict(unflagged)
    # A shard keeps the flag, and so the fractions (not bit for bit the whole layer's output: the
    # dispatch depends on n).
    shard = layer.shard(2, 1, mode="column")
    assert shard.float_zeros
    reference, magnitude = q.reference(x)
    assert_matches(shard(x), reference[:, 256:], magnitude[:, 256:], dtype)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_from_checkpoint(rng, tmp_path, dtype):
    n, k, group = 512, 1024, 128
    q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype=dtype, zeros=True)
    permutation = rng.permutation(k).astype(np.int32)
    bias = rng.uniform(-1, 1, size=n).astype(np.float32)
    path = tmp_path / "model.w4a16.safetensors"
    write_container(path, {"model.layers.0.self_attn.q_proj.": {
        "packed": w4a16.pack(q.codes).reshape(n, k // 2), "scale_bits": q.scale_bits, "zero_bits": q.zero_bits,
        "k_permutation": permutation, "bias": bias}}, dtype)
    layer = wt.W4A16Linear.from_checkpoint(path, "model.layers.0.self_attn.q_proj", device=CUDA)
    assert (layer.in_features, layer.out_features, layer.group_size, layer.dtype) == (k, n, group, DTYPES[dtype])
    assert layer.zeros is not None and layer.bias is not None and layer.k_permutation is not None
    x = random_activations(rng, (7, k), dtype)
    a = x.double()[:, torch.from_numpy(permutation).long().to(CUDA)]
    w = torch.from_numpy(q.dequantized()).to(CUDA)
    b = torch.from_numpy(bias).to(CUDA, DTYPES[dtype]).double()  # rounded to the layer's type, as loaded
    assert_matches(layer(x), a @ w.T + b, a.abs() @ torch.from_numpy(weight_magnitude(q)).to(CUDA).T, dtype)
    with pytest.raises(ValueError, match="no packed layer 'model.layers.1.self_attn.q_proj.'"):
        wt.W4A16Linear.from_checkpoint(path, "model.layers.1.self_attn.q_proj.")


# ---------------------------------------------------------------------------------------------
# The tuning cache.


def test_profile_and_the_tuning_file(rng, tmp_path):
    torch.manual_seed(int(rng.integers(1 << 31)))
    layer = wt.W4A16Linear.from_linear(torch.nn.Linear(512, 768, dtype=torch.float16, device=CUDA))
    result = layer.profile(4, iterations=2, repeats=3)
    r = wt.runner()
    assert result["best"] in r.configs() and result["timings"][result["best"]] == result["best_us"]
    assert set(result["timings"]) | set(result["skipped"]) == set(r.configs())
    # The fastest is now the default for the m bucket (3 and 4 share bucket 4), n, k, group and format.
    assert r.default_config(3, 768, 512, 128, "fp16", False) == result["best"]
    path = tmp_path / "tuning.json"
    wt.save_tuning(path)
    document = json.loads(path.read_text())
    assert document["device"] == torch.cuda.get_device_name() and document["sm_count"] == r.sm_count
    assert {"m_bucket": 4, "n": 768, "k": 512, "group_size": 128, "format": "fp16",
            "config": result["best"]} in document["entries"]
    fresh = w4a16.Runner()  # a second runner of this device starts from the heuristic
    fresh.load_tuning(str(path))
    assert fresh.default_config(4, 768, 512) == result["best"]
    wt.load_tuning(path)
    document["device"] = "another GPU"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="the file was written for another GPU"):
        wt.load_tuning(path)


def test_float_zeros_are_tuned_as_a_format_of_their_own(rng, tmp_path):
    q = Layer(rng, 768, 512, 128, "fp16", fractional=True)
    layer = wt.W4A16Linear.from_host_layer(w4a16.sharding.HostLayer.from_quantized(q.q), device=CUDA)
    result = layer.profile(2, iterations=2, repeats=3)
    r = wt.runner()
    assert r.default_config(2, 768, 512, 128, "fp16", True, float_zeros=True) == result["best"]
    path = tmp_path / "tuning.json"
    wt.save_tuning(path)
    entries = json.loads(path.read_text())["entries"]
    assert {"m_bucket": 2, "n": 768, "k": 512, "group_size": 128, "format": "fp16+float-zeros",
            "config": result["best"]} in entries
    assert not any(e["m_bucket"] == 2 and e["n"] == 768 and e["k"] == 512 and e["format"] == "fp16+zeros"
                   for e in entries)
    fresh = w4a16.Runner()  # the format name reads back
    fresh.load_tuning(str(path))
    assert fresh.default_config(2, 768, 512, 128, "fp16", True, float_zeros=True) == result["best"]


# ---------------------------------------------------------------------------------------------
# Argument errors: each names the argument, its value and the rule.


def bad_argument_cases():
    """(id, overrides of the good arguments, expected message) for a [4, 1024] fp16 call."""
    return [
        ("a_fp32", lambda g: {"a": g["a"].float()},
         r"a has dtype torch.float32; expected torch.float16 or torch.bfloat16"),
        ("a_cpu", lambda g: {"a": g["a"].cpu()}, r"a is on cpu; expected a CUDA tensor"),
        ("a_0d", lambda g: {"a": g["a"][0, 0]}, r"a is a 0-d tensor; expected \[\.\.\., k\]"),
        ("a_strided", lambda g: {"a": torch.empty(4, 2048, dtype=torch.float16, device=CUDA)[:, :1024]},
         r"a has strides \[2048, 1\] for shape \[4, 1024\]; expected a contiguous tensor"),
        ("a_misaligned",  # contiguous, 2 bytes past an allocation's start
         lambda g: {"a": torch.empty(4 * 1024 + 8, dtype=torch.float16, device=CUDA)[1:4097].view(4, 1024)},
         r"misaligned pointer: a must be 16-byte aligned"),
        ("group_not_dividing_k", lambda g: {"group_size": 100},
         r"group_size is 100; expected a positive divisor of k = 1024"),
        ("group_unsupported", lambda g: {"group_size": 256, "scales": g["scales"][:4].contiguous(),
                                         "zeros": g["zeros"][:4].contiguous()},
         r"group_size 256 not supported: use 32, 64, 128 or k"),
        ("scales_shape", lambda g: {"scales": g["scales"][:4].contiguous()},
         r"scales has shape \[4, 512\]; expected \[k / group_size, n\] = \[8, n\]"),
        ("scales_dtype", lambda g: {"scales": g["scales"].to(torch.bfloat16)},
         r"scales has dtype torch.bfloat16; expected a's dtype torch.float16"),
        ("scales_strided", lambda g: {"scales": g["scales"].T.contiguous().T},
         r"scales has strides \[1, 8\] for shape \[8, 512\]; expected a contiguous tensor"),
        ("scales_cpu", lambda g: {"scales": g["scales"].cpu()}, r"scales is on cpu; expected a's device cuda:\d"),
        ("packed_dtype", lambda g: {"packed": g["packed"].view(torch.int8)},
         r"packed has dtype torch.int8; expected torch.uint8"),
        ("packed_bytes", lambda g: {"packed": g["packed"][:100]},
         r"packed has 100 bytes; expected n \* k / 2 = 262144 \(n = 512, k = 1024\)"),
        ("packed_cpu", lambda g: {"packed": g["packed"].cpu()}, r"packed is on cpu"),
        ("zeros_shape", lambda g: {"zeros": g["zeros"][:, :256].contiguous()},
         r"zeros has shape \[8, 256\]; expected \[8, 512\]"),
        ("zeros_dtype", lambda g: {"zeros": g["zeros"].to(torch.bfloat16)}, r"zeros has dtype torch.bfloat16"),
        ("zeros_cpu", lambda g: {"zeros": g["zeros"].cpu()}, r"zeros is on cpu"),
        ("bias_shape", lambda g: {"bias": g["bias"][:256]}, r"bias has shape \[256\]; expected \[512\]"),
        ("bias_dtype", lambda g: {"bias": g["bias"].float()}, r"bias has dtype torch.float32"),
        ("bias_strided", lambda g: {"bias": torch.empty(1024, dtype=torch.float16, device=CUDA)[::2]},
         r"bias has strides \[2\]"),
        ("k_permutation_dtype", lambda g: {"k_permutation": g["k_permutation"].long()},
         r"k_permutation has dtype torch.int64; expected torch.int32"),
        ("k_permutation_shape", lambda g: {"k_permutation": g["k_permutation"][:512]},
         r"k_permutation has shape \[512\]; expected \[k\] = \[1024\]"),
        ("k_permutation_cpu", lambda g: {"k_permutation": g["k_permutation"].cpu()}, r"k_permutation is on cpu"),
        ("alpha_nan", lambda g: {"alpha": float("nan")}, r"alpha must be finite"),
        ("n_not_multiple_of_16", lambda g: {"scales": g["scales"][:, :40].contiguous(), "zeros": None, "bias": None,
                                            "packed": g["packed"][:40 * 512]},
         r"n must be a multiple of 16 and k of 64, got n = 40, k = 1024"),
        ("k_not_multiple_of_64", lambda g: {"a": g["a"][:, :96].contiguous(), "scales": g["scales"][:3].contiguous(),
                                            "zeros": None, "k_permutation": None, "group_size": 32,
                                            "packed": g["packed"][:512 * 48]},
         r"n must be a multiple of 16 and k of 64, got n = 512, k = 96"),
        ("float_zeros_without_zeros", lambda g: {"zeros": None, "float_zeros": True},
         r"float_zeros is True without zeros; float_zeros describes the zero points"),
    ]


CASES = bad_argument_cases()


@pytest.mark.parametrize("overrides,message", [(o, m) for _, o, m in CASES], ids=[i for i, _, _ in CASES])
def test_bad_arguments_raise_value_errors(rng, overrides, message):
    layer = Layer(rng, 512, 1024, 128, "fp16", zeros=True, bias=True, act_order=True)
    good = {"a": random_activations(rng, (4, 1024), "fp16"), "packed": layer.packed, "scales": layer.scales,
            "zeros": layer.zeros, "bias": layer.bias, "k_permutation": layer.k_permutation, "group_size": 128,
            "alpha": 1.0, "float_zeros": False}
    layer.check(torch.ops.w4a16.gemm(*good.values()), good["a"])  # the good call is good
    arguments = {**good, **overrides(good)}
    with pytest.raises(ValueError, match=message):
        torch.ops.w4a16.gemm(*arguments.values())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_tensors_on_two_devices_are_refused_and_another_device_works(rng):
    layer = Layer(rng, 512, 1024, 128, "fp16")
    x = random_activations(rng, (4, 1024), "fp16")
    with pytest.raises(ValueError, match=r"scales is on cuda:1; expected a's device cuda:0"):
        torch.ops.w4a16.gemm(x.to("cuda:0"), layer.packed.to("cuda:0"), layer.scales.to("cuda:1"))
    other = torch.device("cuda", 1 - CUDA.index)
    y = torch.ops.w4a16.gemm(x.to(other), layer.packed.to(other), layer.scales.to(other))  # current device: CUDA
    assert y.device == other
    layer.check(y.to(CUDA), x)


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="dtype torch.float32 not supported"):
        wt.W4A16Linear(1024, 512, dtype=torch.float32)
    with pytest.raises(ValueError, match="group_size 100 must divide in_features = 1024"):
        wt.W4A16Linear(1024, 512, group_size=100)
    with pytest.raises(ValueError, match="group_size 256; the kernels take 32, 64, 128 or in_features"):
        wt.W4A16Linear(1024, 512, group_size=256)
    with pytest.raises(ValueError, match="out_features 520 must be a multiple of 16 and in_features 1024 of 64"):
        wt.W4A16Linear(1024, 520)
    with pytest.raises(ValueError, match="the weight's dtype is torch.float32"):
        wt.W4A16Linear.from_linear(torch.nn.Linear(1024, 512))
