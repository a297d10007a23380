#!/usr/bin/env python3
"""Plot a `w4a16 bench --json` result: efficiency vs m per (n, k), and w4a16 vs cuBLAS FP16 time.

    python3 -m pip install matplotlib
    python3 bench/plot.py bench/results/h100.json bench/results/h100.png
"""
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    with open(source) as f:
        data = json.load(f)
    env, ceilings = data["environment"], data["ceilings"]
    layers = defaultdict(list)
    for r in data["results"]:
        layers[(r["n"], r["k"])].append(r)

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.8))
    eff, times = axes
    for (n, k), rows in sorted(layers.items()):
        rows.sort(key=lambda r: r["m"])
        ms = [r["m"] for r in rows]
        line, = eff.plot(ms, [100 * r["efficiency"] for r in rows], marker="o", label=f"w4a16 {n}x{k}")
        eff.plot(ms, [100 * r["cublas_efficiency"] for r in rows], linestyle=":", color=line.get_color(),
                 label=f"cuBLAS fp16 {n}x{k}")
        times.plot(ms, [r["w4a16_us"] for r in rows], marker="o", color=line.get_color(), label=f"w4a16 {n}x{k}")
        times.plot(ms, [r["cublas_us"] for r in rows], linestyle=":", marker="x", color=line.get_color(),
                   label=f"cuBLAS {n}x{k}")
    eff.set_xscale("log", base=2)
    eff.set_xlabel("m (tokens)")
    eff.set_ylabel("% of roofline (each method's own bytes)")
    eff.set_ylim(0, 105)
    eff.grid(True, alpha=0.3)
    eff.set_title("Efficiency vs m (solid: w4a16, dotted: cuBLAS FP16)")
    eff.legend(fontsize=6, ncol=2)
    times.set_xscale("log", base=2)
    times.set_yscale("log")
    times.set_xlabel("m (tokens)")
    times.set_ylabel("time per GEMM (us, median)")
    times.grid(True, which="both", alpha=0.3)
    times.set_title("w4a16 (solid) vs cuBLAS FP16 (dotted)")
    times.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{env['device']}  |  HBM read {ceilings['hbm_read_gbps']:.0f} GB/s, FP16 "
                 f"{ceilings['fp16_tflops']:.0f} TFLOP/s  |  group {data['method']['group_size']}  |  "
                 f"commit {env['git_commit']}  {env['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
