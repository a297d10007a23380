"""GPU tests of the grouped (mixture-of-experts) op torch.ops.w4a16.moe_gemm: against a float64
reference for top-k routings (experts without rows included), torch.compile, CUDA-graph replay
with new routing, the raw Runner.grouped_gemm binding and every argument error. Skipped without
PyTorch or a CUDA device (test_torch_cpu.py checks the fake implementation without one).

The reference dequantizes each expert with w4a16.torch.dequantize (float64, exact), and each
output element must lie within the dense op's bound (test_torch_gpu.py's docstring), with the
row's routing weight and bias in it: |c - ref| <= 4u (|w_r| (|alpha| sum_j |a_j| |s_j| (|q_j -
z_j| + |z_j|) + |bias|) + |ref|) + 2^-14.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import w4a16  # noqa: E402
import w4a16.torch as wt  # noqa: E402  (registers torch.ops.w4a16.moe_gemm)
from helpers import random_weights  # noqa: E402
from test_torch_gpu import (  # noqa: E402  (the dense tests' data and bound, shared)
    CUDA,
    DTYPES,
    assert_matches,
    exception_text,
    fractional_zeros,
    random_activations,
    tensor_of_bits,
    weight_magnitude,
)


class Experts:
    """E random quantized experts of one shape on the GPU, as the op takes them, and their exact
    float64 weights. fractional: zero points with fractions (run with float_zeros)."""

    def __init__(self, rng, experts, n, k, group, dtype, zeros=False, bias=False, fractional=False):
        self.experts, self.n, self.k, self.group, self.dtype = experts, n, k, group, dtype
        self.float_zeros = fractional
        self.q = []
        for _ in range(experts):
            q = w4a16.quantize(random_weights(rng, n, k), group_size=group, dtype=dtype, zeros=zeros or fractional,
                               float_zeros=fractional)
            self.q.append(fractional_zeros(rng, q) if fractional else q)
        # Each expert's packed bytes in W4A16Linear's [n, k / 2] layout, stacked.
        self.packed = torch.from_numpy(np.stack([w4a16.pack(q.codes).reshape(n, k // 2) for q in self.q])).to(CUDA)
        self.scales = torch.stack([tensor_of_bits(q.scale_bits, dtype) for q in self.q])
        self.zeros = torch.stack([tensor_of_bits(q.zero_bits, dtype) for q in self.q]) if self.q[0].has_zeros else None
        self.bias = random_activations(rng, (experts, n), dtype) if bias else None
        # The weights as the op's arguments define them (one slice of each stacked tensor per expert).
        self.w = torch.stack([
            wt.dequantize(self.packed[e], self.scales[e], None if self.zeros is None else self.zeros[e], None, group)
            for e in range(experts)])
        self.w_magnitude = torch.stack([torch.from_numpy(weight_magnitude(q)) for q in self.q]).to(CUDA)

    def args(self):
        """The op's arguments after a and expert_offsets, in order: packed, scales (then zeros, bias)."""
        return self.packed, self.scales

    def run(self, a, offsets, row_weights=None, alpha=1.0):
        return torch.ops.w4a16.moe_gemm(a, self.packed, self.scales, offsets, self.zeros, self.bias, row_weights,
                                        self.group, alpha, float_zeros=self.float_zeros)

    def reference(self, a, offsets, row_weights=None, alpha=1.0, w=None):
        """(reference, magnitude) as [routed rows, n] float64, the rows up to offsets[-1]; w: other
        [E, n, k] weights to use (default: the experts')."""
        w = self.w if w is None else w
        bounds = offsets.tolist()
        a = a.double()
        ref = torch.zeros(bounds[-1], self.n, dtype=torch.float64, device=CUDA)
        magnitude = torch.zeros_like(ref)
        for e in range(self.experts):
            lo, hi = bounds[e], bounds[e + 1]
            if lo == hi:
                continue  # an expert without rows
            ref[lo:hi] = alpha * (a[lo:hi] @ w[e].T)
            magnitude[lo:hi] = abs(alpha) * (a[lo:hi].abs() @ self.w_magnitude[e].T)
            if self.bias is not None:
                ref[lo:hi] += self.bias[e].double()
                magnitude[lo:hi] += self.bias[e].double().abs()
        if row_weights is not None:
            weights = row_weights[:bounds[-1]].double()[:, None]
            ref, magnitude = ref * weights, magnitude * weights.abs()
        return ref, magnitude

    def check(self, out, a, offsets, row_weights=None, alpha=1.0):
        """out's routed rows (up to offsets[-1]) within the bound of the reference."""
        assert out.dtype == a.dtype and out.device == a.device and out.shape == (a.shape[0], self.n)
        routed = int(offsets[-1])
        assert_matches(out[:routed], *self.reference(a, offsets, row_weights, alpha), self.dtype)


def route(rng, tokens, experts, top_k):
    """A top-k routing of `tokens` tokens: (source_rows, row_weights, offsets) on the GPU, the
    tokens x top_k (token, choice) positions sorted by expert, stably (w4a16/moe.h's layout:
    route_tokens). Experts 0 and E - 1 and a random quarter of the others are never picked, so
    every routing has experts without rows, at both ends of the offsets too."""
    idle = np.union1d(rng.choice(experts, size=experts // 4, replace=False), [0, experts - 1])
    allowed = np.setdiff1d(np.arange(experts), idle)
    assert len(allowed) >= top_k
    ids = np.stack([rng.choice(allowed, size=top_k, replace=False) for _ in range(tokens)])
    weights = rng.uniform(0.05, 1.0, size=(tokens, top_k))
    weights /= weights.sum(axis=1, keepdims=True)  # softmax-like: each token's weights sum to 1
    order = np.argsort(ids.ravel(), kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(ids.ravel(), minlength=experts))])
    return (torch.from_numpy(order // top_k).to(CUDA),
            torch.from_numpy(weights.ravel()[order].astype(np.float32)).to(CUDA),
            torch.from_numpy(offsets.astype(np.int32)).to(CUDA))


def routed_batch(rng, experts, tokens, top_k):
    """(a, offsets, row_weights): random tokens, routed, their rows gathered into expert order."""
    x = random_activations(rng, (tokens, experts.k), experts.dtype)
    source_rows, row_weights, offsets = route(rng, tokens, experts.experts, top_k)
    return x[source_rows].contiguous(), offsets, row_weights


# ---------------------------------------------------------------------------------------------
# The op.

SETS = [(8, 2, 512, 1024, 128), (64, 6, 256, 512, 64)]  # experts, top_k, n, k, group
SET_IDS = [f"E{e}_top{t}_n{n}_k{k}_g{g}" for e, t, n, k, g in SETS]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("zeros", [False, True], ids=["scale", "zeros"])
@pytest.mark.parametrize("epilogue", [False, True], ids=["plain", "bias_row_weights"])
@pytest.mark.parametrize("experts_count,top_k,n,k,group", SETS, ids=SET_IDS)
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_moe_gemm_matches_the_float64_reference(rng, dtype, zeros, epilogue, experts_count, top_k, n, k, group,
                                                tokens):
    experts = Experts(rng, experts_count, n, k, group, dtype, zeros=zeros, bias=epilogue)
    a, offsets, row_weights = routed_batch(rng, experts, tokens, top_k)
    assert int(offsets[-1]) == tokens * top_k == a.shape[0]
    assert (offsets[1:] == offsets[:-1]).any()  # experts without rows
    alpha = -0.75 if epilogue else 1.0
    row_weights = row_weights if epilogue else None
    out = experts.run(a, offsets, row_weights, alpha)
    assert torch.isfinite(out).all()
    experts.check(out, a, offsets, row_weights, alpha)


def test_dequantize_reads_each_expert_as_quantize_made_it(rng):
    # The reference's weights (w4a16.torch.dequantize of each stacked slice) are quantize's own.
    experts = Experts(rng, 3, 256, 512, 128, "bf16", zeros=True)
    for e, q in enumerate(experts.q):
        assert torch.equal(experts.w[e].cpu(), torch.from_numpy(q.dequantized()))


def test_row_weights_scale_the_biased_rows(rng):
    # C = w * (alpha * acc + bias): routing weights of 1 give the unweighted call bit for bit, and
    # weights of 0 rows of zeros (bias included).
    experts = Experts(rng, 8, 512, 1024, 128, "fp16", zeros=True, bias=True)
    a, offsets, _ = routed_batch(rng, experts, 9, 2)
    plain = experts.run(a, offsets, None, 0.5)
    assert torch.equal(experts.run(a, offsets, torch.ones(a.shape[0], device=CUDA), 0.5), plain)
    weights = torch.ones(a.shape[0], device=CUDA)
    weights[::3] = 0.0
    weighted = experts.run(a, offsets, weights, 0.5)
    assert torch.equal(weighted[::3], torch.zeros_like(weighted[::3]))
    assert torch.equal(weighted[1::3], plain[1::3])


def test_no_rows_give_an_empty_output(rng):
    experts = Experts(rng, 8, 512, 1024, 128, "bf16")
    a = torch.empty(0, 1024, dtype=torch.bfloat16, device=CUDA)
    offsets = torch.zeros(9, dtype=torch.int32, device=CUDA)
    out = experts.run(a, offsets, torch.empty(0, device=CUDA))
    assert out.shape == (0, 512) and out.dtype == torch.bfloat16 and out.device == CUDA


def test_rows_past_the_routing_are_not_the_routings(rng):
    # A launch sized for more rows than the routing fills (a graph captured for the most tokens):
    # the routed rows are right whatever the spare rows of a hold.
    experts = Experts(rng, 8, 512, 1024, 128, "bf16", bias=True)
    a, offsets, row_weights = routed_batch(rng, experts, 5, 2)
    spare = 7
    padded_a = torch.cat([a, random_activations(rng, (spare, 1024), "bf16")])
    padded_weights = torch.cat([row_weights, torch.ones(spare, device=CUDA)])
    out = experts.run(padded_a, offsets, padded_weights)
    assert out.shape == (10 + spare, 512)
    experts.check(out, padded_a, offsets, padded_weights)
    assert torch.equal(out[:10], experts.run(a, offsets, row_weights))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_float_zeros_take_fractional_zero_points(rng, dtype):
    experts = Experts(rng, 8, 512, 1024, 128, dtype, bias=True, fractional=True)
    a, offsets, row_weights = routed_batch(rng, experts, 17, 2)
    out = experts.run(a, offsets, row_weights)
    experts.check(out, a, offsets, row_weights)
    # Beyond the bound (loose enough to pass rounded zero points at bf16): much nearer the exact
    # result than to what rounding the zero points would give.
    rounded = []
    for e, q in enumerate(experts.q):
        zero_bits = w4a16.to_bits(np.rint(w4a16.from_bits(q.zero_bits, dtype)), dtype)
        rounded.append(torch.from_numpy(
            w4a16.QuantizedWeights(q.codes, q.scale_bits, zero_bits, q.group_size, dtype).dequantized()))
    exact, _ = experts.reference(a, offsets, row_weights)
    rounding, _ = experts.reference(a, offsets, row_weights, w=torch.stack(rounded).to(CUDA))
    error = (out.double() - exact).norm().item()
    assert error < 0.25 * (rounding - exact).norm().item()
    with pytest.raises(ValueError, match="float_zeros is True without zeros"):
        torch.ops.w4a16.moe_gemm(a, *experts.args(), offsets, None, None, None, 128, 1.0, True)


def test_opcheck(rng):
    # PyTorch's own checks of a custom op: its schema, the fake implementation against the real
    # one, and tracing through AOTAutograd with dynamic shapes.
    experts = Experts(rng, 8, 512, 1024, 128, "fp16", zeros=True, bias=True)
    a, offsets, row_weights = routed_batch(rng, experts, 6, 2)
    torch.library.opcheck(torch.ops.w4a16.moe_gemm.default,
                          (a, experts.packed, experts.scales, offsets, experts.zeros, experts.bias, row_weights, 128,
                           1.0))


# ---------------------------------------------------------------------------------------------
# The raw runner binding (what the op calls).


def test_raw_runner_runs_every_grouped_config(rng):
    experts = Experts(rng, 8, 512, 1024, 128, "bf16", zeros=True, bias=True)
    a, offsets, row_weights = routed_batch(rng, experts, 12, 2)
    rows = a.shape[0]
    r = wt.runner()
    configs = r.grouped_configs()
    assert configs and set(configs) <= set(r.configs())
    assert r.default_grouped_config(rows, 8, 512, 1024) in configs
    c = torch.empty(rows, 512, dtype=torch.bfloat16, device=CUDA)
    args = (a.data_ptr(), experts.packed.data_ptr(), experts.scales.data_ptr(), experts.zeros.data_ptr(),
            experts.bias.data_ptr(), c.data_ptr(), offsets.data_ptr(), row_weights.data_ptr(), 8, rows, 512, 1024,
            128, 1.0, "bf16")
    stream = torch.cuda.current_stream().cuda_stream
    for config in [None] + configs:
        c.fill_(float("nan"))
        r.grouped_gemm(*args, stream, config=config)
        experts.check(c, a, offsets, row_weights)
    with pytest.raises(ValueError, match="config 'ms_bogus' is not a config name"):
        r.grouped_gemm(*args, stream, config="ms_bogus")
    with pytest.raises(ValueError, match="grouped_gemm takes a fused config without split-K"):
        r.grouped_gemm(*args, stream, config="dequant_cublas")
    with pytest.raises(ValueError, match="dtype must be 'fp16' or 'bf16', got 'fp32'"):
        r.grouped_gemm(*args[:-1], "fp32", stream)
    with pytest.raises(ValueError, match="a, packed_weights, scales, c and expert_offsets must not be null"):
        r.grouped_gemm(*args[:6], 0, *args[7:], stream)


# ---------------------------------------------------------------------------------------------
# torch.compile and CUDA graphs.


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_torch_compile_fullgraph(rng, dtype):
    experts = Experts(rng, 8, 512, 1024, 128, dtype, zeros=True, bias=True)

    def f(a, offsets, row_weights):
        return torch.ops.w4a16.moe_gemm(a, experts.packed, experts.scales, offsets, experts.zeros, experts.bias,
                                        row_weights, 128, 0.5)

    compiled = torch.compile(f, fullgraph=True)
    for tokens in (1, 9, 5):  # the second recompiles with dynamic rows: the fake sees symbolic ones
        a, offsets, row_weights = routed_batch(rng, experts, tokens, 2)
        y = compiled(a, offsets, row_weights)
        assert torch.equal(y, f(a, offsets, row_weights))  # the same kernel: the same bits
        experts.check(y, a, offsets, row_weights, 0.5)


def test_torch_compile_of_code_around_the_op(rng):
    experts = Experts(rng, 8, 512, 1024, 128, "bf16", zeros=True)

    def layer(a, offsets, row_weights):  # Inductor code on both sides of the op
        y = torch.ops.w4a16.moe_gemm(a * 2.0, experts.packed, experts.scales, offsets, experts.zeros, None,
                                     row_weights, 128, 1.0)
        return torch.nn.functional.silu(y) + 1.0

    a, offsets, row_weights = routed_batch(rng, experts, 9, 2)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(a, offsets, row_weights),
                               layer(a, offsets, row_weights))


def test_torch_compile_reports_bad_arguments_while_tracing(rng):
    experts = Experts(rng, 8, 512, 1024, 128, "fp16")
    wrong_offsets = torch.zeros(9, dtype=torch.int64, device=CUDA)
    compiled = torch.compile(
        lambda a: torch.ops.w4a16.moe_gemm(a, experts.packed, experts.scales, wrong_offsets, None, None, None, 128,
                                           1.0),
        fullgraph=True)
    with pytest.raises(Exception) as info:
        compiled(random_activations(rng, (4, 1024), "fp16"))
    assert "w4a16::moe_gemm: expert_offsets has dtype torch.int64; expected torch.int32" in exception_text(info.value)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cuda_graph_replays_new_routing_written_in_place(rng, compiled):
    experts = Experts(rng, 8, 512, 1024, 128, "bf16", zeros=True, bias=True)
    tokens, top_k = 16, 2
    rows = tokens * top_k
    static_a = torch.zeros(rows, 1024, dtype=torch.bfloat16, device=CUDA)
    static_offsets = torch.zeros(9, dtype=torch.int32, device=CUDA)
    static_weights = torch.zeros(rows, dtype=torch.float32, device=CUDA)

    def load(routed_tokens):
        """A new routing of routed_tokens tokens written into the captured tensors, in place."""
        a, offsets, row_weights = routed_batch(rng, experts, routed_tokens, top_k)
        static_a[:a.shape[0]].copy_(a)
        static_offsets.copy_(offsets)
        static_weights[:a.shape[0]].copy_(row_weights)

    def f(a, offsets, row_weights):
        return torch.ops.w4a16.moe_gemm(a, experts.packed, experts.scales, offsets, experts.zeros, experts.bias,
                                        row_weights, 128, 1.0)

    run = torch.compile(f, fullgraph=True) if compiled else f
    load(tokens)
    # Warm up on a side stream first (creates the runner, compiles), as PyTorch's graph docs ask.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            run(static_a, static_offsets, static_weights)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = run(static_a, static_offsets, static_weights)
    # New routings of every token, then one of fewer tokens than the graph was sized for (its
    # spare rows are past the offsets: not part of the result).
    for routed_tokens in (tokens, tokens, 5):
        load(routed_tokens)
        graph.replay()
        torch.cuda.current_stream().synchronize()
        routed = int(static_offsets[-1])
        assert routed == routed_tokens * top_k
        experts.check(static_y, static_a, static_offsets, static_weights)
        # The replay computes what an eager call does on the same routing.
        assert torch.equal(static_y[:routed], f(static_a, static_offsets, static_weights)[:routed])


# ---------------------------------------------------------------------------------------------
# Argument errors: each names the argument, its value and the rule.


def bad_argument_cases():
    """(id, overrides of the good arguments, expected message) for a 4-token top-2 fp16 call of
    8 experts, n = 512, k = 1024, group 128."""
    return [
        ("offsets_int64", lambda g: {"expert_offsets": g["expert_offsets"].long()},
         r"w4a16::moe_gemm: expert_offsets has dtype torch.int64; expected torch.int32"),
        ("offsets_length", lambda g: {"expert_offsets": g["expert_offsets"][:8]},
         r"expert_offsets has shape \[8\]; expected \[experts \+ 1\] = \[9\] \(experts = 8 from scales\)"),
        ("offsets_cpu", lambda g: {"expert_offsets": g["expert_offsets"].cpu()},
         r"expert_offsets is on cpu; expected a's device cuda:\d"),
        ("scales_dtype", lambda g: {"scales": g["scales"].to(torch.bfloat16)},
         r"scales has dtype torch.bfloat16; expected a's dtype torch.float16"),
        ("scales_2d", lambda g: {"scales": g["scales"][0]},
         r"scales has shape \[8, 512\]; expected \[experts, k / group_size, n\] = \[experts, 8, n\]"),
        ("experts_packed_vs_scales", lambda g: {"packed": g["packed"][:7]},
         r"packed has shape \[7, 512, 512\]; expected \[experts, n, k / 2\] = \[8, 512, 512\] \(experts = 8"),
        ("experts_scales_vs_packed", lambda g: {"scales": g["scales"][:6], "zeros": g["zeros"][:6],
                                                "bias": g["bias"][:6]},
         r"packed has shape \[8, 512, 512\]; expected \[experts, n, k / 2\] = \[6, 512, 512\]"),
        ("packed_flat", lambda g: {"packed": g["packed"].view(8, -1)},
         r"packed has shape \[8, 262144\]; expected \[experts, n, k / 2\] = \[8, 512, 512\]"),
        ("packed_dtype", lambda g: {"packed": g["packed"].view(torch.int8)},
         r"packed has dtype torch.int8; expected torch.uint8"),
        ("k_of_a", lambda g: {"a": g["a"][:, :512].contiguous()},
         r"scales has shape \[8, 8, 512\]; expected \[experts, k / group_size, n\] = \[experts, 4, n\] \(k = 512"),
        ("a_3d", lambda g: {"a": g["a"].view(2, 4, 1024)},
         r"a has shape \[2, 4, 1024\]; expected \[rows, k\]"),
        ("a_fp32", lambda g: {"a": g["a"].float()},
         r"a has dtype torch.float32; expected torch.float16 or torch.bfloat16"),
        ("a_cpu", lambda g: {"a": g["a"].cpu()}, r"a is on cpu; expected a CUDA tensor"),
        ("a_strided", lambda g: {"a": torch.empty(8, 2048, dtype=torch.float16, device=CUDA)[:, :1024]},
         r"a has strides \[2048, 1\] for shape \[8, 1024\]; expected a contiguous tensor"),
        ("group_not_dividing_k", lambda g: {"group_size": 100},
         r"group_size is 100; expected a positive divisor of k = 1024"),
        ("zeros_shape", lambda g: {"zeros": g["zeros"][:, :4].contiguous()},
         r"zeros has shape \[8, 4, 512\]; expected \[8, 8, 512\]"),
        ("zeros_dtype", lambda g: {"zeros": g["zeros"].to(torch.bfloat16)}, r"zeros has dtype torch.bfloat16"),
        ("bias_shape", lambda g: {"bias": g["bias"][0]}, r"bias has shape \[512\]; expected \[8, 512\]"),
        ("bias_dtype", lambda g: {"bias": g["bias"].float()}, r"bias has dtype torch.float32"),
        ("row_weights_dtype", lambda g: {"row_weights": g["row_weights"].half()},
         r"row_weights has dtype torch.float16; expected torch.float32"),
        ("row_weights_length", lambda g: {"row_weights": g["row_weights"][:5]},
         r"row_weights has shape \[5\]; expected \[rows\] = \[8\]"),
        ("row_weights_cpu", lambda g: {"row_weights": g["row_weights"].cpu()}, r"row_weights is on cpu"),
        ("float_zeros_without_zeros", lambda g: {"zeros": None, "float_zeros": True},
         r"float_zeros is True without zeros"),
        # The runner's own rules come back with its message.
        ("group_unsupported", lambda g: {"group_size": 256, "scales": g["scales"][:, :4].contiguous(),
                                         "zeros": g["zeros"][:, :4].contiguous()},
         r"group_size 256 not supported: use 32, 64, 128 or k"),
        ("alpha_nan", lambda g: {"alpha": float("nan")}, r"alpha must be finite"),
        ("n_not_multiple_of_16", lambda g: {"scales": g["scales"][:, :, :40].contiguous(), "zeros": None,
                                            "bias": None, "packed": g["packed"][:, :40].contiguous()},
         r"n must be a multiple of 16 and k of 64, got n = 40, k = 1024"),
    ]


CASES = bad_argument_cases()


@pytest.mark.parametrize("overrides,message", [(o, m) for _, o, m in CASES], ids=[i for i, _, _ in CASES])
def test_bad_arguments_raise_value_errors(rng, overrides, message):
    experts = Experts(rng, 8, 512, 1024, 128, "fp16", zeros=True, bias=True)
    a, offsets, row_weights = routed_batch(rng, experts, 4, 2)
    good = {"a": a, "packed": experts.packed, "scales": experts.scales, "expert_offsets": offsets,
            "zeros": experts.zeros, "bias": experts.bias, "row_weights": row_weights, "group_size": 128,
            "alpha": 1.0, "float_zeros": False}
    experts.check(torch.ops.w4a16.moe_gemm(*good.values()), a, offsets, row_weights)  # the good call is good
    arguments = {**good, **overrides(good)}
    with pytest.raises(ValueError, match=message):
        torch.ops.w4a16.moe_gemm(*arguments.values())
