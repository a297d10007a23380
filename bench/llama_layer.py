#!/usr/bin/env python3
"""One Llama-3-8B decoder layer's linear layers: dense nn.Linear vs W4A16Linear, inside CUDA graphs.

    PYTHONPATH=build/python python3 bench/llama_layer.py [--dtype fp16|bf16] [--zeros] [--group 128]
        [--batches 1,16,64,2048] [--profile] [--json out.json] [--png out.png]

A layer evaluation is its seven linears (q 4096x4096, k and v 1024x4096, o 4096x4096, gate and up
14336x4096, down 4096x14336; out x in), each on its own input (x [batch, 4096]; down reads a
[batch, 14336] activation), with no attention or MLP math in between: what is compared is the
GEMMs. One layer's weights are ~436 MB dense and ~112 MB in int4 with scales. Back-to-back
evaluations of the same layer cycle through them; the dense side is 7x the H200's 60 MB L2, but
the w4a16 side only 1.8x, so some of its reads may still hit L2 (the weights are not rotated over
copies as `w4a16 bench` and bench/op_overhead.py do: a known limit of this benchmark's numbers). Each timing is one replay of a CUDA graph of many
back-to-back evaluations (so no launch gaps or Python in the measurement), divided by their count;
dense and w4a16 replays alternate, and the median of --repeats replays is reported.

The weights are random: neither path's speed depends on the values, so the int4 buffers are filled
directly instead of quantizing 218M weights on the CPU. The dense baseline runs in the same
activation type as the w4a16 layer (cuBLAS through nn.Linear).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

import w4a16.torch as wt
from w4a16.graph_timing import capture, replay_us

# (name, out_features, in_features) of one Llama-3-8B decoder layer.
LINEARS = [
    ("q_proj", 4096, 4096),
    ("k_proj", 1024, 4096),
    ("v_proj", 1024, 4096),
    ("o_proj", 4096, 4096),
    ("gate_proj", 14336, 4096),
    ("up_proj", 14336, 4096),
    ("down_proj", 4096, 14336),
]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def random_w4a16(out_features, in_features, group_size, zeros, dtype, device):
    """A W4A16Linear with random codes, scales of a realistic size (|w| ~ 1/sqrt(in), as nn.Linear's
    initialisation) and, with zeros, random integer zero points."""
    layer = wt.W4A16Linear(in_features, out_features, group_size=group_size, zeros=zeros, dtype=dtype, device=device)
    with torch.no_grad():
        layer.packed.random_(0, 256)
        layer.scales.uniform_(0.5, 1.5).mul_(0.25 / in_features**0.5)
        if zeros:
            layer.zeros.random_(0, 16)
    return layer


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def plot(results, meta, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not importable: no {path}", file=sys.stderr)
        return
    labels = [str(r["batch"]) for r in results]
    positions = range(len(results))
    fig, (times, speedups) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.38
    times.bar([p - width / 2 for p in positions], [r["dense_us"] for r in results], width,
              label=f"dense nn.Linear ({meta['dtype']})")
    times.bar([p + width / 2 for p in positions], [r["w4a16_us"] for r in results], width,
              label=f"W4A16Linear ({meta['format']}, group {meta['group_size']})")
    times.set_yscale("log")
    times.set_xticks(list(positions), labels)
    times.set_xlabel("batch (tokens)")
    times.set_ylabel("us per decoder layer's linears (median)")
    times.grid(True, axis="y", which="both", alpha=0.3)
    times.legend(fontsize=8)
    bars = speedups.bar(list(positions), [r["speedup"] for r in results], color="tab:green")
    speedups.bar_label(bars, fmt="%.2fx")
    speedups.axhline(1.0, color="black", linewidth=0.8)
    speedups.set_xticks(list(positions), labels)
    speedups.set_xlabel("batch (tokens)")
    speedups.set_ylabel("speedup over dense (dense us / w4a16 us)")
    speedups.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Llama-3-8B decoder layer, 7 linears, CUDA graphs | {meta['device']} | w4a16 {meta['commit']}, "
                 f"torch {meta['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--zeros", action="store_true", help="w4a16 weights with zero points")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--batches", default="1,16,64,2048", help="comma-separated token counts")
    parser.add_argument("--repeats", type=int, default=9, help="timed replays per batch and method (median)")
    parser.add_argument("--profile", action="store_true",
                        help="tune every w4a16 shape at each batch first (Runner.profile) instead of the heuristic")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--png", help="plot the results here (needs matplotlib)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    batches = [int(b) for b in args.batches.split(",")]
    dtype = DTYPES[args.dtype]
    device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)

    dense = {name: torch.nn.Linear(k, n, bias=False, dtype=dtype, device=device) for name, n, k in LINEARS}
    quantized = {name: random_w4a16(n, k, args.group, args.zeros, dtype, device) for name, n, k in LINEARS}
    dense_bytes = sum(n * k * 2 for _, n, k in LINEARS)
    w4a16_bytes = sum(sum(b.numel() * b.element_size() for b in layer.buffers()) for layer in quantized.values())
    meta = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "commit": git_commit(),
        "dtype": args.dtype,
        "format": args.dtype + ("+zeros" if args.zeros else ""),
        "group_size": args.group,
        "profiled": args.profile,
        "dense_weight_mb": dense_bytes / 1e6,
        "w4a16_weight_mb": w4a16_bytes / 1e6,
        "l2_mb": getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) / 1e6,
    }
    print(f"{meta['device']}: one layer's weights {meta['dense_weight_mb']:.0f} MB dense, "
          f"{meta['w4a16_weight_mb']:.0f} MB w4a16 (L2 {meta['l2_mb']:.0f} MB)", flush=True)

    results = []
    with torch.inference_mode():
        for batch in batches:
            x = torch.empty(batch, 4096, dtype=dtype, device=device).uniform_(-1, 1)
            h = torch.empty(batch, 14336, dtype=dtype, device=device).uniform_(-1, 1)
            if args.profile:
                for name, _, _ in LINEARS:
                    quantized[name].profile(batch, iterations=10, repeats=3)

            def run(layers):
                for name, _, _ in LINEARS:
                    layers[name](h if name == "down_proj" else x)

            # Replays of ~10-25 ms: 200 evaluations at decode sizes, 10 at 2048 tokens.
            evaluations = 200 if batch <= 64 else max(4, 20480 // batch)
            graphs = {"dense": capture(lambda: run(dense), evaluations),
                      "w4a16": capture(lambda: run(quantized), evaluations)}
            # Settle the clocks (a compute-heavy predecessor leaves them low; see bench/NOTES.md).
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for graph in graphs.values():
                    replay_us(graph, evaluations)
            samples = {method: [] for method in graphs}
            for _ in range(args.repeats):
                for method, graph in graphs.items():
                    samples[method].append(replay_us(graph, evaluations))
            row = {"batch": batch, "evaluations": evaluations,
                   "dense_us": statistics.median(samples["dense"]), "w4a16_us": statistics.median(samples["w4a16"])}
            row["speedup"] = row["dense_us"] / row["w4a16_us"]
            runner = wt.runner(device)
            row["w4a16_configs"] = {name: runner.default_config(batch, n, k, args.group, args.dtype, args.zeros)
                                    for name, n, k in LINEARS}
            results.append(row)
            print(f"batch {batch}: dense {row['dense_us']:.1f} us, w4a16 {row['w4a16_us']:.1f} us, "
                  f"{row['speedup']:.2f}x ({evaluations} evaluations per replay)", flush=True)
            del graphs

    print()
    print(f"Llama-3-8B decoder layer, 7 linears, {meta['format']} group {args.group} vs dense {args.dtype}, "
          f"{meta['device']} (median of {args.repeats} CUDA-graph replays)")
    print()
    print("| batch | dense us | w4a16 us | speedup |")
    print("|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['batch']} | {r['dense_us']:.1f} | {r['w4a16_us']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"environment": meta, "linears": LINEARS, "results": results}, out, indent=2)
            out.write("\n")
        print(f"wrote {args.json}")
    if args.png:
        plot(results, meta, args.png)


if __name__ == "__main__":
    main()
