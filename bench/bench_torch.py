#!/usr/bin/python3
"""PyTorch (Debian python3-torch) on the benchmark suite, in bnorm_bench's JSON schema.

  /usr/bin/python3 bench/bench_torch.py --samples SAMPLES.json --out torch.json [--threads 1,2]

Each case uses bnorm_bench's input (the same formula, in the same memory order) and its
parameters (gamma 1.5, beta 0.25, running mean 0 and variance 1, epsilon 1e-5). Modes:

  train     F.batch_norm in training mode (batch statistics, running statistics updated)
  infer     F.batch_norm in inference mode (running statistics)
  backward  aten's native_batch_norm_backward in training mode: dx, dgamma and dbeta from x,
            the upstream gradient dy and the batch statistics (saved by one forward pass
            beforehand, not timed)
  frozen    native_batch_norm_backward with the running statistics, dx only:
            dx = gamma * dy / sqrt(running_var + eps)
  train_bf16, infer_bf16, train_f16, infer_f16
            train and infer on x stored as bfloat16 or float16 (rounded to nearest even), with
            float32 parameters and statistics: PyTorch's mixed type. PyTorch 1.13 has no float16
            batch norm on CPU: those cases report its error.

The upstream gradient dy is a second deterministic tensor, made like x (with its own
constants, see GRADIENT) and in x's memory layout. Before a case's time counts, PyTorch's
output (y; dx for the backward modes) is compared with bnorm's at the sampled positions
bnorm_bench wrote (--samples_out), and the training backward's dgamma and dbeta with bnorm's
at every channel; a case that differs is reported as an error, not a time.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

SUITE = [  # name, N, C, D, H, W, rank: as bench/shapes.hpp
    ("seed_1d_2x4", 2, 4, 1, 1, 1, 2),
    ("bn1d_4096x1024", 4096, 1024, 1, 1, 1, 2),
    ("bn1d_64x128x1024", 64, 128, 1, 1, 1024, 3),
    ("bn1d_smallC_65536x4", 65536, 4, 1, 1, 1, 2),
    ("r50_b1_c64_112", 1, 64, 1, 112, 112, 4),
    ("r50_b1_c256_56", 1, 256, 1, 56, 56, 4),
    ("r50_b1_c1024_14", 1, 1024, 1, 14, 14, 4),
    ("r50_b1_c2048_7", 1, 2048, 1, 7, 7, 4),
    ("r50_b32_c64_56", 32, 64, 1, 56, 56, 4),
    ("r50_b8_c256_56", 8, 256, 1, 56, 56, 4),
    ("bn3d_b2_c32_16x56x56", 2, 32, 16, 56, 56, 5),
]


def spatial_dims(n, c, d, h, w, rank):
    return {2: [], 3: [w], 4: [h, w], 5: [d, h, w]}[rank]


# bnorm_bench's deterministic tensors, in memory order: element i is
# ((i * multiplier) % 10007) / 10007 * scale + shift.
INPUT = dict(multiplier=7919, scale=4.0, shift=-1.5)  # x
GRADIENT = dict(multiplier=104729, scale=2.0, shift=-1.0)  # dy, the upstream gradient


def make_input(count, multiplier, scale, shift):
    i = np.arange(count, dtype=np.int64)
    return (((i * multiplier) % 10007) / 10007.0 * scale + shift).astype(np.float32)


def logical_input(n, c, spatial, layout, formula=INPUT):
    """The tensor in logical (N, C, spatial...) order over bnorm_bench's memory-order buffer."""
    flat = torch.from_numpy(make_input(n * c * int(np.prod(spatial or [1])), **formula))
    if layout == "nchw" or not spatial:
        return flat.view(n, c, *spatial)
    rank = 2 + len(spatial)
    return flat.view(n, *spatial, c).permute(0, rank - 1, *range(1, rank - 1))


def memory_order(y, layout):
    if layout == "nchw" or y.dim() == 2:
        return y.contiguous().flatten()
    return y.permute(0, *range(2, y.dim()), 1).contiguous().flatten()


HALF = {"bf16": torch.bfloat16, "f16": torch.float16}


def case_function(mode, x, dy, weight, bias, mean, var):
    """The function timed for one mode; it returns the output checked against bnorm's (y, or
    dx for the backward modes; the training backward's (dx, dgamma, dbeta))."""
    base, _, storage = mode.partition("_")
    if storage in HALF:
        x = x.to(HALF[storage])  # keeps x's memory format
        training = base == "train"
        return lambda: F.batch_norm(x, mean, var, weight, bias, training, 0.1, 1e-5)
    if mode in ("train", "infer"):
        training = mode == "train"
        return lambda: F.batch_norm(x, mean, var, weight, bias, training, 0.1, 1e-5)
    if mode == "backward":
        # The batch statistics, as the forward pass saves them (on copies of the running
        # statistics, which it would update).
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
            x, weight, bias, mean.clone(), var.clone(), True, 0.1, 1e-5)
        return lambda: torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, mean, var, save_mean, save_invstd, True, 1e-5, [True, True, True])
    assert mode == "frozen"
    return lambda: torch.ops.aten.native_batch_norm_backward(
        dy, x, weight, mean, var, None, None, False, 1e-5, [True, False, False])[0]


def worst_relative_error(pairs):
    """max |got − expected| / (1 + |expected|) over (got, expected) pairs; inf where a pair holds
    a NaN, which no tolerance accepts (max() would drop it), and where there are none."""
    worst = float("inf") if not pairs else 0.0
    for got, expected in pairs:
        error = abs(got - expected) / (1 + abs(expected))
        if error != error:
            return float("inf")
        worst = max(worst, error)
    return worst


def time_case(fn, min_time, repetitions):
    fn()
    fn()
    times = []
    for _ in range(repetitions):
        iterations, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < min_time:
            fn()
            iterations += 1
            elapsed = time.perf_counter() - start
        times.append(elapsed / iterations * 1e6)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--min_time", type=float, default=0.05)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--filter", default="")
    args = parser.parse_args()
    with open(args.samples) as f:
        samples = json.load(f)
    threads_list = sorted({int(t) for t in args.threads.split(",")})
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for name, n, c, d, h, w, rank in SUITE:
            spatial = spatial_dims(n, c, d, h, w, rank)
            for layout in ("nchw", "nhwc"):
                for mode in ("train", "infer", "backward", "frozen", "train_bf16",
                             "infer_bf16", "train_f16", "infer_f16"):
                    case = f"{name}/{layout}/{mode}/threads:{threads}"
                    if args.filter and args.filter not in case:
                        continue
                    x = logical_input(n, c, spatial, layout)
                    weight = torch.full((c,), 1.5)
                    bias = torch.full((c,), 0.25)
                    mean, var = torch.zeros(c), torch.ones(c)
                    dy = None
                    if mode in ("backward", "frozen"):
                        # In x's memory layout (channels-last strides for nhwc).
                        dy = logical_input(n, c, spatial, layout, GRADIENT)
                    with torch.no_grad():
                        run = case_function(mode, x, dy, weight, bias, mean, var)

                    entry = {"name": case + "/pytorch", "run_name": case + "/pytorch",
                             "run_type": "aggregate", "aggregate_name": "median", "time_unit": "us",
                             "repetitions": args.repetitions, "threads": threads}
                    try:
                        with torch.no_grad():
                            out = run()
                            parameters = {}
                            if mode == "backward":
                                out, parameters["dgamma"], parameters["dbeta"] = out
                            y = memory_order(out, layout).float().numpy()
                    except RuntimeError as e:  # float16 on CPU
                        entry.update(error_occurred=True, error_message=str(e)[:80])
                        results.append(entry)
                        print(f"{entry['name']:60s} {str(e)[:60]}", flush=True)
                        continue
                    key = f"{name}/{layout}/{mode}/threads:1/bnorm"
                    expected = samples.get(key, [])
                    # A position in every channel and 64 over the tensor (bench_bnorm.cpp's
                    # sample_positions).
                    worst = worst_relative_error([(float(y[i]), v) for i, v in expected])
                    # dgamma and dbeta: every channel, within float32 sums of the batch's values
                    # (as the oneDNN check in bench_bnorm.cpp).
                    worst_parameter = max(
                        (worst_relative_error([(float(got[c]), v)
                                               for c, v in samples.get(f"{key}/{what}", [])])
                         for what, got in parameters.items()), default=0.0)
                    # Half outputs: an ulp of theirs apart where the two round differently.
                    if not worst <= (1e-2 if "_" in mode else 1e-4):
                        entry.update(error_occurred=True,
                                     error_message=f"PyTorch output differs from bnorm's by {worst:g}")
                    elif not worst_parameter <= 1e-3:
                        entry.update(error_occurred=True,
                                     error_message="PyTorch dgamma or dbeta differs from bnorm's by "
                                                   f"{worst_parameter:g}")
                    else:
                        mean.zero_()
                        var.fill_(1.0)
                        with torch.no_grad():
                            times = time_case(run, args.min_time, args.repetitions)
                        entry["real_time"] = statistics.median(times)
                        # Each repetition too, as bnorm_bench writes them: the report takes
                        # the median over the rounds of the harness.
                        results += [{"name": case + "/pytorch", "run_name": case + "/pytorch",
                                     "run_type": "iteration", "repetition_index": i,
                                     "time_unit": "us", "real_time": t, "threads": threads}
                                    for i, t in enumerate(times)]
                    results.append(entry)
                    print(f"{entry['name']:60s} "
                          f"{entry.get('real_time', float('nan')):12.1f} us "
                          f"{entry.get('error_message', '')}", flush=True)
    context = {"torch_version": torch.__version__, "num_cpus": os.cpu_count(),
               "python": sys.version.split()[0]}
    with open(args.out, "w") as f:
        json.dump({"context": context, "benchmarks": results}, f, indent=1)


if __name__ == "__main__":
    main()
