#!/usr/bin/python3
"""The benchmark report: merges bnorm_bench's JSON (bnorm, roofline, roofline1, oneDNN),
bench_torch.py's JSON (PyTorch) and the per-ISA runs into a markdown table with the targets
checked, and a PNG chart of % of the roofline per case. Modes: train, infer, backward
(training backward), frozen (backward with the running statistics, dx only), relu and add_relu
(fused inference), train_relu and train_add_relu (fused training), and train_bf16, infer_bf16, train_f16, infer_f16 (half storage).

  /usr/bin/python3 bench/report.py --main main.1.json [--main main.2.json ...] \\
      [--torch torch.1.json --torch torch.2.json ...] \\
      [--isa sse2=sse2.json --isa avx2=avx2.json] --markdown report.md [--chart chart.png]

Every figure is the median of the repetitions of one run of the harness, which measures in
rounds (see load).
"""
import argparse
import json
import math
import platform
import re
import statistics
from collections import defaultdict

NAME = re.compile(r"([^/]+)/(nchw|nhwc)/((?:train_add_relu|train_relu|train|infer|backward|"
                  r"frozen|relu|add_relu)"
                  r"(?:_bf16|_f16)?)/threads:(\d+)/(\w+)")
UNIT = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
FORWARD, BACKWARD = ("train", "infer"), ("backward", "frozen")
# A forward with a fused activation; `unfused` is bnorm's plain forward of the same path (PLAIN)
# then a separate pass.
FUSED = ("relu", "add_relu", "train_relu", "train_add_relu")
PLAIN = {"relu": "infer", "add_relu": "infer", "train_relu": "train", "train_add_relu": "train"}
# The tensor sizes of traffic each mode's bytes/s counts: training reads x twice and writes y,
# inference reads x and writes y; backward reads x and dy twice (a reduce pass, then a map
# pass) and writes dx; frozen backward reads dy and writes dx.
TRAFFIC = {"train": 3, "infer": 2, "backward": 5, "frozen": 2, "relu": 2, "add_relu": 3,
           "train_relu": 3, "train_add_relu": 4}
# Training and inference on bfloat16 or float16 storage (float32 parameters): modes
# train_bf16, infer_f16, ...; their bytes and roofline are the half tensors'.
HALF = ("bf16", "f16")


def base_mode(mode):
    return mode.split("_")[0] if mode.endswith(HALF) else mode


def load(paths, rename=None):
    """{(shape, layout, mode, threads, impl): {"us": .., "bytes": ..}} and the first file's JSON
    context. The harness runs in rounds (bnorm_bench, then PyTorch, again and again), so that
    every implementation is measured over the same span of time: each case's figure is the
    median of its repetitions in all the files given, or of the files' medians when they hold
    only aggregates."""
    samples, aggregates, errors, context = defaultdict(list), defaultdict(list), {}, None
    labels = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if context is None:
            context = data.get("context", {})
        for b in data["benchmarks"]:
            m = NAME.match(b.get("run_name", b["name"]))
            if not m:
                continue
            shape, layout, mode, threads, impl = m.groups()
            key = (shape, layout, mode, int(threads), rename or impl)
            if b.get("error_occurred"):
                errors[key] = b.get("error_message", "error")
                continue
            if b.get("label"):
                labels[key] = b["label"]
            us = b["real_time"] * UNIT[b["time_unit"]]
            sample = (us, b.get("bytes_per_second", 0) * us * 1e-6)
            if b.get("run_type") == "aggregate" or "aggregate_name" in b:
                if b.get("aggregate_name") == "median":
                    aggregates[key].append(sample)
            else:
                samples[key].append(sample)
    rows = {key: {"error": message} for key, message in errors.items()}
    for key in set(samples) | set(aggregates):
        if key in rows:
            continue
        chosen = samples.get(key) or aggregates[key]
        rows[key] = {"us": statistics.median(us for us, _ in chosen),
                     "best": min(us for us, _ in chosen), "bytes": chosen[0][1],
                     "samples": len(chosen), "label": labels.get(key, "")}
    return rows, context or {}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(us):
    if us is None:
        return "-"
    return f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def pct(v):
    """A share, rounded down: a miss never prints as the target it missed (79.6% is 79%)."""
    return f"{math.floor(v)}%"


def times(v):
    """A ratio, rounded down to hundredths (1.499 is 1.49×)."""
    return f"{math.floor(v * 100) / 100:.2f}×"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--main", required=True, action="append",
                    help="bnorm_bench JSON of one round (repeatable)")
    ap.add_argument("--torch", action="append", default=[],
                    help="bench_torch.py JSON of one round (repeatable)")
    ap.add_argument("--isa", action="append", default=[])
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--chart")
    ap.add_argument("--order", help="bnorm_bench --benchmark_list_tests output: the case order "
                    "(the main run interleaves its repetitions at random)")
    args = ap.parse_args()

    rows, context = load(args.main)
    torch_version = None
    if args.torch:
        torch_rows, torch_ctx = load(args.torch)
        rows.update(torch_rows)
        torch_version = torch_ctx.get("torch_version")
    isas = []
    for spec in args.isa:
        isa, path = spec.split("=", 1)
        isa_rows, _ = load([path], rename="bnorm_" + isa)
        rows.update(isa_rows)
        isas.append(isa)

    threads_all = max(k[3] for k in rows)
    cases = []  # (shape, layout, mode) in suite order
    names = list(rows)
    if args.order:
        with open(args.order) as f:
            listed = [m.groups() for m in map(NAME.match, f) if m]
        names = [(g[0], g[1], g[2], int(g[3]), g[4]) for g in listed] + names
    for k in names:
        if (k[0], k[1], k[2]) not in cases:
            cases.append((k[0], k[1], k[2]))

    def get(case, threads, impl, figure="us"):
        r = rows.get((*case, threads, impl))
        return r.get(figure) if r else None

    def bytes_of(case):
        r = rows.get((*case, threads_all, "bnorm")) or {}
        total = r.get("bytes", 0)
        return total / TRAFFIC[base_mode(case[2])]  # the tensor's own size

    lines = []
    versions = [f"bnorm {context.get('bnorm_version', '?')}"]
    if context.get("onednn_version"):
        versions.append(f"oneDNN {context['onednn_version']}")
    if torch_version:
        versions.append(f"PyTorch {torch_version}")
    header = (f"{cpu_name()}, {context.get('num_cpus', '?')} cores used as {threads_all} threads; "
              f"{', '.join(versions)}; float32; {context.get('date', '')}")
    lines.append(f"# bnorm benchmark report\n\n{header}\n")
    lines.append("Median µs at all threads, except `roofline`: the best time of a plain streaming "
                 "pass over the same bytes with the same threads, measured in the same run (the "
                 "benchmark issue's definition), its output written through the cache or around "
                 "it (non-temporal stores), whichever was the faster for the case when the run "
                 "began. `% roof`: the roofline over bnorm's median; "
                 "`% roof med`: the roofline's median over bnorm's, like with like (on this noisy "
                 "machine the best of nine repetitions can be far below their median). `vs peer`: "
                 "the faster peer's time over bnorm's; `bnorm 1T`: bnorm's median on one thread; "
                 "`scaling`: one thread's time over all threads'. Modes: `train`, `infer`, "
                 "`backward` (dx, dγ, dβ from x and dy) and `frozen` (backward with the running "
                 "statistics, dx only); a backward case's `roofline` is the two-pass one (a read "
                 "pass over x and dy, then a pass reading x and dy and writing dx). `roofline "
                 "1-pass` (backward only): the best time of one pass reading x and dy and writing "
                 "dx; `% 1-pass`: it over bnorm's median." +
                 (" Per-ISA columns: bnorm capped with BNORM_MAX_ISA." if isas else "") +
                 " The schedule each case ran is listed after the targets.\n")
    head = ["case", "MiB", "bnorm", "bnorm 1T", "oneDNN", "PyTorch", "roofline", "% roof",
            "% roof med", "roofline 1-pass", "% 1-pass", "vs peer", "scaling"] + [
                f"bnorm {i}" for i in isas]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    summary = []
    untimed = []  # cases bnorm has no time for: left out of the table and of every target
    for case in cases:
        bn = get(case, threads_all, "bnorm")
        if bn is None:
            untimed.append(case)
            continue
        one = get(case, 1, "bnorm")
        roof = get(case, threads_all, "roofline", "best")
        roof_median = get(case, threads_all, "roofline")
        roof1 = get(case, threads_all, "roofline1", "best")  # backward only
        peers = [p for p in (get(case, threads_all, "onednn"), get(case, threads_all, "pytorch"))
                 if p is not None]
        best_peer = min(peers) if peers else None
        mib = round(bytes_of(case) / 2**20, 6)  # bytes/s × time carries rounding: 1 MiB is 1
        rec = dict(case=case, bn=bn, bn_best=get(case, threads_all, "bnorm", "best"), one=one,
                   roof=roof, roof_median=roof_median, roof1=roof1,
                   peer=best_peer, mib=mib,
                   pct=roof / bn * 100 if roof else None,
                   pct_median=roof_median / bn * 100 if roof_median else None,
                   pct1=roof1 / bn * 100 if roof1 else None,
                   speedup=best_peer / bn if best_peer else None,
                   scaling=one / bn if one else None)
        summary.append(rec)
        cells = [f"{case[0]} {case[1]} {case[2]}", f"{mib:.2f}", fmt(bn), fmt(one),
                 fmt(get(case, threads_all, "onednn")), fmt(get(case, threads_all, "pytorch")),
                 fmt(roof), pct(rec['pct']) if rec["pct"] else "-",
                 pct(rec['pct_median']) if rec["pct_median"] else "-",
                 fmt(roof1), pct(rec['pct1']) if rec["pct1"] else "-",
                 times(rec['speedup']) if rec["speedup"] else "-",
                 times(rec['scaling']) if rec["scaling"] else "-"]
        cells += [fmt(get(case, threads_all, "bnorm_" + i)) for i in isas]
        lines.append("| " + " | ".join(cells) + " |")
    # Cases without a time: a peer's output that differs from bnorm's (its time not counted),
    # and calls that failed (a peer that does not run the case, or bnorm refusing it).
    errors = [(f"- {'/'.join(map(str, k))}: {v['error']}", "differs from bnorm's" in v["error"])
              for k, v in rows.items() if "error" in v]
    for title, rejected in (("Rejected peer results (output differed from bnorm's)", True),
                            ("Cases that failed to run", False)):
        listed = [line for line, is_rejection in errors if is_rejection == rejected]
        if listed:
            lines.append(f"\n{title}:\n")
            lines += listed

    # The targets of the benchmark issue, each with the cases that miss it.
    def check(title, selected, ok, show):
        misses = [r for r in selected if not ok(r)]
        status = "met" if not misses else f"missed by {len(misses)} of {len(selected)}"
        lines.append(f"- **{title}**: {status}" + (
            "; " + ", ".join(f"{' '.join(r['case'])} {show(r)}" for r in misses) if misses else ""))

    def versus_roofline(r):
        """A roofline miss, with how far the roofline itself is from its best time (its own
        median as a share of its best), and bnorm like with like: median against median, best
        against best."""
        text = pct(r["pct"])
        if r["roof_median"] and r["bn_best"]:
            text += (f" (the roofline's own median is {pct(r['roof'] / r['roof_median'] * 100)}"
                     f" of its best; median against median {pct(r['pct_median'])}, best against"
                     f" best {pct(r['roof'] / r['bn_best'] * 100)})")
        return text

    big = [r for r in summary if r["mib"] >= 1.0 and r["pct"]]
    lines.append("\n## Targets\n")
    if untimed:
        lines.append(f"Left out of every target, without a bnorm time at {threads_all} threads: "
                     + ", ".join(" ".join(c) for c in untimed) + ".\n")
    forward = [r for r in summary if r["case"][2] in FORWARD]
    check("training ≥ 80% of the roofline (≥ 1 MiB)", [r for r in big if r["case"][2] == "train"],
          lambda r: r["pct"] >= 80, versus_roofline)
    check("inference ≥ 85% of the roofline (≥ 1 MiB)", [r for r in big if r["case"][2] == "infer"],
          lambda r: r["pct"] >= 85, versus_roofline)
    with_peer = [r for r in summary if r["speedup"]]

    def inference_floor(case):
        """This run's fastest pass that reads the case's input once and writes its output once:
        bnorm's inference or the inference roofline. Training moves at least those bytes."""
        infer = (case[0], case[1], "infer")
        times = [t for t in (get(infer, threads_all, "bnorm"),
                             get(infer, threads_all, "roofline", "best")) if t]
        return min(times) if times else None

    def versus_peer(target):
        """A miss, with the bounds it meets. Training reads its input and writes its output at
        least once: below the fastest such pass of this run the target is out of reach. Where
        a block of channels does not fit a core's cache, training reads the input twice (its
        statistics come before any output): below the training roofline's best time (a read
        pass, then a read-write pass, over the same bytes) the target is out of reach for any
        two-pass training. The backward likewise: one read of x and dy and one write of dx
        (`roofline1`) at least, and its two-pass roofline where channels do not fit in cache."""
        def show(r):
            text = times(r["speedup"])
            need = r["peer"] / target
            if r["case"][2] not in FORWARD:
                if r["roof1"]:
                    text += (f" ({target:g}× the peer is {fmt(need)} µs; one read of x and dy and "
                             f"one write of dx took {fmt(r['roof1'])} µs at best in this run, the "
                             f"two-pass roofline {fmt(r['roof'])} µs"
                             + (": out of reach)" if need < r["roof1"] else
                                ": out of reach for two passes)" if need < r["roof"] else ")"))
                return text
            floor = inference_floor(r["case"])
            if floor:
                text += (f" ({target:g}× the peer is {fmt(need)} µs; one read and one write of "
                         f"the same bytes took {fmt(floor)} µs in this run, the training "
                         f"roofline {fmt(r['roof'])} µs at its best"
                         + (": out of reach)" if need < floor else
                            ": out of reach for two passes)" if need < r["roof"] else ")"))
            return text
        return show

    check("training ≥ 3× the faster peer, channels-first",
          [r for r in with_peer if r["case"][2] == "train" and r["case"][1] == "nchw"],
          lambda r: r["speedup"] >= 3, versus_peer(3))
    check("training ≥ 1.25× the faster peer, channels-last",
          [r for r in with_peer if r["case"][2] == "train" and r["case"][1] == "nhwc"],
          lambda r: r["speedup"] >= 1.25, versus_peer(1.25))
    infer_peer = [r for r in with_peer if r["case"][2] == "infer"]
    check("inference never slower than the faster peer", infer_peer,
          lambda r: r["speedup"] >= 1.0, lambda r: times(r["speedup"]))
    if infer_peer:
        geo = math.exp(sum(math.log(r["speedup"]) for r in infer_peer) / len(infer_peer))
        lines.append(f"- **inference ≥ 1.3× the faster peer, geometric mean**: "
                     f"{'met' if geo >= 1.3 else 'missed'} ({times(geo)})")
    small = ("r50_b1_c1024_14", "r50_b1_c2048_7")
    small_forward = [r for r in forward if r["case"][0] in small]
    check("small shapes (ResNet-50 batch 1, 14×14 and 7×7) ≥ 1.5× the faster peer",
          [r for r in small_forward if r["speedup"]],
          lambda r: r["speedup"] >= 1.5, lambda r: times(r["speedup"]))
    check("small shapes never slower than one thread",
          [r for r in small_forward if r["scaling"]],
          lambda r: r["scaling"] >= 1.0, lambda r: times(r["scaling"]))
    check("small shapes ≥ 60% of the roofline", [r for r in small_forward if r["pct"]],
          lambda r: r["pct"] >= 60, versus_roofline)
    seed = [r for r in forward if r["case"][0] == "seed_1d_2x4"]
    check("seed 2×4: training ≤ 0.2 µs, inference ≤ 0.1 µs", seed,
          lambda r: r["bn"] <= (0.2 if r["case"][2] == "train" else 0.1),
          lambda r: f"{r['bn']:.2f} µs")
    check("threads: ≥ 1.7× one thread or ≥ 90% of the all-core roofline (≥ 4 MiB)",
          [r for r in forward if r["mib"] >= 4 and r["scaling"] and r["pct"]],
          lambda r: r["scaling"] >= 1.7 or r["pct"] >= 90,
          lambda r: f"{times(r['scaling'])}, {versus_roofline(r)}")

    # The backward targets (training backward: dx, dγ, dβ; frozen: dx with the running
    # statistics), when the run has backward cases.
    if any(r["case"][2] in BACKWARD for r in summary):
        check("backward ≥ 80% of its two-pass roofline (≥ 1 MiB)",
              [r for r in big if r["case"][2] == "backward"],
              lambda r: r["pct"] >= 80, versus_roofline)
        check("frozen backward (dx only) ≥ 85% of its roofline (≥ 1 MiB)",
              [r for r in big if r["case"][2] == "frozen"],
              lambda r: r["pct"] >= 85, versus_roofline)
        check("backward ≥ 2× the faster peer, channels-first",
              [r for r in with_peer if r["case"][2] == "backward" and r["case"][1] == "nchw"],
              lambda r: r["speedup"] >= 2, versus_peer(2))
        check("backward ≥ 1.3× the faster peer, channels-last",
              [r for r in with_peer if r["case"][2] == "backward" and r["case"][1] == "nhwc"],
              lambda r: r["speedup"] >= 1.3, versus_peer(1.3))
        check("backward and frozen never slower than a peer",
              [r for r in with_peer if r["case"][2] in BACKWARD],
              lambda r: r["speedup"] >= 1.0, lambda r: times(r["speedup"]))
        frozen_peer = [r for r in with_peer if r["case"][2] == "frozen"]
        if frozen_peer:
            geo = math.exp(sum(math.log(r["speedup"]) for r in frozen_peer) / len(frozen_peer))
            lines.append(f"- **frozen dx-only about 3× the best peer, geometric mean**: "
                         f"{'met' if geo >= 3 else 'missed'} ({times(geo)})")
        check("small shapes (ResNet-50 batch 1, 14×14 and 7×7) backward ≥ 1.5× the faster peer",
              [r for r in with_peer if r["case"][0] in small and r["case"][2] in BACKWARD],
              lambda r: r["speedup"] >= 1.5, lambda r: times(r["speedup"]))

    # Fused activations: the fused call against the plain inference of the same case and the
    # unfused pair (plain inference, then a separate activation pass over y).
    fused_rows = []
    for r in summary:
        if r["case"][2] not in FUSED:
            continue
        plain = get((r["case"][0], r["case"][1], PLAIN[r["case"][2]]), threads_all, "bnorm")
        unfused = get(r["case"], threads_all, "unfused")
        fused_rows.append(dict(r, plain=plain, unfused=unfused,
                               over_plain=r["bn"] / plain if plain else None,
                               over_unfused=unfused / r["bn"] if unfused else None))
    if fused_rows:
        lines.append("\n## Fused activations\n")
        lines.append("Inference (`relu`, `add_relu`) and training (`train_relu`, "
                     "`train_add_relu`) with ReLU or add+ReLU in their map pass (`fused`), against "
                     "the plain call of the same path and tensor (`plain`), bnorm's plain call "
                     "followed by a separate activation pass over y (`unfused`), and oneDNN's "
                     "`fuse_norm_relu` (ReLU only; oneDNN fuses no add+ReLU; its training writes "
                     "the ReLU mask to a workspace). Median µs at all threads.\n")
        lines.append("| case | MiB | fused | plain | unfused | oneDNN fused | fused / plain | "
                     "unfused / fused |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in fused_rows:
            lines.append(f"| {' '.join(r['case'])} | {r['mib']:.2f} | {fmt(r['bn'])} | "
                         f"{fmt(r['plain'])} | {fmt(r['unfused'])} | "
                         f"{fmt(get(r['case'], threads_all, 'onednn'))} | "
                         + (times(r['over_plain']) if r['over_plain'] else "-") + " | "
                         + (times(r['over_unfused']) if r['over_unfused'] else "-") + " |")
        lines.append("")
        # add+ReLU reads a third tensor (z): its bound is its own roofline (main table).
        check("fused ReLU costs ≤ 5% more than the plain call",
              [r for r in fused_rows if r["over_plain"] and r["case"][2] in ("relu", "train_relu")],
              lambda r: r["over_plain"] <= 1.05, lambda r: times(r["over_plain"]))

        def versus_unfused(r):
            """A miss, with the fused call's own bound: its roofline at its best (the same bytes
            streamed). The unfused pair's activation pass reads y right after the plain call
            wrote it, from cache, and writes it in place: 1.4× the pair can be below the fused
            call's roofline, out of reach for any fused call."""
            text = times(r["over_unfused"])
            target = r["unfused"] / 1.4
            if r["roof"]:
                text += (f" (1.4× the unfused pair is {fmt(target)} µs; the fused call's "
                         f"roofline {fmt(r['roof'])} µs at its best"
                         + (": out of reach)" if target < r["roof"] else ")"))
            return text
        check("fused ≥ 1.4× the unfused pair (≥ 4 MiB)",
              [r for r in fused_rows if r["over_unfused"] and r["mib"] >= 4],
              lambda r: r["over_unfused"] >= 1.4, versus_unfused)

    # Half storage: bf16 and f16 training and inference against their own roofline (the same
    # bytes), the float32 call and the peers' bf16.
    half_rows = []
    for r in summary:
        if not r["case"][2].endswith(HALF):
            continue
        f32 = get((r["case"][0], r["case"][1], base_mode(r["case"][2])), threads_all, "bnorm")
        half_rows.append(dict(r, over_f32=f32 / r["bn"] if f32 else None))
    if half_rows:
        lines.append("\n## bfloat16 and float16 storage\n")
        lines.append("x and y stored as bfloat16 or float16, gamma, beta and the statistics in "
                     "float32 (PyTorch's mixed type); `roofline` streams the same bytes. `vs f32`: "
                     "bnorm's float32 call on the same shape over this one. oneDNN 2.6 has no "
                     "float16 batch norm on CPU, nor PyTorch 1.13. Median µs at all threads.\n")
        lines.append("| case | MiB | bnorm | bnorm 1T | oneDNN | PyTorch | roofline | % roof | "
                     "vs f32 | vs peer |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in half_rows:
            lines.append(f"| {' '.join(r['case'])} | {r['mib']:.2f} | {fmt(r['bn'])} | "
                         f"{fmt(r['one'])} | {fmt(get(r['case'], threads_all, 'onednn'))} | "
                         f"{fmt(get(r['case'], threads_all, 'pytorch'))} | {fmt(r['roof'])} | "
                         + (pct(r['pct']) if r['pct'] else "-") + " | "
                         + (times(r['over_f32']) if r['over_f32'] else "-") + " | "
                         + (times(r['speedup']) if r['speedup'] else "-") + " |")
        lines.append("")
        check("half-storage inference ≥ 85% of its roofline (≥ 4 MiB)",
              [r for r in half_rows if r["mib"] >= 4 and r["pct"] and
               r["case"][2].startswith("infer")], lambda r: r["pct"] >= 85, versus_roofline)
        check("half-storage training ≥ 80% of its roofline (≥ 4 MiB)",
              [r for r in half_rows if r["mib"] >= 4 and r["pct"] and
               r["case"][2].startswith("train")], lambda r: r["pct"] >= 80, versus_roofline)

        def half_versus_peer(r):
            need = r["peer"] / 2
            return (f"{times(r['speedup'])} (2× the peer is {fmt(need)} µs, the roofline "
                    f"{fmt(r['roof'])} µs at its best" +
                    (": out of reach)" if r["roof"] and need < r["roof"] else ")"))
        check("bf16 ≥ 2× the faster peer's bf16 (≥ 1 MiB)",
              [r for r in half_rows if r["mib"] >= 1 and r["speedup"] and
               r["case"][2].endswith("bf16")], lambda r: r["speedup"] >= 2, half_versus_peer)

    lines.append("\n**Schedules** (bnorm at all threads, from `plan::describe()`):\n")
    for case in cases:
        r = rows.get((*case, threads_all, "bnorm")) or {}
        if r.get("label"):
            lines.append(f"- {case[0]} {case[1]} {case[2]}: {r['label']}")

    with open(args.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")

    if args.chart:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = [" ".join(r["case"]) for r in summary if r["roof"]]
        series = {"bnorm": [], "oneDNN": [], "PyTorch": []}
        for r in summary:
            if not r["roof"]:
                continue
            for impl, key in (("bnorm", "bnorm"), ("oneDNN", "onednn"), ("PyTorch", "pytorch")):
                t = get(r["case"], threads_all, key)
                series[impl].append(r["roof"] / t * 100 if t else 0)
        fig, ax = plt.subplots(figsize=(max(10, len(labels) * 0.42), 6))
        width = 0.27
        for i, (impl, values) in enumerate(series.items()):
            ax.bar([x + (i - 1) * width for x in range(len(labels))], values, width, label=impl)
        ax.axhline(100, color="black", linewidth=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_ylabel("% of the roofline (higher is faster)")
        ax.set_yscale("log")
        ax.set_title(header, fontsize=8)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.chart, dpi=110)


if __name__ == "__main__":
    main()
