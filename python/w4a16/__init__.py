"""w4a16: 16-bit activations x INT4 weights GEMM, from Python.

The extension `_w4a16` binds the C++ library: its host side on NumPy arrays (quantize, pack,
unpack, the float64 CPU reference, checkpoint import, load_packed_layer, check_integer_zeros:
whether zero points are the whole numbers 0..15 that run without float_zeros) and the GPU runner
(`Runner`) on raw device pointers and stream handles. 16-bit element arrays cross as uint16 bit
patterns (NumPy has no bfloat16); `to_bits` / `from_bits` convert.

`w4a16.sharding` splits a quantized layer's host arrays for tensor parallelism (column- and
row-parallel shards, act-order permutations folded into the producing layers); NumPy only.

PyTorch users want `w4a16.torch` (the op `torch.ops.w4a16.gemm` and `W4A16Linear`); it is imported
explicitly, so this package works without PyTorch installed.
"""

import numpy as np

from ._w4a16 import (  # noqa: F401  (re-exported)
    PackedLayer,
    QuantizedWeights,
    Runner,
    check_integer_zeros,
    element_bits,
    element_values,
    import_checkpoint,
    load_packed_layer,
    pack,
    quantize,
    reference_gemm,
    unpack,
)
from . import sharding  # noqa: E402,F401  (NumPy only)

__all__ = [
    "PackedLayer",
    "QuantizedWeights",
    "Runner",
    "check_integer_zeros",
    "element_bits",
    "element_values",
    "from_bits",
    "import_checkpoint",
    "load_packed_layer",
    "pack",
    "quantize",
    "reference_gemm",
    "sharding",
    "to_bits",
    "unpack",
]


def to_bits(values, dtype="fp16"):
    """float array -> uint16 bits of fp16 or bf16 (round to nearest even)."""
    return element_bits(np.ascontiguousarray(values, dtype=np.float32), dtype)


def from_bits(bits, dtype="fp16"):
    """uint16 bits of fp16 or bf16 -> float32 array."""
    return element_values(np.ascontiguousarray(bits, dtype=np.uint16), dtype)
