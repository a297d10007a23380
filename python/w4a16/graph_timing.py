"""CUDA-graph timing for the benchmarks and examples (bench/llama_layer.py,
examples/tensor_parallel_mlp.py): a graph of many back-to-back evaluations, so that neither
launch gaps nor Python are in the measurement. Needs torch."""

import torch


def capture(evaluate, evaluations):
    """A CUDA graph of `evaluations` back-to-back evaluate() calls, warmed up first on a side stream
    (which also creates what the calls create once, such as the W4A16 runner, cuBLAS's handles or
    NCCL's communicator, before the capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            evaluate()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(evaluations):
            evaluate()
    return graph


def replay_us(graph, evaluations):
    """One timed replay of `graph`: microseconds per evaluation."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) * 1000.0 / evaluations
