"""PyTorch integration: the ops `torch.ops.w4a16.gemm` and `torch.ops.w4a16.moe_gemm` (mixture of
experts, grouped), the layer `W4A16Linear`, the tuning cache.

Import it explicitly (`import w4a16.torch`); `import w4a16` alone never imports PyTorch. The
extension is not compiled against PyTorch: this module hands it raw device pointers
(`tensor.data_ptr()`) and PyTorch's current stream as ints, so one build serves every PyTorch
version.

    y = torch.ops.w4a16.gemm(x, packed, scales, zeros, bias, k_permutation, group_size, alpha, float_zeros=False)
      = alpha * x @ dequant(W).T (+ bias),  dequant(W)[i, j] = s * (q - z)  (z = 8 without zeros)

Zero points are whole numbers 0..15 unless float_zeros is set: what GPTQ, AWQ, compressed-tensors
and w4a16.quantize make, and what the decode kernels fold into the code unpack at no cost.
float_zeros=True takes any zero points (HQQ-style fractional ones) for a little more work per
group; without it a fractional zero point gives unspecified results (some configs round it), so
W4A16Linear refuses one when it is made.

    y = torch.ops.w4a16.moe_gemm(x, packed, scales, expert_offsets, zeros, bias, row_weights, group_size, alpha)
      y[r] = row_weights[r] * (alpha * x[r] @ dequant(W_e).T + bias[e]),  e the expert owning row r

runs every expert of a mixture-of-experts layer in one launch, on rows sorted by expert
(expert_offsets, on the device, says which rows each expert owns; see moe_gemm).

Both ops allocate nothing outside PyTorch's caching allocator (the output, and gemm's workspace),
never synchronize, and run on `torch.cuda.current_stream()`, so they can be captured in a CUDA
graph and traced by `torch.compile(fullgraph=True)` (their fake implementations give the output's
shape). Make the first call on a device before any capture: it creates that device's runner
(cuBLAS handle, kernel attributes), which capture would forbid. Inference only: the ops have no
autograd formula.
"""

import atexit
import math
import os
import threading
from typing import Dict, Optional

import numpy as np
import torch

from . import _w4a16
from . import sharding as _sharding

__all__ = [
    "W4A16Linear",
    "dequantize",
    "gemm",
    "load_tuning",
    "moe_gemm",
    "profile",
    "runner",
    "save_tuning",
]

# The activation types the kernels take, by the extension's names for them.
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}

# ---------------------------------------------------------------------------------------------
# One runner per device, created on first use. The lock only guards creation (two threads must not
# both build one); a lookup of an existing runner is a dict read, atomic under the GIL. Threads may
# share a runner: its GEMM calls run concurrently, and the binding serializes the calls that change
# it (profile, load_tuning, set_programmatic_launch) against everything else.
_runners: Dict[int, "_w4a16.Runner"] = {}
_runners_lock = threading.Lock()
# Drop the runners before the interpreter tears the extension down: they hold a cuBLAS handle and
# kernel state best released while CUDA is still up, and nanobind reports instances still alive at
# its own shutdown as leaks.
atexit.register(_runners.clear)


def _device_index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device: {device} is not a CUDA device")
    return torch.cuda.current_device() if device.index is None else device.index


def runner(device=None) -> "_w4a16.Runner":
    """The cached `w4a16.Runner` of a CUDA device (default: the current one)."""
    index = _device_index(device)
    found = _runners.get(index)
    if found is not None:
        return found
    with _runners_lock:
        found = _runners.get(index)
        if found is None:
            # The runner binds the current device (and checks it on every call).
            with torch.cuda.device(index):
                found = _w4a16.Runner()
            _runners[index] = found
    return found


# PyTorch's current stream of a device as a raw handle, without building a torch.cuda.Stream per
# call (what Inductor's generated code calls too); the public route where that is missing.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
if _raw_stream is None:  # pragma: no cover - older or future PyTorch

    def _raw_stream(index):
        return torch.cuda.current_stream(index).cuda_stream


# ---------------------------------------------------------------------------------------------
# The op.


def _fail(argument: str, value, rule: str, op: str = "w4a16::gemm"):
    raise ValueError(f"{op}: {argument} {value}; {rule}")


def _check_arguments(a, packed, scales, zeros, bias, k_permutation, group_size, float_zeros=False):
    """The op's rules on its tensors; returns (n, k).

    Shared by the CUDA implementation and the fake one, so `torch.compile` reports a mistake
    while it traces, with the same message. The rules the runner checks itself (n % 16, k % 64,
    the supported group sizes, 16-byte alignment, a finite alpha) come back from it as ValueErrors
    with its message; this function only checks what the op needs to read the shapes: n is
    scales' second dimension, k is a's last.
    """
    if a.dtype not in _DTYPE_NAMES:
        _fail("a", f"has dtype {a.dtype}", "expected torch.float16 or torch.bfloat16")
    if a.device.type != "cuda":
        _fail("a", f"is on {a.device}", "expected a CUDA tensor")
    if a.dim() < 1:
        _fail("a", "is a 0-d tensor", "expected [..., k]")
    k = a.shape[-1]
    if k == 0:
        _fail("a", f"has shape {list(a.shape)}", "expected a positive last dimension k")
    if group_size <= 0 or k % group_size != 0:
        _fail("group_size", f"is {group_size}", f"expected a positive divisor of k = {k} (a's last dimension)")
    if scales.dim() != 2 or scales.shape[0] != k // group_size:
        _fail("scales", f"has shape {list(scales.shape)}",
              f"expected [k / group_size, n] = [{k // group_size}, n] (k = {k}, group_size = {group_size})")
    n = scales.shape[1]
    if packed.dtype != torch.uint8:
        _fail("packed", f"has dtype {packed.dtype}", "expected torch.uint8 (w4a16.pack's output)")
    if packed.numel() != n * k // 2:
        _fail("packed", f"has {packed.numel()} bytes", f"expected n * k / 2 = {n * k // 2} (n = {n}, k = {k})")
    tensors = [("a", a), ("packed", packed), ("scales", scales)]
    for name, tensor in (("zeros", zeros), ("bias", bias)):
        if tensor is None:
            continue
        expected = [k // group_size, n] if name == "zeros" else [n]
        if list(tensor.shape) != expected:
            _fail(name, f"has shape {list(tensor.shape)}", f"expected {expected} (n = {n}, k = {k})")
        tensors.append((name, tensor))
    # The runner refuses this too, but only at launch: said here, torch.compile reports it while
    # it traces.
    if float_zeros and zeros is None:
        _fail("float_zeros", "is True without zeros", "float_zeros describes the zero points: pass zeros, or leave it "
              "False")
    for name, tensor in (("scales", scales), ("zeros", zeros), ("bias", bias)):
        if tensor is not None and tensor.dtype != a.dtype:
            _fail(name, f"has dtype {tensor.dtype}", f"expected a's dtype {a.dtype}")
    if k_permutation is not None:
        if k_permutation.dtype != torch.int32:
            _fail("k_permutation", f"has dtype {k_permutation.dtype}", "expected torch.int32")
        if list(k_permutation.shape) != [k]:
            _fail("k_permutation", f"has shape {list(k_permutation.shape)}", f"expected [k] = [{k}]")
        tensors.append(("k_permutation", k_permutation))
    for name, tensor in tensors:
        if tensor.device != a.device:
            _fail(name, f"is on {tensor.device}", f"expected a's device {a.device} (all on one device)")
        if not tensor.is_contiguous():
            _fail(name, f"has strides {list(tensor.stride())} for shape {list(tensor.shape)}",
                  "expected a contiguous tensor")
    return n, k


def _pointer(tensor: Optional[torch.Tensor]) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _gemm(
    a: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    k_permutation: Optional[torch.Tensor] = None,
    group_size: int = 128,
    alpha: float = 1.0,
    float_zeros: bool = False,
) -> torch.Tensor:
    """alpha * a @ dequant(W).T (+ bias) for a [..., k] in fp16 or bf16; returns [..., n].

    packed: uint8, n * k / 2 bytes (w4a16.pack); scales and zeros: [k / group_size, n] in a's
    dtype (zeros None: symmetric, z = 8); bias: [n] or None; k_permutation: int32 [k] or None
    (act-order: packed column j multiplies a's column k_permutation[j]). All contiguous, on one
    CUDA device. float_zeros: the zero points may be fractional (the float-zeros format); leave it
    False for whole-number ones 0..15 (GPTQ, AWQ, w4a16.quantize), which cost nothing to apply,
    and set it only with zeros.
    """
    n, k = _check_arguments(a, packed, scales, zeros, bias, k_permutation, group_size, float_zeros)
    out = a.new_empty((*a.shape[:-1], n))
    m = math.prod(a.shape[:-1])
    if m == 0:
        return out  # an empty batch: nothing to launch (the runner takes m >= 1)
    index = a.device.index
    if torch.cuda.current_device() != index:
        with torch.cuda.device(index):
            return _launch(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha, float_zeros)
    return _launch(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha, float_zeros)


# The op. W4A16Linear.forward calls _gemm itself where the dispatcher has nothing to add (eager, or
# eager code captured into a CUDA graph; a plain tensor that needs no gradient): the dispatcher's
# custom-op path costs tens of microseconds per call in eager mode, several times the kernel at
# decode (bench/op_overhead.py). Everything else goes through the op: torch.compile (which
# traces its fake implementation), tensor subclasses and dispatch modes (FakeTensorMode, DTensor,
# FlopCounter), and inputs that require grad, for which the op raises (it has no autograd
# formula) instead of silently returning an output without a gradient.
gemm = torch.library.custom_op("w4a16::gemm", mutates_args=())(_gemm)


def _runner_arguments(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha):
    """The leading arguments of Runner.workspace_bytes / gemm / profile, in their order."""
    return (a.data_ptr(), packed.data_ptr(), scales.data_ptr(), _pointer(zeros), _pointer(bias), out.data_ptr(),
            _pointer(k_permutation), m, n, k, group_size, alpha, _DTYPE_NAMES[a.dtype])


def _launch(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha, float_zeros):
    r = runner(a.device.index)
    arguments = _runner_arguments(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha)
    # The config is resolved once, so that the workspace fits it even if another thread's
    # profile() or load_tuning() changes the default between the two calls below.
    config = r.default_config(m, n, k, group_size, _DTYPE_NAMES[a.dtype], zeros is not None, float_zeros)
    # The workspace comes from the caching allocator on the current stream, so it is reused only
    # after this call's kernels in stream order (and lives in the graph's pool under capture).
    workspace_bytes = r.workspace_bytes(*arguments, config=config, float_zeros=float_zeros)
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=a.device) if workspace_bytes else None
    r.gemm(*arguments, _pointer(workspace), workspace_bytes, _raw_stream(a.device.index), config=config,
           float_zeros=float_zeros)
    return out


@gemm.register_fake
def _(a, packed, scales, zeros=None, bias=None, k_permutation=None, group_size=128, alpha=1.0, float_zeros=False):
    n, _ = _check_arguments(a, packed, scales, zeros, bias, k_permutation, group_size, float_zeros)
    return a.new_empty((*a.shape[:-1], n))


# ---------------------------------------------------------------------------------------------
# The grouped (mixture-of-experts) op.

_MOE_OP = "w4a16::moe_gemm"


def _check_moe_arguments(a, packed, scales, expert_offsets, zeros, bias, row_weights, group_size, float_zeros=False):
    """The rules of w4a16::moe_gemm on its tensors; returns (experts, rows, n, k).

    As _check_arguments for the dense op: shared by the CUDA implementation and the fake one, and
    only what the op needs to read the shapes (the runner's own rules, n % 16, k % 64, the group
    sizes, alignment, come back from it as ValueErrors). scales is the shape reference: experts
    is its first dimension and n its last; k is a's second.
    """

    def fail(argument, value, rule):
        _fail(argument, value, rule, op=_MOE_OP)

    if a.dtype not in _DTYPE_NAMES:
        fail("a", f"has dtype {a.dtype}", "expected torch.float16 or torch.bfloat16")
    if a.device.type != "cuda":
        fail("a", f"is on {a.device}", "expected a CUDA tensor")
    # 2-D only, unlike the dense op: the rows are positions of a routing (sorted by expert), not a
    # batch whose leading dimensions could be flattened.
    if a.dim() != 2:
        fail("a", f"has shape {list(a.shape)}", "expected [rows, k] (the routed rows, sorted by expert)")
    rows, k = a.shape
    if k == 0:
        fail("a", f"has shape {list(a.shape)}", "expected a positive k (a's second dimension)")
    if group_size <= 0 or k % group_size != 0:
        fail("group_size", f"is {group_size}", f"expected a positive divisor of k = {k} (a's second dimension)")
    if scales.dim() != 3 or scales.shape[1] != k // group_size:
        fail("scales", f"has shape {list(scales.shape)}",
             f"expected [experts, k / group_size, n] = [experts, {k // group_size}, n] (k = {k}, "
             f"group_size = {group_size})")
    experts, _, n = scales.shape
    if experts == 0:
        fail("scales", f"has shape {list(scales.shape)}", "expected at least one expert")
    if packed.dtype != torch.uint8:
        fail("packed", f"has dtype {packed.dtype}", "expected torch.uint8 (w4a16.pack's output of each expert)")
    # The layout of W4A16Linear.packed, one per expert, stacked: torch.stack of the experts' layers'
    # buffers is the argument. Contiguous, that is the runner's [experts][n * k / 2] bytes.
    if list(packed.shape) != [experts, n, k // 2]:
        fail("packed", f"has shape {list(packed.shape)}",
             f"expected [experts, n, k / 2] = [{experts}, {n}, {k // 2}] (experts = {experts} and n = {n} from "
             f"scales, k = {k} from a)")
    if expert_offsets.dtype != torch.int32:
        fail("expert_offsets", f"has dtype {expert_offsets.dtype}", "expected torch.int32")
    if list(expert_offsets.shape) != [experts + 1]:
        fail("expert_offsets", f"has shape {list(expert_offsets.shape)}",
             f"expected [experts + 1] = [{experts + 1}] (experts = {experts} from scales)")
    tensors = [("a", a), ("packed", packed), ("scales", scales), ("expert_offsets", expert_offsets)]
    for name, tensor, expected in (("zeros", zeros, [experts, k // group_size, n]), ("bias", bias, [experts, n])):
        if tensor is None:
            continue
        if list(tensor.shape) != expected:
            fail(name, f"has shape {list(tensor.shape)}", f"expected {expected} (experts = {experts}, n = {n}, k = {k})")
        tensors.append((name, tensor))
    if float_zeros and zeros is None:
        fail("float_zeros", "is True without zeros", "float_zeros describes the zero points: pass zeros, or leave it "
             "False")
    for name, tensor in (("scales", scales), ("zeros", zeros), ("bias", bias)):
        if tensor is not None and tensor.dtype != a.dtype:
            fail(name, f"has dtype {tensor.dtype}", f"expected a's dtype {a.dtype}")
    if row_weights is not None:
        # fp32 whatever a's type: routing weights are probabilities, and the epilogue multiplies in
        # fp32 anyway.
        if row_weights.dtype != torch.float32:
            fail("row_weights", f"has dtype {row_weights.dtype}", "expected torch.float32")
        if list(row_weights.shape) != [rows]:
            fail("row_weights", f"has shape {list(row_weights.shape)}", f"expected [rows] = [{rows}] (a's rows)")
        tensors.append(("row_weights", row_weights))
    for name, tensor in tensors:
        if tensor.device != a.device:
            fail(name, f"is on {tensor.device}", f"expected a's device {a.device} (all on one device)")
        if not tensor.is_contiguous():
            fail(name, f"has strides {list(tensor.stride())} for shape {list(tensor.shape)}",
                 "expected a contiguous tensor")
    return experts, rows, n, k


def _moe_gemm(
    a: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    expert_offsets: torch.Tensor,
    zeros: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    row_weights: Optional[torch.Tensor] = None,
    group_size: int = 128,
    alpha: float = 1.0,
    float_zeros: bool = False,
) -> torch.Tensor:
    """The grouped (mixture-of-experts) GEMM: every expert in one launch. Returns [rows, n].

    a: [rows, k] in fp16 or bf16, its rows sorted by expert: expert e owns rows
    [expert_offsets[e], expert_offsets[e + 1]) of a and of the output, and
        out[r] = row_weights[r] * (alpha * a[r] @ dequant(W_e).T + bias[e])
    (without row_weights the factor is 1, without bias the term 0).

    packed: uint8 [experts, n, k / 2], each expert's w4a16.pack output (a W4A16Linear's `packed`
    buffer), stacked; scales and zeros: [experts, k / group_size, n] in a's dtype (zeros None:
    symmetric, z = 8); bias: [experts, n] in a's dtype or None; expert_offsets: int32
    [experts + 1], nondecreasing from 0 to at most rows; row_weights: float32 [rows] or None (the
    routing weights, so that the combine is a plain sum). All contiguous, on a's CUDA device;
    experts is scales' first dimension. float_zeros as in w4a16::gemm (fractional zero points).

    The offsets and row weights are read on the device only: nothing synchronizes, routing
    computed on the GPU feeds the op directly, and a CUDA graph replays it with new routing
    written into the same tensors. Rows from expert_offsets[experts] on are not written (their
    values are whatever the allocation held): size a to the routing (tokens * top_k rows) to have
    none. Offsets that break the rules give wrong rows but no access outside a and the output.
    Experts without rows cost nothing (their weights are not read).
    """
    experts, rows, n, k = _check_moe_arguments(a, packed, scales, expert_offsets, zeros, bias, row_weights, group_size,
                                               float_zeros)
    out = a.new_empty((rows, n))
    if rows == 0:
        return out  # no routed rows: nothing to launch
    index = a.device.index
    if torch.cuda.current_device() != index:
        with torch.cuda.device(index):
            return _launch_moe(a, packed, scales, expert_offsets, zeros, bias, row_weights, out, experts, rows, n, k,
                               group_size, alpha, float_zeros)
    return _launch_moe(a, packed, scales, expert_offsets, zeros, bias, row_weights, out, experts, rows, n, k,
                       group_size, alpha, float_zeros)


def _launch_moe(a, packed, scales, expert_offsets, zeros, bias, row_weights, out, experts, rows, n, k, group_size,
                alpha, float_zeros):
    # No config and no workspace to size: the runner picks the grouped tile from rows and experts
    # (the host sees no more of the routing), and the grouped kernels need no scratch.
    runner(a.device.index).grouped_gemm(
        a.data_ptr(), packed.data_ptr(), scales.data_ptr(), _pointer(zeros), _pointer(bias), out.data_ptr(),
        expert_offsets.data_ptr(), _pointer(row_weights), experts, rows, n, k, group_size, alpha,
        _DTYPE_NAMES[a.dtype], _raw_stream(a.device.index), float_zeros=float_zeros)
    return out


# Always through the dispatcher (no direct path as W4A16Linear has for the dense op): a MoE layer
# makes one call for all its experts, so the dispatcher's cost is paid once per layer, not per
# expert.
moe_gemm = torch.library.custom_op(_MOE_OP, mutates_args=())(_moe_gemm)


@moe_gemm.register_fake
def _(a, packed, scales, expert_offsets, zeros=None, bias=None, row_weights=None, group_size=128, alpha=1.0,
      float_zeros=False):
    _, rows, n, _ = _check_moe_arguments(a, packed, scales, expert_offsets, zeros, bias, row_weights, group_size,
                                         float_zeros)
    return a.new_empty((rows, n))


# ---------------------------------------------------------------------------------------------
# Tuning.


def profile(a, packed, scales, zeros=None, bias=None, k_permutation=None, group_size=128, alpha=1.0,
            iterations=20, repeats=5, float_zeros=False) -> dict:
    """Times every config on these arguments (a: [m, k]) and makes the fastest the default of this
    device's runner for the problem's m bucket (m up to the next power of two), n, k, group and
    format (float_zeros as in the op: 'fp16+float-zeros' is a format of its own, tuned apart from
    'fp16+zeros'). Synchronizes; not for the hot path, nor under capture. Returns {'best',
    'best_us', 'timings': {config: us}, 'skipped': {config: why}}."""
    n, k = _check_arguments(a, packed, scales, zeros, bias, k_permutation, group_size, float_zeros)
    m = math.prod(a.shape[:-1])
    out = a.new_empty((*a.shape[:-1], n))
    with torch.cuda.device(a.device):
        r = runner(a.device)
        arguments = _runner_arguments(a, packed, scales, zeros, bias, k_permutation, out, m, n, k, group_size, alpha)
        # Room for every config: profile() skips the configs whose workspace does not fit.
        workspace_bytes = max(r.workspace_bytes(*arguments, config=name, float_zeros=float_zeros)
                              for name in r.configs())
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=a.device)
        return r.profile(*arguments, _pointer(workspace), workspace_bytes, _raw_stream(a.device.index),
                         iterations=iterations, repeats=repeats, float_zeros=float_zeros)


def save_tuning(path) -> None:
    """Writes the current device's profiled defaults as JSON (keyed by device name, SM count and
    library version; entries by m bucket, n, k, group and format)."""
    runner().save_tuning(os.fspath(path))


def load_tuning(path) -> None:
    """Reads save_tuning's file into the current device's runner; ValueError for another device's
    or library version's file."""
    runner().load_tuning(os.fspath(path))


# ---------------------------------------------------------------------------------------------
# The layer.


def _from_bits(bits: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint16 bit patterns (the extension's 16-bit arrays) -> a CPU tensor of dtype."""
    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(dtype)


def _fractional_zero(zeros: torch.Tensor) -> Optional[str]:
    """Where a zero point is not a whole number in [0, 15] (NaN and infinities included): 'zero
    point [group, channel] is VALUE' for the first one, or None when all are. The float-zeros
    rule of include/w4a16/quantize.h's check_integer_zeros, on a tensor of either 16-bit type on
    any device (one synchronization on a GPU: for when a layer is made, never for forward)."""
    if zeros.device.type == "meta":
        return None  # no values to check (a layer being laid out, not loaded)
    z = zeros.detach().float()  # fp16 and bf16 convert exactly
    fractional = ~((z >= 0) & (z <= 15) & (z == torch.round(z)))
    if not bool(fractional.any()):
        return None
    where = fractional.nonzero()[0].tolist()
    return f"zero point {where} is {z[tuple(where)].item():g}"


# What the integrality errors suggest: the flag, and why it is not the default.
_FLOAT_ZEROS_ADVICE = ("fractional (HQQ-style) zero points need float_zeros=True: without it the kernels take zero "
                       "points as the whole numbers 0..15 that GPTQ, AWQ, compressed-tensors and w4a16.quantize make, "
                       "and would round this one")


def dequantize(packed, scales, zeros=None, k_permutation=None, group_size=128) -> torch.Tensor:
    """The float64 [n, k] weight the op multiplies by, in a's column order: dequant(W)[i, j] =
    s * (q - z), with an act-order layer's permutation undone (the column of a that packed column
    j multiplies is k_permutation[j]). z is taken as stored: what the op uses with float_zeros,
    and without it for the whole-number zero points it then needs. Unpacks on the CPU
    (w4a16.unpack); for tests and checks."""
    n = scales.shape[1]
    k = packed.numel() * 2 // n
    codes = torch.from_numpy(_w4a16.unpack(packed.detach().cpu().contiguous().view(-1).numpy(), n, k))
    s = scales.detach().cpu().double().repeat_interleave(group_size, dim=0).T
    z = 8.0 if zeros is None else zeros.detach().cpu().double().repeat_interleave(group_size, dim=0).T
    w = s * (codes.double() - z)
    if k_permutation is not None:
        w_in_a_order = torch.empty_like(w)
        w_in_a_order[:, k_permutation.detach().cpu().long()] = w
        w = w_in_a_order
    return w.to(scales.device)


class W4A16Linear(torch.nn.Module):
    """An inference nn.Linear with 4-bit weights: y = x @ dequant(W).T (+ bias), through the op.

    Buffers (all in the state_dict; the optional ones are None, and absent from it, when unused):
      packed         uint8 [out_features, in_features / 2]  w4a16.pack's output
      scales         [in_features / group_size, out_features]  in the layer's dtype (fp16 or bf16)
      zeros          like scales, or None (symmetric: z = 8)
      bias           [out_features] in the layer's dtype, or None
      k_permutation  int32 [in_features], or None (act-order checkpoints)
    x must have the layer's dtype and live on its device.

    float_zeros (a flag, not a buffer): the zero points may be fractional (HQQ-style); the layer
    runs them with the op's float_zeros. Without it they must be whole numbers 0..15, which the
    kernels apply for free. That is checked once, when zero points come in, never in forward:
    from_host_layer (and so from_checkpoint and shard) raises a ValueError, load_state_dict its
    RuntimeError, each naming the first zero point that is not one. The state_dict carries the
    flag as it carries the optional buffers: a True scalar 'float_zeros' only where it is set, so a
    layer loads only the state of a layer of its own kind.

    Build one with `from_linear` (quantizes an nn.Linear's weight) or `from_checkpoint` (one layer of
    a w4a16 container, `w4a16 import`'s output); the constructor alone makes a layer of the given
    shape to `load_state_dict` into (its weights are uninitialized until then).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, group_size: int = 128,
                 zeros: bool = False, act_order: bool = False, dtype: torch.dtype = torch.float16, device=None,
                 float_zeros: bool = False):
        super().__init__()
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"W4A16Linear: dtype {dtype} not supported; use torch.float16 or torch.bfloat16")
        if float_zeros and not zeros:
            raise ValueError("W4A16Linear: float_zeros=True needs zeros=True (it describes the zero points)")
        if group_size <= 0 or in_features % group_size != 0:
            raise ValueError(f"W4A16Linear: group_size {group_size} must divide in_features = {in_features}")
        if group_size not in (32, 64, 128, in_features):
            raise ValueError(f"W4A16Linear: group_size {group_size}; the kernels take 32, 64, 128 or in_features "
                             f"({in_features})")
        # The packed layout's tiles (include/w4a16/runner.h): said here rather than at the first call.
        if out_features % 16 != 0 or in_features % 64 != 0:
            raise ValueError(f"W4A16Linear: out_features {out_features} must be a multiple of 16 and in_features "
                             f"{in_features} of 64")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        # A Python bool, so that forward passes it to the op without reading a tensor.
        self.float_zeros = bool(float_zeros)
        groups = in_features // group_size
        self.register_buffer("packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.empty(groups, out_features, dtype=dtype, device=device) if zeros else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        # The identity, not uninitialized memory: the kernels read a's columns at these indices.
        self.register_buffer("k_permutation",
                             torch.arange(in_features, dtype=torch.int32, device=device) if act_order else None)

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The flag is no buffer (forward reads it as a bool), so it is written here; like an
        # optional buffer it is there only when set, and states of integer-zero layers stay as
        # they were.
        if self.float_zeros:
            destination[prefix + "float_zeros"] = torch.ones((), dtype=torch.bool)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # load_state_dict would cast 16-bit values to this layer's type: bf16 scales into an fp16
        # layer, re-rounded without a word. A layer takes state of its own type only.
        for name in ("scales", "zeros", "bias"):
            mine, key = getattr(self, name), prefix + name
            if mine is not None and key in state_dict and state_dict[key].dtype != mine.dtype:
                error_msgs.append(f"{key}: the state holds {state_dict[key].dtype}, this layer {mine.dtype} "
                                  f"(make the layer with dtype={state_dict[key].dtype})")
        # The float_zeros flag. A float-zeros state into an integer-zeros layer would have its
        # fractional zero points rounded by the kernels: refused whatever `strict` says, as a
        # type mismatch is. The other way round is a missing key, as a missing buffer is.
        flag, zeros_key = prefix + "float_zeros", prefix + "zeros"
        if flag in state_dict and not self.float_zeros:
            error_msgs.append(f"{flag}: the state's zero points may be fractional, this layer takes whole numbers "
                              "(make the layer with float_zeros=True)")
        elif flag not in state_dict and self.float_zeros:
            missing_keys.append(flag)
        elif (not self.float_zeros and self.zeros is not None and zeros_key in state_dict
              and state_dict[zeros_key].dtype == self.zeros.dtype):
            # A state without the flag: its zero points must be whole numbers, checked once here.
            found = _fractional_zero(state_dict[zeros_key])
            if found is not None:
                error_msgs.append(f"{zeros_key}: {found}, not a whole number in [0, 15]; {_FLOAT_ZEROS_ADVICE} (make "
                                  "the layer with float_zeros=True)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if flag in unexpected_keys:
            unexpected_keys.remove(flag)  # handled above (the base class knows only buffers): said once

    def _apply(self, fn, recurse=True):
        # Module.to / .cuda / .half / .bfloat16 / .float all come through here. Device moves and
        # conversions between the two 16-bit types apply (a cast between fp16 and bf16 re-rounds
        # the scales: the layer then runs in that type); a cast to another floating type would
        # leave a layer the kernels cannot run, so this layer's buffers keep their 16-bit type,
        # the way quantized layers stay quantized when the rest of a model is cast.
        def keep_16_bit(tensor):
            converted = fn(tensor)
            if converted.is_floating_point() and converted.dtype not in _DTYPE_NAMES:
                return converted.to(tensor.dtype)
            return converted

        return super()._apply(keep_16_bit, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear takes any strides; the op takes contiguous input (a no-op when it already is).
        direct = (not torch.compiler.is_compiling() and type(x) is torch.Tensor
                  and not (x.requires_grad and torch.is_grad_enabled()))
        op = _gemm if direct else torch.ops.w4a16.gemm
        return op(x.contiguous(), self.packed, self.scales, self.zeros, self.bias, self.k_permutation, self.group_size,
                  1.0, self.float_zeros)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"dtype={_DTYPE_NAMES.get(self.dtype, self.dtype)}, zeros={self.zeros is not None}, "
                f"float_zeros={self.float_zeros}, bias={self.bias is not None}, "
                f"act_order={self.k_permutation is not None}")

    def dequantized_weight(self) -> torch.Tensor:
        """The float64 [out_features, in_features] weight this layer multiplies x by (see dequantize)."""
        return dequantize(self.packed, self.scales, self.zeros, self.k_permutation, self.group_size)

    def profile(self, m: int, iterations: int = 20, repeats: int = 5) -> dict:
        """Tunes this layer's shape at m rows (see w4a16.torch.profile) on random activations."""
        x = torch.empty(m, self.in_features, dtype=self.dtype, device=self.scales.device).uniform_(-1, 1)
        return profile(x, self.packed, self.scales, self.zeros, self.bias, self.k_permutation, self.group_size,
                       1.0, iterations=iterations, repeats=repeats, float_zeros=self.float_zeros)

    @classmethod
    def _from_host(cls, n, k, group_size, dtype, packed, scale_bits, zero_bits, k_permutation, bias, device,
                   float_zeros=False):
        """A layer from host arrays (NumPy, as the extension returns them), placed on `device`.
        Without float_zeros the zero points must be whole numbers 0..15: checked here, on the host,
        before anything is placed (ValueError)."""
        zeros = None if zero_bits is None else _from_bits(zero_bits, dtype)
        if zeros is not None and not float_zeros:
            found = _fractional_zero(zeros)
            if found is not None:
                raise ValueError(f"W4A16Linear: {found}, not a whole number in [0, 15]; {_FLOAT_ZEROS_ADVICE} "
                                 "(W4A16Linear.from_host_layer(layer, float_zeros=True), or the host layer's "
                                 "float_zeros=True)")
        layer = cls(k, n, bias=bias is not None, group_size=group_size, zeros=zeros is not None,
                    act_order=k_permutation is not None, dtype=dtype, device=device, float_zeros=float_zeros)
        with torch.no_grad():
            layer.packed.copy_(torch.from_numpy(np.ascontiguousarray(packed)).view(n, k // 2))
            layer.scales.copy_(_from_bits(scale_bits, dtype))
            if zeros is not None:
                layer.zeros.copy_(zeros)
            if k_permutation is not None:
                layer.k_permutation.copy_(torch.from_numpy(np.ascontiguousarray(k_permutation, dtype=np.int32)))
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_host_layer(cls, layer, device=None, float_zeros: Optional[bool] = None) -> "W4A16Linear":
        """A layer from host arrays: a w4a16.sharding.HostLayer (packed here), a PackedHostLayer
        (sharding.pack_layer) or a w4a16.PackedLayer (load_packed_layer), e.g. one rank's shard.
        float_zeros: None takes the host layer's own flag. Without it, ValueError unless every
        zero point is a whole number in [0, 15]."""
        if isinstance(layer, _sharding.HostLayer):
            layer = _sharding.pack_layer(layer)
        if float_zeros is None:
            float_zeros = getattr(layer, "float_zeros", False)
        dtype = _DTYPES[layer.dtype]
        bias = None if layer.bias_bits is None else _from_bits(layer.bias_bits, dtype)
        return cls._from_host(layer.n, layer.k, layer.group_size, dtype, layer.packed, layer.scale_bits,
                              layer.zero_bits, layer.k_permutation, bias, device, float_zeros=float_zeros)

    def to_host_layer(self) -> "_sharding.HostLayer":
        """This layer's buffers as a w4a16.sharding.HostLayer (copied to the host, codes unpacked)."""

        def bits(tensor):
            return None if tensor is None else tensor.detach().cpu().contiguous().view(torch.int16).numpy().view(
                np.uint16)

        permutation = None if self.k_permutation is None else self.k_permutation.detach().cpu().numpy()
        return _sharding.HostLayer.from_packed(self.packed.detach().cpu().numpy(), self.out_features,
                                               self.in_features, bits(self.scales), bits(self.zeros), permutation,
                                               self.group_size, _DTYPE_NAMES[self.dtype], bits(self.bias),
                                               self.float_zeros)

    def shard(self, world_size: int, rank: int, mode: str = "column", device=None) -> "W4A16Linear":
        """Rank `rank`'s tensor-parallel shard of this layer, on `device` (default: this layer's).

        mode 'column': output features [rank * n / world_size, ...) (w4a16.sharding.shard_columns;
        the input is the whole x). mode 'row': input features [rank * k / world_size, ...) of x in
        its original order, giving a partial output to all-reduce; the bias stays on rank 0
        (shard_rows). An act-order layer splits row-wise only after fold_permutation (on host
        layers: to_host_layer, fold, shard, from_host_layer). ValueError for shapes that do not split."""
        split = {"column": _sharding.shard_columns, "row": _sharding.shard_rows}.get(mode)
        if split is None:
            raise ValueError(f"W4A16Linear.shard: mode '{mode}'; expected 'column' or 'row'")
        target = self.scales.device if device is None else device
        return type(self).from_host_layer(split(self.to_host_layer(), world_size, rank), device=target)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group_size: int = 128, zeros: bool = False) -> "W4A16Linear":
        """Quantizes `linear`'s weight (round to nearest per group of `group_size` input columns,
        symmetric or with zero points: w4a16.quantize) and packs it, on the CPU; the layer runs in
        the weight's dtype (fp16 or bf16) on the weight's device, and keeps the bias. quantize's
        zero points are whole numbers, so the layer is not float_zeros."""
        weight = linear.weight.detach()
        if weight.dtype not in _DTYPE_NAMES:
            raise ValueError(f"W4A16Linear.from_linear: the weight's dtype is {weight.dtype}; the layer runs in its "
                             "weight's dtype, which must be torch.float16 or torch.bfloat16 (convert the linear first)")
        n, k = weight.shape
        # fp16 and bf16 convert to float32 exactly, so this quantizes the stored weights themselves.
        quantized = _w4a16.quantize(weight.cpu().float().contiguous().numpy(), group_size=group_size,
                                    dtype=_DTYPE_NAMES[weight.dtype], zeros=zeros)
        bias = None if linear.bias is None else linear.bias.detach().to(weight.dtype)
        return cls._from_host(n, k, group_size, weight.dtype, _w4a16.pack(quantized.codes), quantized.scale_bits,
                              quantized.zero_bits, None, bias, weight.device)

    @classmethod
    def from_checkpoint(cls, path, layer_name: str, device=None) -> "W4A16Linear":
        """One layer of a w4a16 container (`w4a16 import` / `w4a16.import_checkpoint` output), e.g.
        layer_name 'model.layers.0.mlp.up_proj' (a trailing '.' is optional): its packed weights,
        scales, zero points, act-order permutation and the checkpoint's bias where present.
        `device` as in nn.Linear (None: the CPU). Every importer writes whole-number zero points, so
        such a layer is not float_zeros; a container with fractional ones (written by other means)
        gives a float_zeros layer, as load_packed_layer marks it."""
        prefix = layer_name if layer_name.endswith(".") else layer_name + "."
        layer = _w4a16.load_packed_layer(os.fspath(path), prefix)
        dtype = _DTYPES[layer.dtype]
        bias_bits = layer.bias_bits
        bias = None if bias_bits is None else _from_bits(bias_bits, dtype)
        return cls._from_host(layer.n, layer.k, layer.group_size, dtype, layer.packed, layer.scale_bits,
                              layer.zero_bits, layer.k_permutation, bias, device, float_zeros=layer.float_zeros)
