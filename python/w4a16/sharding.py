"""Tensor-parallel sharding of quantized layers, on host arrays (NumPy only: no PyTorch, no GPU).

Engines split each linear layer over the GPUs of a tensor-parallel group:

* column-parallel (q/k/v, gate/up): every rank sees the whole input x and computes a slice of
  the output features, `shard_columns` splits n. The outputs are concatenated (or, as in an MLP,
  consumed slice by slice by the next, row-parallel layer).
* row-parallel (o, down): rank r holds only its slice of the input features, x[:, slice_r] in
  the ORIGINAL feature order (the previous column-parallel layer's output slice), and computes a
  partial output; the partial outputs are summed (an all-reduce). `shard_rows` splits k.

A layer here is a `HostLayer`: codes [n, k] one per byte, scales (and zero points) [k / group, n]
as uint16 bits, an optional act-order permutation and bias. `w4a16.quantize` / `w4a16.unpack` /
`w4a16.load_packed_layer` give one (`HostLayer.from_quantized`, `from_packed`,
`from_packed_layer`); `pack_layer` gives what `W4A16Linear` and `torch.ops.w4a16.gemm` take.

Act-order (GPTQ desc_act): the packed columns are the input features sorted by group, and packed
column j multiplies x's column `k_permutation[j]`. Column-parallel shards keep the permutation
whole (every rank has all of x). A row-parallel shard only has x[:, slice_r], so its packed
columns must read inside that slice; a GPTQ permutation scatters every group over all of k and
does not. `fold_permutation` moves the consumer's permutation into the output-feature order of
the layers that produce its input (for a Llama MLP: down_proj's permutation into gate_proj's and
up_proj's output features; act(gate) * up is elementwise, so it keeps the order), after which
the consumer reads x in order and splits on any group boundary. `shard_rows` refuses a
permutation that crosses a rank's slice, with a ValueError that names the fold.

o_proj (fed by attention) is not folded here: its input features are heads x head_dim, and only a
permutation that keeps each head's channels together could be folded (into v_proj's output
features within a head, and whole heads into q/k/v's heads together, respecting GQA's sharing of
kv heads). A GPTQ permutation mixes heads, so shard_rows refuses an act-order o_proj shard; quantize
o_proj without act-order, or keep it unsharded, for tensor parallelism.
"""

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import _w4a16

__all__ = [
    "HostLayer",
    "PackedHostLayer",
    "fold_permutation",
    "pack_layer",
    "permutation_from_g_idx",
    "shard_columns",
    "shard_rows",
]

# The packed layout's tile: n in multiples of 16, k in multiples of 64 (include/w4a16/runner.h).
N_MULTIPLE = 16
K_MULTIPLE = 64
_GROUPS = (32, 64, 128)


def _array(value, dtype, name, shape):
    """value as a C-contiguous array of dtype and shape (a copy only where it is not one already)."""
    array = np.ascontiguousarray(value)
    if array.dtype != dtype:
        raise ValueError(f"HostLayer: {name} has dtype {array.dtype}; expected {np.dtype(dtype).name}")
    if array.shape != shape:
        raise ValueError(f"HostLayer: {name} has shape {list(array.shape)}; expected {list(shape)}")
    return array


@dataclass
class HostLayer:
    """One quantized linear layer as host arrays; w[i, j] = s * (q - z) in the packed k order.

    codes          uint8 [n, k], values in [0, 15]; column j is packed column j
    scale_bits     uint16 [k / group_size, n]: bits of dtype
    zero_bits      like scale_bits, or None (symmetric: z = 8)
    k_permutation  int32 [k], or None: packed column j multiplies x's column k_permutation[j]
    group_size     32, 64, 128 or k (per-channel)
    dtype          'fp16' or 'bf16': the scales' type, and the activations' the layer runs with
    bias_bits      uint16 [n] bits of dtype, or None
    float_zeros    the zero points may be fractional (HQQ-style; the float-zeros format, whose
                   kernels add a little work per group); False: whole numbers 0..15, as GPTQ, AWQ,
                   compressed-tensors and w4a16.quantize make them. Only with zero_bits. Not
                   checked here: W4A16Linear checks the values when it is made from the layer
    """

    codes: np.ndarray
    scale_bits: np.ndarray
    zero_bits: Optional[np.ndarray]
    k_permutation: Optional[np.ndarray]
    group_size: int
    dtype: str = "fp16"
    bias_bits: Optional[np.ndarray] = None
    float_zeros: bool = False

    def __post_init__(self):
        if self.dtype not in ("fp16", "bf16"):
            raise ValueError(f"HostLayer: dtype '{self.dtype}'; expected 'fp16' or 'bf16'")
        codes = np.ascontiguousarray(self.codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise ValueError(f"HostLayer: codes has dtype {codes.dtype} and shape {list(codes.shape)}; "
                             "expected uint8 [n, k]")
        n, k = codes.shape
        g = self.group_size
        if not (g in _GROUPS or g == k) or g <= 0 or k % g != 0:
            raise ValueError(f"HostLayer: group_size {g} with k = {k}; expected 32, 64, 128 or k, dividing k")
        if codes.size and codes.max() > 15:
            raise ValueError(f"HostLayer: codes reach {int(codes.max())}; expected values in [0, 15]")
        self.codes = codes
        self.scale_bits = _array(self.scale_bits, np.uint16, "scale_bits", (k // g, n))
        if self.zero_bits is not None:
            self.zero_bits = _array(self.zero_bits, np.uint16, "zero_bits", (k // g, n))
        self.float_zeros = bool(self.float_zeros)
        if self.float_zeros and self.zero_bits is None:
            raise ValueError("HostLayer: float_zeros is set without zero_bits (it describes the zero points)")
        if self.bias_bits is not None:
            self.bias_bits = _array(self.bias_bits, np.uint16, "bias_bits", (n,))
        if self.k_permutation is not None:
            p = np.ascontiguousarray(self.k_permutation)
            if p.shape != (k,) or not np.issubdtype(p.dtype, np.integer):
                raise ValueError(f"HostLayer: k_permutation has dtype {p.dtype} and shape {list(p.shape)}; "
                                 f"expected integers [k] = [{k}]")
            if not np.array_equal(np.sort(p), np.arange(k)):
                raise ValueError(f"HostLayer: k_permutation is not a permutation of [0, {k})")
            self.k_permutation = p.astype(np.int32, copy=False)

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1]

    @property
    def has_zeros(self) -> bool:
        return self.zero_bits is not None

    # -- conversions --------------------------------------------------------------------------

    @classmethod
    def from_quantized(cls, q, k_permutation=None, bias_bits=None) -> "HostLayer":
        """From w4a16.quantize's QuantizedWeights (its codes are in the packed order: quantize
        w[:, k_permutation] for an act-order layer, so that groups are contiguous)."""
        return cls(q.codes, q.scale_bits, q.zero_bits, k_permutation, q.group_size, q.dtype, bias_bits, q.float_zeros)

    @classmethod
    def from_packed(cls, packed, n, k, scale_bits, zero_bits=None, k_permutation=None, group_size=128,
                    dtype="fp16", bias_bits=None, float_zeros=False) -> "HostLayer":
        """From packed weights (w4a16.pack's n * k / 2 bytes, any shape) and the layer's arrays."""
        codes = _w4a16.unpack(np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1), n, k)
        return cls(codes, scale_bits, zero_bits, k_permutation, group_size, dtype, bias_bits, float_zeros)

    @classmethod
    def from_packed_layer(cls, layer) -> "HostLayer":
        """From w4a16.load_packed_layer's PackedLayer (one layer of a container) or a PackedHostLayer."""
        return cls.from_packed(layer.packed, layer.n, layer.k, layer.scale_bits, layer.zero_bits, layer.k_permutation,
                               layer.group_size, layer.dtype, layer.bias_bits, layer.float_zeros)

    def to_quantized(self):
        """The codes, scales and zero points as a w4a16.QuantizedWeights (for reference_gemm,
        dequantized(); the permutation and bias are not part of it)."""
        return _w4a16.QuantizedWeights(self.codes, self.scale_bits, self.zero_bits, self.group_size, self.dtype,
                                       float_zeros=self.float_zeros)

    def reference_gemm(self, a_bits, alpha: float = 1.0) -> np.ndarray:
        """float64 x @ dequant(W).T (+ bias) for x [m, k] as uint16 bits of dtype, x in its own
        (original) column order: w4a16.reference_gemm on x[:, k_permutation]."""
        a_bits = np.ascontiguousarray(a_bits, dtype=np.uint16)
        if self.k_permutation is not None:
            a_bits = np.ascontiguousarray(a_bits[:, self.k_permutation])
        return _w4a16.reference_gemm(a_bits, self.to_quantized(), self.bias_bits, alpha)


@dataclass
class PackedHostLayer:
    """What W4A16Linear and torch.ops.w4a16.gemm take, on the host: the attributes of
    w4a16.load_packed_layer's PackedLayer (so code for one takes the other).

    packed uint8 [n, k / 2] (w4a16.pack's bytes), scale_bits / zero_bits uint16 [k / group_size, n],
    k_permutation int32 [k] or None, bias_bits uint16 [n] or None, float_zeros as in HostLayer.
    """

    n: int
    k: int
    group_size: int
    dtype: str
    packed: np.ndarray
    scale_bits: np.ndarray
    zero_bits: Optional[np.ndarray]
    k_permutation: Optional[np.ndarray]
    bias_bits: Optional[np.ndarray]
    float_zeros: bool = False

    @property
    def has_zeros(self) -> bool:
        return self.zero_bits is not None


def pack_layer(layer: HostLayer) -> PackedHostLayer:
    """Packs a layer's codes (w4a16.pack: ValueError unless n % 16 == 0 and k % 64 == 0)."""
    packed = _w4a16.pack(layer.codes).reshape(layer.n, layer.k // 2)
    return PackedHostLayer(layer.n, layer.k, layer.group_size, layer.dtype, packed, layer.scale_bits, layer.zero_bits,
                           layer.k_permutation, layer.bias_bits, layer.float_zeros)


# -- sharding ----------------------------------------------------------------------------------


def _check_rank(function: str, world_size: int, rank: int) -> None:
    if not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"{function}: world_size {world_size}; expected a positive integer")
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"{function}: rank {rank}; expected 0 <= rank < world_size = {world_size}")


def _copy(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
    # Shards own contiguous copies: a view would keep the whole unsharded array alive and, for a
    # column slice, would not be contiguous (pack and the bindings need C order).
    return None if array is None else np.ascontiguousarray(array).copy()


def shard_columns(layer: HostLayer, world_size: int, rank: int) -> HostLayer:
    """Rank `rank`'s column-parallel shard: output features [rank * n / world_size, (rank + 1) *
    n / world_size), with their scales, zero points and bias (shards keep the layer's
    float_zeros, as shard_rows' do: the format is the layer's, whatever one slice holds). The
    k_permutation is kept whole: a column-parallel rank sees all of x. ValueError unless n /
    world_size is a multiple of 16.

    The split is by output feature only: it knows nothing of attention heads. For q/k/v, pass a
    world_size that divides the head counts (engines replicate k and v heads instead when there
    are fewer of them than ranks; that replication is the caller's, before sharding)."""
    _check_rank("shard_columns", world_size, rank)
    n = layer.n
    if n % world_size != 0 or (n // world_size) % N_MULTIPLE != 0:
        raise ValueError(f"shard_columns: n = {n} over world_size {world_size} gives {n / world_size:g} output "
                         f"features per rank; that must be a whole multiple of {N_MULTIPLE} (the packed layout "
                         f"needs n % {N_MULTIPLE} == 0)")
    width = n // world_size
    lo, hi = rank * width, (rank + 1) * width
    return HostLayer(
        codes=_copy(layer.codes[lo:hi]),
        scale_bits=_copy(layer.scale_bits[:, lo:hi]),
        zero_bits=None if layer.zero_bits is None else _copy(layer.zero_bits[:, lo:hi]),
        k_permutation=_copy(layer.k_permutation),
        group_size=layer.group_size,
        dtype=layer.dtype,
        bias_bits=None if layer.bias_bits is None else _copy(layer.bias_bits[lo:hi]),
        float_zeros=layer.float_zeros,
    )


def shard_rows(layer: HostLayer, world_size: int, rank: int) -> HostLayer:
    """Rank `rank`'s row-parallel shard: packed columns [rank * k / world_size, (rank + 1) * k /
    world_size) and their groups' scales and zero points; it multiplies x[:, that slice] (x in
    its original order) and gives a partial output, to be summed over the ranks.

    The split is in the packed order on group boundaries: k / world_size must be a multiple of the
    group size and of 64; per-channel groups (group_size = k) cannot be split. With act-order,
    every packed column of the slice must read x inside the same slice (true after
    `fold_permutation`, which leaves no permutation at all); the shard's k_permutation is then
    relative to the slice (None where it is the identity). The bias goes to rank 0 only, so that
    the sum adds it once. ValueError, naming the numbers, for anything else."""
    _check_rank("shard_rows", world_size, rank)
    k, g = layer.k, layer.group_size
    if world_size > 1 and g == k:
        raise ValueError(f"shard_rows: per-channel groups (group_size = k = {k}) cannot be split over world_size "
                         f"{world_size}: each output feature has one scale for all of k; quantize with group 32, "
                         f"64 or 128 to shard row-wise")
    if k % world_size != 0 or (k // world_size) % g != 0 or (k // world_size) % K_MULTIPLE != 0:
        raise ValueError(f"shard_rows: k = {k} over world_size {world_size} gives {k / world_size:g} input "
                         f"features per rank; that must be a whole multiple of group_size {g} (split on group "
                         f"boundaries) and of {K_MULTIPLE} (the packed layout needs k % {K_MULTIPLE} == 0)")
    width = k // world_size
    lo, hi = rank * width, (rank + 1) * width
    permutation = None
    if layer.k_permutation is not None:
        reads = layer.k_permutation[lo:hi]
        outside = (reads < lo) | (reads >= hi)
        if outside.any():
            j = lo + int(np.argmax(outside))
            raise ValueError(
                f"shard_rows: rank {rank} of {world_size} holds x's columns [{lo}, {hi}), but {int(outside.sum())} "
                f"of its {width} packed columns read x outside that slice (k_permutation[{j}] = "
                f"{int(layer.k_permutation[j])}): an act-order permutation must be applied before the split; "
                f"fold it into the layers producing x first (w4a16.sharding.fold_permutation)")
        local = reads - lo
        # The identity needs no gather on the device: drop it.
        permutation = None if np.array_equal(local, np.arange(width)) else local.astype(np.int32)
    first_group, last_group = lo // g, hi // g
    return HostLayer(
        codes=_copy(layer.codes[:, lo:hi]),
        scale_bits=_copy(layer.scale_bits[first_group:last_group]),
        zero_bits=None if layer.zero_bits is None else _copy(layer.zero_bits[first_group:last_group]),
        k_permutation=permutation,
        group_size=g,
        dtype=layer.dtype,
        bias_bits=_copy(layer.bias_bits) if rank == 0 else None,
        float_zeros=layer.float_zeros,
    )


def fold_permutation(consumer: HostLayer, producers: Sequence[HostLayer]) -> Tuple[HostLayer, List[HostLayer]]:
    """Moves the consumer's act-order permutation into its producers' output features; returns
    (consumer without k_permutation, the permuted producers), the layers' other arrays shared.

    The consumer computes y = x[:, P] @ W.T (P its k_permutation) on x = f(producers' outputs),
    f elementwise over features with the producers' outputs aligned feature by feature (Llama's
    MLP: x = silu(gate(h)) * up(h), consumer down_proj). Output feature i of a permuted producer
    is the original's feature P[i] (its codes row, scales / zeros column and bias entry P[i]), so
    f of them is x[:, P] and the consumer reads it in order. The result is the same to the last
    bit (the same products and sums, in another order of features), and the consumer's packed
    order is untouched, so shard_rows then splits it on any group boundary.

    Anything else reading the producers' outputs would see them permuted too; the caller must
    make sure nothing does (true in the MLP). Every rank must fold the same way (it is
    deterministic). ValueError where a producer's n is not the consumer's k."""
    producers = list(producers)
    if not producers:
        raise ValueError("fold_permutation: no producers; the permutation must go into the layers producing x")
    for index, producer in enumerate(producers):
        if producer.n != consumer.k:
            raise ValueError(f"fold_permutation: producer {index} has n = {producer.n} output features, the "
                             f"consumer's k is {consumer.k}; they must be equal (the producer's outputs are the "
                             "consumer's inputs)")
        if producer.dtype != consumer.dtype:
            raise ValueError(f"fold_permutation: producer {index} runs in {producer.dtype}, the consumer in "
                             f"{consumer.dtype}")
    p = consumer.k_permutation
    if p is None:
        return consumer, producers
    permuted = [
        replace(producer,
                codes=producer.codes[p],
                scale_bits=producer.scale_bits[:, p],
                zero_bits=None if producer.zero_bits is None else producer.zero_bits[:, p],
                bias_bits=None if producer.bias_bits is None else producer.bias_bits[p])
        for producer in producers
    ]
    return replace(consumer, k_permutation=None), permuted


def permutation_from_g_idx(g_idx, group_size: int) -> np.ndarray:
    """The k_permutation of an act-order layer from its per-column group index (GPTQ's g_idx):
    columns sorted by group, stably, as the checkpoint importer does (docs/ARCHITECTURE.md,
    Checkpoints). ValueError unless every group has exactly group_size columns."""
    g_idx = np.asarray(g_idx)
    k = g_idx.size
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(f"permutation_from_g_idx: {k} columns are not whole groups of {group_size}")
    counts = np.bincount(g_idx, minlength=k // group_size)
    if counts.size != k // group_size or not np.all(counts == group_size):
        raise ValueError(f"permutation_from_g_idx: every one of the {k // group_size} groups must have "
                         f"{group_size} columns")
    return np.argsort(g_idx, kind="stable").astype(np.int32)
