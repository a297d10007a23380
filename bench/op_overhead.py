#!/usr/bin/env python3
"""What the PyTorch layer adds per call at m = 1, over calling the C++ runner directly.

    PYTHONPATH=build/python python3 bench/op_overhead.py [--calls 400] [--repeats 9] [--json out.json]

Per shape (n x k, fp16, group 128, m = 1), per-call microseconds of:
  (a) raw graph       a CUDA graph of N back-to-back Runner.gemm calls (the extension's binding of
                      the C++ GemmRunner on raw pointers: the baseline)
  (b) op graph        the same through torch.ops.w4a16.gemm, captured in a CUDA graph
  (c) compiled graph  a torch.compile(fullgraph=True) function calling the op, captured in a graph
  (d) op eager        N eager op calls (bound by the host: dispatcher, checks, allocation per call)
  (e) raw eager       N eager Runner.gemm calls (the binding's own host cost)
  (f) direct eager    N eager calls of the op's Python body without the dispatcher (what
                      W4A16Linear.forward calls in eager mode, without nn.Module's own call cost)
A graph replays only the kernels, so (b) and (c) cost more than (a) only if the op adds device work
(a copy, a memset) or changes the launches; the acceptance is (b) - (a) and (c) - (a) <= 2 us.
Weights rotate over copies totalling >= 4x the L2 size so that each call reads them from HBM, as
in a model; graph variants alternate and each number is the median of --repeats replays.
"""
import argparse
import json
import statistics
import sys
import time

import torch

import w4a16.torch as wt

SHAPES = [(4096, 4096), (28672, 8192)]  # (n, k): a 4096 projection and a 70B-sized MLP layer
GROUP = 128
ACCEPTED_US = 2.0


def timed_us(work, calls):
    """Microseconds per call of work(), between two events on the current stream."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    work()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1000.0 / calls


def capture(calls_fn):
    """A CUDA graph of calls_fn() (which makes N calls), warmed up on a side stream first."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        calls_fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        calls_fn()
    return graph


def measure(n, k, calls, repeats, device):
    r = wt.runner(device)
    weight_bytes = n * k // 2 + (k // GROUP) * n * 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    copies = max(1, -(-4 * l2 // weight_bytes))
    packed = [torch.randint(0, 256, (n * k // 2,), dtype=torch.uint8, device=device) for _ in range(copies)]
    scales = [torch.empty(k // GROUP, n, dtype=torch.float16, device=device).uniform_(0.5, 1.5).mul_(0.25 / k**0.5)
              for _ in range(copies)]
    x = torch.empty(1, k, dtype=torch.float16, device=device).uniform_(-1, 1)
    c = torch.empty(1, n, dtype=torch.float16, device=device)
    # The raw calls' arguments, built once (as an engine calling the runner directly would).
    raw_arguments = [(x.data_ptr(), p.data_ptr(), s.data_ptr(), 0, 0, c.data_ptr(), 0, 1, n, k, GROUP, 1.0, "fp16")
                     for p, s in zip(packed, scales)]
    workspace_bytes = r.workspace_bytes(*raw_arguments[0])
    workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=device)

    def raw_calls():
        stream = torch.cuda.current_stream().cuda_stream  # the capture stream while capturing
        for i in range(calls):
            r.gemm(*raw_arguments[i % copies], workspace.data_ptr(), workspace_bytes, stream)

    def op_calls():
        for i in range(calls):
            torch.ops.w4a16.gemm(x, packed[i % copies], scales[i % copies], None, None, None, GROUP, 1.0)

    def direct_calls():
        for i in range(calls):
            wt._gemm(x, packed[i % copies], scales[i % copies], None, None, None, GROUP, 1.0)

    @torch.compile(fullgraph=True)
    def compiled_gemm(x, packed, scales):
        return torch.ops.w4a16.gemm(x, packed, scales, None, None, None, GROUP, 1.0)

    def compiled_calls():
        for i in range(calls):
            compiled_gemm(x, packed[i % copies], scales[i % copies])

    compiled_gemm(x, packed[0], scales[0])  # compile outside the capture
    torch.cuda.synchronize()
    graphs = {"raw graph": capture(raw_calls), "op graph": capture(op_calls), "compiled graph": capture(compiled_calls)}
    eager = {"op eager": op_calls, "raw eager": raw_calls, "direct eager": direct_calls}
    deadline = time.monotonic() + 1.0  # settle the clocks
    while time.monotonic() < deadline:
        for graph in graphs.values():
            timed_us(graph.replay, calls)
    samples = {name: [] for name in [*graphs, *eager]}
    for _ in range(repeats):
        for name, graph in graphs.items():
            samples[name].append(timed_us(graph.replay, calls))
        for name, work in eager.items():
            samples[name].append(timed_us(work, calls))
    row = {"n": n, "k": k, "m": 1, "copies": copies, "calls": calls, "config": r.default_config(1, n, k, GROUP),
           "us": {name: statistics.median(values) for name, values in samples.items()}}
    base = row["us"]["raw graph"]
    row["added_us"] = {name: row["us"][name] - base for name in ("op graph", "compiled graph", "op eager")}
    row["accepted"] = max(row["added_us"]["op graph"], row["added_us"]["compiled graph"]) <= ACCEPTED_US
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="calls per graph / eager run")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    with torch.inference_mode():
        for n, k in SHAPES:
            rows.append(measure(n, k, args.calls, args.repeats, device))
            print(f"{n}x{k}: " + ", ".join(f"{name} {us:.2f}" for name, us in rows[-1]["us"].items()) + " us/call",
                  flush=True)

    names = list(rows[0]["us"])
    print()
    print(f"Per-call us at m = 1, fp16, group {GROUP}, {torch.cuda.get_device_name(device)}, torch {torch.__version__} "
          f"(median of {args.repeats} runs of {args.calls} calls)")
    print()
    print("| n x k | config | " + " | ".join(f"({chr(ord('a') + i)}) {name}" for i, name in enumerate(names))
          + " | (b)-(a) | (c)-(a) | (d)-(a) |")
    print("|---|---|" + "---:|" * (len(names) + 3))
    for row in rows:
        added = row["added_us"]
        print(f"| {row['n']}x{row['k']} | {row['config']} | " + " | ".join(f"{row['us'][name]:.2f}" for name in names)
              + f" | {added['op graph']:+.2f} | {added['compiled graph']:+.2f} | {added['op eager']:+.2f} |")
    print()
    for row in rows:
        added = row["added_us"]
        print(f"{'PASS' if row['accepted'] else 'FAIL'} {row['n']}x{row['k']}: graph-captured op "
              f"{added['op graph']:+.2f} us, compiled + captured {added['compiled graph']:+.2f} us over the raw runner "
              f"(limit {ACCEPTED_US:.0f} us)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "results": rows}, out,
                      indent=2)
            out.write("\n")
        print(f"wrote {args.json}")
    sys.exit(0 if all(row["accepted"] for row in rows) else 1)


if __name__ == "__main__":
    main()
