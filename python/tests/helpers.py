"""Test data shared by the CPU and GPU tests (python/tests is on sys.path under pytest)."""

import json

import numpy as np


def random_weights(rng, n, k):
    # Per-(row, 32 columns) magnitudes, as the C++ tests draw them.
    magnitude = np.exp2(rng.uniform(-3, 1, size=(n, k // 32))).repeat(32, axis=1)
    return (rng.uniform(-1, 1, size=(n, k)) * magnitude).astype(np.float32)


def write_safetensors(path, tensors, metadata):
    """A safetensors file: {name: (array, dtype name or None to take it from the array)} in order,
    and string metadata. Layout: 8-byte little-endian header length, the JSON header (padded with
    spaces to 8 bytes), the tensors' bytes back to back."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32"}
    header, data, offset = {"__metadata__": metadata}, [], 0
    for name, (array, dtype) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype or dtypes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text + b"".join(data))


def write_container(path, layers, dtype):
    """A w4a16 container (import_checkpoint's layout, checkpoint.h): for each prefix P in `layers`,
    {'packed': [n, k/2] uint8, 'scale_bits', 'zero_bits' (or None): [k/g, n] uint16,
    'k_permutation': [k] int32 or None, 'bias': an array or None} as P.w4a16.* and P.bias."""
    element = "F16" if dtype == "fp16" else "BF16"
    tensors = {}
    for prefix, layer in layers.items():
        tensors[prefix + "w4a16.packed"] = (layer["packed"], None)
        tensors[prefix + "w4a16.scales"] = (layer["scale_bits"], element)
        if layer.get("zero_bits") is not None:
            tensors[prefix + "w4a16.zeros"] = (layer["zero_bits"], element)
        if layer.get("k_permutation") is not None:
            tensors[prefix + "w4a16.k_permutation"] = (layer["k_permutation"], None)
        if layer.get("bias") is not None:
            tensors[prefix + "bias"] = (layer["bias"], None)
    write_safetensors(path, tensors, {"w4a16.layout_version": "1", "w4a16.element": dtype})
