"""Inference latency of our RT-DETR against transformers' RTDetrForObjectDetection.

For r18vd and r50vd: build transformers' model with random weights (pure-torch path, the configs and
weights of rtdetr.model.testing, as in tests/model/test_hf_parity.py), convert the weights to ours, check
that the outputs agree, then time in one process, in interleaved rounds (every round runs each
variant once, in a rotating order, so that the machine's noise is shared fairly):

- ours eager (as converted, no fusion),
- ours deploy-fused (`RTDETR.deploy()`),
- transformers eager (its default attention implementation).

All under `torch.inference_mode`, the same `torch.set_num_threads`, batch 1. Prints a Markdown table
(median and p90 ms, ratio ours / transformers on the median) and writes JSON. Target: ours
(deploy-fused) <= 0.85x transformers' median latency.

    python bench/model_latency.py [--models r18vd r50vd] [--size 640] [--threads N]
                                  [--warmup 10] [--iters 50] [--out bench/results/model_latency.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from common import command_line, cpu_name, machine, target_verdict, write_report
from torch import nn

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_latency.json"
TARGET_RATIO = 0.85
VARIANTS = ("ours_eager", "ours_fused", "transformers")


def build_pair(name: str) -> dict[str, nn.Module]:
    """transformers' model and ours (eager and deploy-fused) with the same random weights, all eval."""
    from transformers import RTDetrForObjectDetection

    from rtdetr.model import build_model
    from rtdetr.model.convert_hf import hf_state_dict_to_ours, model_args_from_hf_config
    from rtdetr.model.testing import hf_config, randomize_

    config = hf_config(name)
    torch.manual_seed(0)
    hf = randomize_(RTDetrForObjectDetection(config), seed=1).eval()
    with torch.no_grad():  # as in the parity test: keep masked (all-equal) tokens out of the top-k
        hf.model.enc_output[0].bias.zero_()
    ours = build_model(**model_args_from_hf_config(config)).eval()
    ours.load_state_dict(hf_state_dict_to_ours(hf.state_dict()), strict=True)
    fused = copy.deepcopy(ours).deploy()
    return {"ours_eager": ours, "ours_fused": fused, "transformers": hf}


def run(variant: str, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, Q, C], boxes [B, Q, 4]) of one forward pass."""
    if variant == "transformers":
        out = model(pixel_values=images)
        return out.logits, out.pred_boxes
    out = model(images)
    return out["pred_logits"], out["pred_boxes"]


def max_set_difference(ref: tuple[torch.Tensor, ...], out: tuple[torch.Tensor, ...]) -> float:
    """Largest |difference| of (logits, box) rows after matching each query to its counterpart.

    In float32, proposals whose scores differ by ~1e-6 can swap order, which only permutes the
    (set-valued) queries, so rows are matched (Hungarian on L-inf distance) before comparing.
    """
    from scipy.optimize import linear_sum_assignment

    worst = 0.0
    for b in range(ref[0].shape[0]):
        a = torch.cat([ref[0][b], ref[1][b]], 1).double()
        c = torch.cat([out[0][b], out[1][b]], 1).double()
        rows, cols = linear_sum_assignment(torch.cdist(a, c, p=float("inf")).numpy())
        worst = max(worst, (a[rows] - c[cols]).abs().max().item())
    return worst


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bench_model(name: str, size: tuple[int, int], warmup: int, iters: int, tol: float) -> dict:
    models = build_pair(name)
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        outputs = {v: run(v, m, images) for v, m in models.items()}
    diffs = {v: max_set_difference(outputs["transformers"], outputs[v]) for v in VARIANTS[:2]}
    for variant, diff in diffs.items():
        if not diff <= tol:
            raise SystemExit(f"{name}: {variant} disagrees with transformers (max |diff| {diff:.3g} > {tol})")

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for i in range(warmup + iters):
            shift = i % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:  # rotate who goes first
                start, cpu_start = time.perf_counter(), time.process_time()
                run(variant, models[variant], images)
                elapsed = (time.perf_counter() - start) * 1e3
                if i >= warmup:
                    times[variant].append(elapsed)
                    cpu_times[variant].append((time.process_time() - cpu_start) * 1e3)

    stats = {
        v: {
            "median_ms": statistics.median(t),
            "p90_ms": percentile(t, 0.9),
            "min_ms": min(t),
            # CPU time of the process (all threads): less sensitive than wall time to other load
            "cpu_median_ms": statistics.median(cpu_times[v]),
            "times_ms": t,
        }
        for v, t in times.items()
    }
    ref = stats["transformers"]["median_ms"]
    for v in VARIANTS[:2]:
        stats[v]["ratio_vs_transformers"] = stats[v]["median_ms"] / ref
    return {
        "model": name,
        "max_abs_diff_vs_transformers": diffs,
        "parameters_m": sum(p.numel() for p in models["ours_eager"].parameters()) / 1e6,
        "variants": stats,
    }


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| model | variant | median ms | p90 ms | ratio vs transformers (median) | min ms | CPU ms (median) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for v in VARIANTS:
            s = res["variants"][v]
            ratio = f"{s['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in s else "1.00x"
            lines.append(
                f"| {res['model']} | {v} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {ratio} "
                f"| {s['min_ms']:.1f} | {s['cpu_median_ms']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["r18vd", "r50vd"], choices=["r18vd", "r50vd"])
    parser.add_argument("--size", type=int, nargs="+", default=[640], help="H [W] (default 640 640)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="default: all cores")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--tol", type=float, default=1e-3, help="max |diff| to transformers' outputs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if len(args.size) > 2 or args.iters < 1 or args.warmup < 0:
        parser.error("--size takes H [W]; --iters must be >= 1 and --warmup >= 0")
    size = (args.size[0], args.size[-1])

    import transformers

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads "
        f"{torch.get_num_threads()}, CPU {cpu_name()}, batch 1, {size[0]}x{size[1]}, "
        f"warmup {args.warmup}, iters {args.iters}",
        file=sys.stderr,
    )
    results = []
    for name in args.models:
        print(f"{name}: building and checking outputs ...", file=sys.stderr)
        results.append(bench_model(name, size, args.warmup, args.iters, args.tol))
        r = results[-1]["variants"]
        print(
            f"{name}: ours eager {r['ours_eager']['median_ms']:.1f} ms, fused {r['ours_fused']['median_ms']:.1f} ms,"
            f" transformers {r['transformers']['median_ms']:.1f} ms",
            file=sys.stderr,
        )

    print(markdown_table(results))
    passed = all(r["variants"]["ours_fused"]["ratio_vs_transformers"] <= TARGET_RATIO for r in results)
    target = target_verdict(f"ours (deploy-fused) <= {TARGET_RATIO}x transformers", TARGET_RATIO, passed)
    report = {
        "benchmark": "model_latency",
        "command": command_line(argv),
        "machine": machine(torch.get_num_threads(), transformers=transformers.__version__),
        "settings": {
            "batch": 1,
            "size": list(size),
            "warmup": args.warmup,
            "iters": args.iters,
            "dtype": "float32",
            "inference_mode": True,
            "transformers_attn_implementation": "default (sdpa), disable_custom_kernels=True",
        },
        **target,
        "results": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
