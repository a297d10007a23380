#!/usr/bin/env python3
"""A tensor-parallel Llama-3-70B MLP block in W4A16: gate/up column-parallel, down row-parallel.

    torchrun --nproc-per-node 2 examples/tensor_parallel_mlp.py [--act-order] [--json out.json]
    python3 examples/tensor_parallel_mlp.py --simulate [--act-order] [--json out.json]   # one GPU

(PYTHONPATH=build/python, or the package installed.) The block is y = down(silu(gate(x)) * up(x)),
hidden 8192, intermediate 28672: gate and up are 28672x8192 (out x in), down 8192x28672. On
world_size ranks, rank r holds gate's and up's output features [r * 28672 / W, (r + 1) * 28672 / W)
(column-parallel: every rank has all of x), so silu(gate) * up on rank r is the slice r of the
intermediate activation, which is exactly what down's row-parallel shard r multiplies (down's input
features of that slice); the ranks' partial outputs are summed by an all-reduce (NCCL).

--act-order gives down a GPTQ-style act-order permutation. A row-parallel rank only has its slice
of the intermediate activation, but GPTQ's permutation reads columns from all of it, so the
permutation is first folded into gate's and up's output features (w4a16.sharding.fold_permutation)
and down is then split in order. The unsharded reference keeps the permutation in down (the GEMM
gathers x's columns), so the check also checks the fold.

Checks: at every batch, the W4A16 TP block against the same block computed unsharded on one GPU
(rank 0), relative Frobenius error within --tolerance (2e-3 for fp16, the GEMM tests' bound;
1.6e-2 for bf16). Timing: batch 1, 16 and 256, the TP block (all-reduce included) in W4A16 against
dense nn.Linear TP in the same activation type, each inside CUDA graphs (20 back-to-back blocks
per replay, median of --repeats replays; the slowest rank's median is reported), plus the
all-reduce alone and the unsharded W4A16 block on one GPU. A markdown table is printed and --json
writes the results.

--simulate runs on one GPU: both ranks' shards computed in sequence in one process, their partial
outputs summed in place of the all-reduce, checked the same way; it times each rank's shard GEMMs
and shard block (no all-reduce) against dense shards, and the unsharded blocks, and says that the
2-GPU timing was not run.

Weights: random, quantized on the CPU with w4a16.quantize (group 128 by default; ~2 s per layer of
235M weights). Speed does not depend on the values; the check only needs every path to use the
same ones. NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 unless the caller set it.
"""
import os

# Before torch / NCCL initialize: NVLink multicast must stay off on the machines this runs on, and
# without record_stream calls ProcessGroupNCCL lets a captured all_reduce replay in a CUDA graph
# (the setting vLLM uses for the same purpose).
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_NCCL_AVOID_RECORD_STREAMS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import w4a16  # noqa: E402
import w4a16.torch as wt  # noqa: E402  (registers torch.ops.w4a16.gemm)
from w4a16.graph_timing import capture, replay_us  # noqa: E402
from w4a16.sharding import HostLayer, fold_permutation, permutation_from_g_idx, shard_columns, shard_rows  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCES = {"fp16": 2e-3, "bf16": 1.6e-2}  # relative Frobenius: ~4 units of roundoff of the type


# ---------------------------------------------------------------------------------------------
# Host side: the three layers, folded and sharded (NumPy; identical on every rank).


def gptq_permutation(rng, k, group):
    """An act-order permutation as GPTQ makes one: columns quantized in a random order (GPTQ's:
    decreasing Hessian diagonal), the i-th of them in group i // group (g_idx), then sorted by
    group, which is the k_permutation an imported checkpoint stores."""
    order = rng.permutation(k)
    g_idx = np.empty(k, dtype=np.int64)
    g_idx[order] = np.arange(k) // group
    return permutation_from_g_idx(g_idx, group)


def random_layer(rng, n, k, args, amplitude, act_order=False):
    """A random [n, k] layer quantized with w4a16.quantize. Weights uniform in [-amplitude,
    amplitude]. With act_order, the weights are taken to be in the packed (group-sorted) order
    already: for i.i.d. random weights that is the same distribution as gathering w[:, perm],
    without a second 1 GB copy."""
    w = rng.random((n, k), dtype=np.float32)
    w -= 0.5
    w *= 2 * amplitude
    q = w4a16.quantize(w, group_size=args.group, dtype=args.dtype, zeros=args.zeros)
    del w
    permutation = gptq_permutation(rng, k, args.group) if act_order else None
    return HostLayer.from_quantized(q, k_permutation=permutation)


def build_layers(args):
    """(gate, up, down) unsharded, the act-order permutation (if any) still in down."""
    rng = np.random.default_rng(args.seed)
    h, i = args.hidden, args.intermediate
    # Amplitudes for outputs of unit size: x ~ U(-1, 1) has E[x^2] = 1/3 and a U(-a, a) weight
    # a^2 / 3, so gate(x) and up(x) have variance k a^2 / 9; silu(g) * up has E[.^2] ~ 0.35.
    gate = random_layer(rng, i, h, args, 3.0 / h**0.5)
    up = random_layer(rng, i, h, args, 3.0 / h**0.5)
    down = random_layer(rng, h, i, args, (3.0 / (0.35 * i))**0.5, act_order=args.act_order)
    return gate, up, down


def fold(gate, up, down):
    """Down's act-order permutation, if any, moved into gate's and up's output features (see the
    module docstring): afterwards down reads its input in order and splits on any group boundary,
    and each rank's slice of silu(gate) * up is the slice its down shard multiplies."""
    down, (gate, up) = fold_permutation(down, [gate, up])
    return gate, up, down


def shard_block(folded, world_size, rank):
    """Rank `rank`'s (gate, up, down) shards of the folded block."""
    gate, up, down = folded
    return (shard_columns(gate, world_size, rank), shard_columns(up, world_size, rank),
            shard_rows(down, world_size, rank))


# ---------------------------------------------------------------------------------------------
# Device side.


class MLP(torch.nn.Module):
    """down(silu(gate(x)) * up(x)), then the sum over the TP group when one is given."""

    def __init__(self, gate, up, down, group=None):
        super().__init__()
        self.gate, self.up, self.down, self.group = gate, up, down, group

    def forward(self, x):
        y = self.down(F.silu(self.gate(x)) * self.up(x))
        if self.group is not None:
            dist.all_reduce(y, group=self.group)
        return y


def w4a16_layers(layers, device):
    return [wt.W4A16Linear.from_host_layer(layer, device=device) for layer in layers]


def dense_layers(shapes, dtype, device):
    """nn.Linear layers (no bias) of the given (out, in) shapes with unit-output-sized random weights."""
    layers = []
    for n, k in shapes:
        linear = torch.nn.Linear(k, n, bias=False, dtype=dtype, device=device)
        with torch.no_grad():
            linear.weight.uniform_(-(3.0 / k)**0.5, (3.0 / k)**0.5)
        layers.append(linear)
    return layers


def relative_error(got, expected):
    expected = expected.double()
    return ((got.double() - expected).norm() / expected.norm()).item()


def time_all(functions, args, distributed=False):
    """{name: median us per call} of each function, in CUDA graphs, replays interleaved.

    Distributed: every rank must call this with the same names in the same order (the graphs hold
    all-reduces that pair up across ranks); a barrier before each replay starts the ranks together,
    so a rank does not time its wait for the other's previous replay."""
    evaluations = args.calls
    graphs = {name: capture(fn, evaluations) for name, fn in functions.items()}
    # Settle the clocks before timing (a cold or compute-heavy predecessor leaves them off).
    deadline = time.monotonic() + args.settle
    while True:
        for graph in graphs.values():
            replay_us(graph, evaluations)
        done = torch.tensor([float(time.monotonic() >= deadline)], device="cuda")
        if distributed:
            # Every rank leaves the loop at the same pass: the replays must stay paired.
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
        if done.item() > 0:
            break
    samples = {name: [] for name in graphs}
    for _ in range(args.repeats):
        for name, graph in graphs.items():
            if distributed:
                barrier()
            samples[name].append(replay_us(graph, evaluations))
    del graphs
    return {name: statistics.median(values) for name, values in samples.items()}


def barrier():
    # With the device named: NCCL's barrier otherwise guesses which GPU this rank uses.
    dist.barrier(device_ids=[torch.cuda.current_device()])


def slowest_rank(timings):
    """The largest of each timing over the ranks (the TP block is as slow as its slowest rank)."""
    names = sorted(timings)
    values = torch.tensor([timings[name] for name in names], dtype=torch.float64, device="cuda")
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return dict(zip(names, values.tolist()))


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def nccl_version():
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def meta_of(args, mode, world_size, device):
    return {
        "mode": mode,
        "world_size": world_size,
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "nccl": nccl_version() if mode == "torchrun" else None,
        "commit": git_commit(),
        "hidden": args.hidden,
        "intermediate": args.intermediate,
        "group_size": args.group,
        "dtype": args.dtype,
        "zeros": args.zeros,
        "act_order": args.act_order,
        "calls_per_replay": args.calls,
        "repeats": args.repeats,
        "tolerance": args.tolerance,
        "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"),
    }


def write_json(path, payload):
    with open(path, "w") as out:
        json.dump(payload, out, indent=2)
        out.write("\n")
    print(f"wrote {path}")


def print_checks(checks):
    for c in checks:
        print(f"check batch {c['batch']}: relative Frobenius error {c['relative_error']:.3g} "
              f"(tolerance {c['tolerance']:g}) {'ok' if c['ok'] else 'FAILED'}", flush=True)


# ---------------------------------------------------------------------------------------------
# torchrun: one rank per GPU.


def run_distributed(args):
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank)
    dist.init_process_group("nccl")
    group = dist.group.WORLD
    dtype = DTYPES[args.dtype]
    # The communicator is created lazily by the first collective; make that happen now, eagerly,
    # never inside a graph capture.
    dist.all_reduce(torch.zeros(1, device=device))

    started = time.monotonic()
    gate, up, down = build_layers(args)  # the same on every rank (same seed)
    shards = w4a16_layers(shard_block(fold(gate, up, down), world_size, rank), device)
    tp = MLP(*shards, group=group)
    reference = MLP(*w4a16_layers((gate, up, down), device)) if rank == 0 else None
    del gate, up, down
    width = args.intermediate // world_size
    dense_tp = MLP(*dense_layers([(width, args.hidden), (width, args.hidden), (args.hidden, width)], dtype, device),
                   group=group)
    if rank == 0:
        print(f"{world_size} ranks, layers built and sharded in {time.monotonic() - started:.1f} s", flush=True)

    checks, results = [], []
    failed = False
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.empty(batch, args.hidden, dtype=dtype, device=device)
            if rank == 0:
                x.uniform_(-1, 1)
            dist.broadcast(x, src=0)  # every rank multiplies the same x
            y = tp(x)
            error = torch.zeros(1, dtype=torch.float64, device=device)
            if rank == 0:
                error.fill_(relative_error(y, reference(x)))
            dist.broadcast(error, src=0)  # every rank learns the verdict (and exits with it)
            ok = error.item() <= args.tolerance
            failed |= not ok
            checks.append({"batch": batch, "relative_error": error.item(), "tolerance": args.tolerance, "ok": ok})

            # Zeros: repeated in-place sums stay finite (the speed does not depend on the values).
            reduced = torch.zeros(batch, args.hidden, dtype=dtype, device=device)
            timings = slowest_rank(time_all({
                "w4a16_tp_us": lambda: tp(x),
                "dense_tp_us": lambda: dense_tp(x),
                "allreduce_us": lambda: dist.all_reduce(reduced, group=group),
            }, args, distributed=True))
            if rank == 0:
                # One GPU, unsharded, while the other ranks wait at the barrier below.
                timings.update(time_all({"w4a16_1gpu_us": lambda: reference(x)}, args))
            barrier()
            row = {"batch": batch, **timings}
            if rank == 0:
                row["speedup"] = row["dense_tp_us"] / row["w4a16_tp_us"]
                row["tp_speedup_over_1gpu"] = row["w4a16_1gpu_us"] / row["w4a16_tp_us"]
                results.append(row)
                print(f"batch {batch}: W4A16 TP {row['w4a16_tp_us']:.1f} us, dense TP {row['dense_tp_us']:.1f} us, "
                      f"{row['speedup']:.2f}x", flush=True)

    if rank == 0:
        meta = meta_of(args, "torchrun", world_size, device)
        print()
        print_checks(checks)
        print()
        print(f"Llama-3-70B MLP block ({args.hidden} -> {args.intermediate} -> {args.hidden}), tensor-parallel over "
              f"{world_size} GPUs, W4A16 {args.dtype}{'+zeros' if args.zeros else ''} group {args.group}"
              f"{' act-order (folded)' if args.act_order else ''} vs dense {args.dtype} nn.Linear TP, "
              f"{meta['device']}, CUDA graphs, median of {args.repeats} replays of {args.calls} blocks, slowest rank")
        print()
        print("| batch | W4A16 TP us | dense TP us | speedup | all-reduce us | W4A16 1 GPU us | "
              "TP speedup over 1 GPU |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['batch']} | {r['w4a16_tp_us']:.1f} | {r['dense_tp_us']:.1f} | {r['speedup']:.2f}x | "
                  f"{r['allreduce_us']:.1f} | {r['w4a16_1gpu_us']:.1f} | {r['tp_speedup_over_1gpu']:.2f}x |")
        if args.json:
            write_json(args.json, {"environment": meta, "checks": checks, "results": results})
    barrier()
    dist.destroy_process_group()
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# --simulate: every rank's shards on one GPU, in sequence.


def run_simulated(args):
    world_size = args.world_size
    device = torch.device("cuda", torch.cuda.current_device())
    dtype = DTYPES[args.dtype]
    started = time.monotonic()
    gate, up, down = build_layers(args)
    folded = fold(gate, up, down)
    ranks = [MLP(*w4a16_layers(shard_block(folded, world_size, r), device)) for r in range(world_size)]
    del folded
    reference = MLP(*w4a16_layers((gate, up, down), device))
    del gate, up, down
    width = args.intermediate // world_size
    shard_shapes = [(width, args.hidden), (width, args.hidden), (args.hidden, width)]
    dense_shard = MLP(*dense_layers(shard_shapes, dtype, device))  # every rank's shard has this shape
    dense_full = MLP(*dense_layers([(args.intermediate, args.hidden)] * 2 + [(args.hidden, args.intermediate)],
                                   dtype, device))
    print(f"{world_size} simulated ranks on {torch.cuda.get_device_name(device)}, layers built and sharded in "
          f"{time.monotonic() - started:.1f} s", flush=True)

    checks, results = [], []
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.empty(batch, args.hidden, dtype=dtype, device=device).uniform_(-1, 1)
            h = torch.empty(batch, width, dtype=dtype, device=device).uniform_(-1, 1)
            # In place of the all-reduce: the partial outputs summed in float32, rounded once to the
            # activation type (NCCL's sum of two ranks rounds once, too).
            y = sum(mlp(x).float() for mlp in ranks).to(dtype)
            error = relative_error(y, reference(x))
            checks.append({"batch": batch, "relative_error": error, "tolerance": args.tolerance,
                           "ok": error <= args.tolerance})

            functions = {}
            for r, mlp in enumerate(ranks):
                functions[f"w4a16_rank{r}_block_us"] = lambda mlp=mlp: mlp(x)
            functions.update({
                "dense_shard_block_us": lambda: dense_shard(x),
                "w4a16_gate_us": lambda: ranks[0].gate(x),
                "dense_gate_us": lambda: dense_shard.gate(x),
                "w4a16_up_us": lambda: ranks[0].up(x),
                "dense_up_us": lambda: dense_shard.up(x),
                "w4a16_down_us": lambda: ranks[0].down(h),
                "dense_down_us": lambda: dense_shard.down(h),
                "w4a16_1gpu_us": lambda: reference(x),
                "dense_1gpu_us": lambda: dense_full(x),
            })
            row = {"batch": batch, **time_all(functions, args)}
            row["shard_speedup"] = row["dense_shard_block_us"] / row["w4a16_rank0_block_us"]
            row["1gpu_speedup"] = row["dense_1gpu_us"] / row["w4a16_1gpu_us"]
            results.append(row)
            print(f"batch {batch}: W4A16 rank-0 shard block {row['w4a16_rank0_block_us']:.1f} us, dense shard "
                  f"{row['dense_shard_block_us']:.1f} us, {row['shard_speedup']:.2f}x", flush=True)

    meta = meta_of(args, "simulate", world_size, device)
    print()
    print_checks(checks)
    print()
    print(f"Llama-3-70B MLP block ({args.hidden} -> {args.intermediate} -> {args.hidden}), {world_size} TP ranks "
          f"simulated on one {meta['device']}, W4A16 {args.dtype}{'+zeros' if args.zeros else ''} group {args.group}"
          f"{' act-order (folded)' if args.act_order else ''} vs dense {args.dtype} nn.Linear, CUDA graphs, median "
          f"of {args.repeats} replays of {args.calls} calls; per-rank shards without the all-reduce")
    print()
    ranks_header = " | ".join(f"W4A16 rank {r} shard us" for r in range(world_size))
    print(f"| batch | {ranks_header} | dense shard us | speedup | W4A16 1 GPU us | dense 1 GPU us | speedup |")
    print("|---:|" + "---:|" * (world_size + 5))
    for r in results:
        per_rank = " | ".join(f"{r[f'w4a16_rank{i}_block_us']:.1f}" for i in range(world_size))
        print(f"| {r['batch']} | {per_rank} | {r['dense_shard_block_us']:.1f} | {r['shard_speedup']:.2f}x | "
              f"{r['w4a16_1gpu_us']:.1f} | {r['dense_1gpu_us']:.1f} | {r['1gpu_speedup']:.2f}x |")
    print()
    print("Rank 0's shard GEMMs (out x in):")
    print()
    print("| batch | GEMM | shape | W4A16 us | dense us | speedup |")
    print("|---:|---|---|---:|---:|---:|")
    shapes = {"gate": shard_shapes[0], "up": shard_shapes[1], "down": shard_shapes[2]}
    for r in results:
        for name, (n, k) in shapes.items():
            print(f"| {r['batch']} | {name} | {n}x{k} | {r[f'w4a16_{name}_us']:.1f} | {r[f'dense_{name}_us']:.1f} | "
                  f"{r[f'dense_{name}_us'] / r[f'w4a16_{name}_us']:.2f}x |")
    print()
    print(f"The {world_size}-GPU timing was not run (--simulate): no all-reduce, no second GPU. On a machine with "
          f"{world_size} GPUs: torchrun --nproc-per-node {world_size} examples/tensor_parallel_mlp.py"
          f"{' --act-order' if args.act_order else ''}")
    if args.json:
        write_json(args.json, {"environment": meta, "checks": checks, "results": results,
                               "two_gpu_timing": "not run (--simulate)"})
    return 0 if all(c["ok"] for c in checks) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", action="store_true", help="one GPU: every rank's shards in sequence")
    parser.add_argument("--world-size", type=int, default=2, help="ranks to simulate (--simulate only)")
    parser.add_argument("--act-order", action="store_true", help="down_proj with a GPTQ act-order permutation")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--zeros", action="store_true", help="W4A16 weights with zero points")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--intermediate", type=int, default=28672)
    parser.add_argument("--batches", default="1,16,256", help="comma-separated token counts")
    parser.add_argument("--calls", type=int, default=20, help="blocks per CUDA-graph replay")
    parser.add_argument("--repeats", type=int, default=9, help="timed replays (median)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of untimed replays first")
    parser.add_argument("--tolerance", type=float, help="relative Frobenius bound (default: 2e-3 fp16, 1.6e-2 bf16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tolerance is None:
        args.tolerance = TOLERANCES[args.dtype]
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this example needs a GPU")
    if args.simulate:
        return run_simulated(args)
    if "RANK" not in os.environ:
        sys.exit("launch with torchrun --nproc-per-node 2 examples/tensor_parallel_mlp.py, "
                 "or pass --simulate for one GPU")
    return run_distributed(args)


if __name__ == "__main__":
    sys.exit(main())
