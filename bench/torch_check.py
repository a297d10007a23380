#!/usr/bin/env python3
"""Cross-checks the benchmark's dense yardstick against torch.mm on the same GPU.

    python3 bench/torch_check.py --w4a16 build/w4a16 [--rounds 3] [--json out.json]

For each shape (m x n x k, fp16 unless --dtype bf16) it times, in alternating rounds (bench, torch,
bench, torch ...) so that a drift of the lent GPU's clocks hits both alike:
  - `w4a16 bench --shapes MxNxK,...`: its cuBLAS column, the fastest of cublasGemmEx and cuBLASLt's
    heuristic candidates (cli/dense_baseline.h), timed in alternation with w4a16;
  - torch.mm(A, W_i.t(), out=C) with the bench's method: weights W [n, k] rotating over enough
    copies to exceed 4x L2, the same value ranges (A uniform in [-1, 1], W in [-0.1, 0.1]: a GEMM's
    power draw, and so the clock, depends on the data), a CUDA graph of back-to-back calls replayed
    until its time settles, the median per call over the repeats.
It prints both medians over rounds and their ratio (and the chosen algorithm's standalone time
from the bench's selection, like for like with torch's standalone replays); the issue's line is agreement within 3% at
4096^3, 8192^3, 4096x28672x8192 and 512x4096x4096 (the default shapes). Exit status 1 if a shape
disagrees by more than --tolerance.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

DEFAULT_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (4096, 28672, 8192), (512, 4096, 4096)]


def iterations_for(expected_us):
    """The bench's rule (cli/bench_support.h): one replay lasts about 2 ms."""
    return min(max(int(2000.0 / max(expected_us, 1.0)), 10), 300)


def copies_for(nbytes, l2_bytes):
    """The bench's rule: copies whose total exceeds 4x L2 (at least 2)."""
    return max(2, (4 * l2_bytes) // max(nbytes, 1) + 1)


def replay_us(graph, calls):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1000.0 / calls


def time_torch_mm(m, n, k, dtype, repeats, min_warm_up_s=1.0):
    """Median microseconds per torch.mm call, the bench's method."""
    properties = torch.cuda.get_device_properties(0)
    l2 = properties.L2_cache_size
    copies = copies_for(n * k * 2, l2)
    weights = [torch.empty(n, k, dtype=dtype, device="cuda").uniform_(-0.1, 0.1) for _ in range(copies)]
    a = torch.empty(m, k, dtype=dtype, device="cuda").uniform_(-1, 1)
    c = torch.empty(m, n, dtype=dtype, device="cuda")
    # Expected time at ~700 TFLOP/s or ~4.5 TB/s, whichever is longer (only sizes the replay).
    expected = max(2.0 * m * n * k / 7e8, (n * k * 2 + m * k * 2 + m * n * 2) / 4.5e6)
    calls = max(iterations_for(expected), copies)

    def evaluate(i):
        torch.mm(a, weights[i % copies].t(), out=c)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # cuBLAS's handle and workspace exist before the capture
        for i in range(2):
            evaluate(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            evaluate(i)
    # Warm-up as the bench does: until the last three replays are within 2% of the three before,
    # at least min_warm_up_s. The default second is longer than the bench's 25 ms on purpose: the
    # H200's SM clock moves by ~30% between idle and a prefill GEMM's power limit (NOTES entry 29),
    # and a shorter warm-up measured each torch shape in whatever clock state the one before (or
    # the bench subprocess's exit) left: 4096^3 first after an idle gap ran 5% fast, 512x4096x4096
    # right after 4096x28672x8192 15% slow.
    begin = time.perf_counter()
    history = []
    while True:
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        history.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - begin
        settled = len(history) >= 6 and abs(sum(history[-3:]) - sum(history[-6:-3])) <= 0.02 * sum(history[-6:-3])
        if elapsed >= max(0.5, min_warm_up_s) or (elapsed >= min_warm_up_s and settled):
            break
    samples = sorted(replay_us(graph, calls) for _ in range(repeats))
    del graph
    return samples[len(samples) // 2]


def time_bench(binary, shapes, dtype_name, repeats):
    """The bench's cuBLAS figure (and algorithm) per shape, from one `w4a16 bench` run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        spec = ",".join(f"{m}x{n}x{k}" for m, n, k in shapes)
        command = [binary, "bench", "--shapes", spec, "--dtype", dtype_name, "--repeats", str(repeats),
                   "--json", out.name]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        document = json.load(open(out.name))
    figures = {}
    for entry in document["results"]:
        # The chosen algorithm's own time when it was chosen (standalone, 3 replays), next to its
        # time in alternation with w4a16 (the bench's cublas_us).
        standalone = min(candidate["us"] for candidate in entry["cublas_candidates"])
        figures[(entry["m"], entry["n"], entry["k"])] = (entry["cublas_us"], entry["cublas_algorithm"],
                                                        entry["cublas_gemmex_default_us"], standalone)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--w4a16", required=True, help="path of the w4a16 binary")
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    shapes = DEFAULT_SHAPES
    rounds = {"bench": {s: [] for s in shapes}, "torch": {s: [] for s in shapes}}
    algorithms = {s: [] for s in shapes}
    gemmex = {s: [] for s in shapes}
    standalone = {s: [] for s in shapes}
    for round_index in range(args.rounds):
        for shape, (us, algorithm, gemmex_us, alone_us) in time_bench(args.w4a16, shapes, args.dtype,
                                                                      args.repeats).items():
            rounds["bench"][shape].append(us)
            algorithms[shape].append(algorithm)
            gemmex[shape].append(gemmex_us)
            standalone[shape].append(alone_us)
        for shape in shapes:
            rounds["torch"][shape].append(time_torch_mm(*shape, dtype, args.repeats))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, {args.dtype}, {args.rounds} alternating "
          f"rounds (median over rounds; per-round figures in the JSON)")
    print(f"{'m x n x k':>18} {'bench cuBLAS us':>16} {'torch.mm us':>12} {'bench/torch':>12} {'GemmEx us':>10}"
          f" {'alone us':>9} {'alone/torch':>12}  bench algorithm")
    worst = 0.0
    table = []
    for shape in shapes:
        bench_us = statistics.median(rounds["bench"][shape])
        torch_us = statistics.median(rounds["torch"][shape])
        ratio = bench_us / torch_us
        worst = max(worst, abs(ratio - 1.0))
        name = "x".join(map(str, shape))
        alone_us = statistics.median(standalone[shape])
        print(f"{name:>18} {bench_us:16.1f} {torch_us:12.1f} {ratio:12.3f} {statistics.median(gemmex[shape]):10.1f}"
              f" {alone_us:9.1f} {alone_us / torch_us:12.3f}  {', '.join(sorted(set(algorithms[shape])))}")
        table.append({"m": shape[0], "n": shape[1], "k": shape[2], "bench_cublas_us": bench_us, "torch_mm_us": torch_us,
                      "ratio": ratio, "bench_rounds_us": rounds["bench"][shape],
                      "torch_rounds_us": rounds["torch"][shape], "bench_algorithms": algorithms[shape],
                      "bench_gemmex_default_us": gemmex[shape], "bench_standalone_rounds_us": standalone[shape],
                      "standalone_ratio": alone_us / torch_us})
    agree = worst <= args.tolerance
    print(f"largest disagreement {100 * worst:.1f}% ({'within' if agree else 'beyond'} {100 * args.tolerance:.0f}%)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype,
                       "rounds": args.rounds, "repeats": args.repeats, "results": table}, out, indent=2)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
