"""Convolution weight gradients on this CPU: oneDNN against ATen's im2col + GEMM, per convolution of
the r18vd training model (what `rtdetr.cpu.conv_grad` chooses between).

The convolutions are those of the model of bench/train_throughput.py (the r18vd config, batch 4,
channels-last) at --size, collected with forward hooks. For each distinct shape, in channels-last
layout as `rtdetr train` runs them: the forward pass (oneDNN), the input gradient (oneDNN), and the
weight gradient by oneDNN (``aten::convolution_backward``) and by im2col + GEMM
(``aten::_slow_conv2d_backward``), each the minimum of --iters timed calls after 2 warm-up calls;
the two weight gradients must agree to 1e-4 of their largest value. Totals are per training step
(shapes times their count). Prints a Markdown table and writes JSON.

    python bench/conv_weight_grad.py [--size 320] [--batch 4] [--threads 2] [--iters 7]
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from common import argument_parser, command_line, machine, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "conv_weight_grad.json"


def model_convolutions(size: int, batch: int) -> Counter:
    """(input shape, out channels, kernel, stride, padding) -> count, for one forward pass."""
    from rtdetr.model import build_model
    from rtdetr.model.convert_hf import model_args_from_hf_config
    from rtdetr.model.testing import hf_config

    model = build_model(**model_args_from_hf_config(hf_config("r18vd", num_labels=80))).train()
    shapes: Counter = Counter()

    def hook(module, inputs, _output):
        shapes[(tuple(inputs[0].shape), module.out_channels, module.kernel_size[0], module.stride[0],
                module.padding[0])] += 1  # fmt: skip

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.rand(batch, 3, size, size))
    return shapes


def best_ms(fn, iters: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def time_shape(shape: tuple, iters: int) -> dict:
    (n, c_in, h, w), c_out, k, s, p = shape
    h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cl = torch.channels_last
    x = torch.randn(n, c_in, h, w).contiguous(memory_format=cl)
    weight = (torch.randn(c_out, c_in, k, k) * 0.05).contiguous(memory_format=cl)
    grad_out = torch.randn(n, c_out, h_out, w_out).contiguous(memory_format=cl)

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
        )

    def gemm():
        return torch.ops.aten._slow_conv2d_backward.output_mask(
            grad_out, x, weight, [k, k], [s, s], [p, p], [False, True, False]
        )

    reference, ours = backward([False, True, False])[1], gemm()[1]
    error = float((reference - ours).abs().max() / reference.abs().max())
    if error > 1e-4:
        raise SystemExit(f"{shape}: the weight gradients differ by {error:.1e}")
    return {
        "forward_ms": best_ms(lambda: F.conv2d(x, weight, None, s, p), iters),
        "input_grad_ms": best_ms(lambda: backward([True, False, False]), iters) if c_in > 3 else 0.0,
        "weight_grad_onednn_ms": best_ms(lambda: backward([False, True, False]), iters),
        "weight_grad_gemm_ms": best_ms(gemm, iters),
        "max_rel_diff": error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rtdetr.cpu.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # as `rtdetr train` on the CPU
    rows = []
    for shape, count in model_convolutions(args.size, args.batch).items():
        rows.append({"input": list(shape[0]), "out_channels": shape[1], "kernel": shape[2], "stride": shape[3],
                     "count": count, **time_shape(shape, args.iters)})  # fmt: skip
        print(f"{shape}: {rows[-1]}", file=sys.stderr)
    keys = ("forward_ms", "input_grad_ms", "weight_grad_onednn_ms", "weight_grad_gemm_ms")
    totals = {k: sum(r[k] * r["count"] for r in rows) for k in keys}
    lines = [
        "| input (N, C, H, W) | out | k | s | count | forward ms | input grad ms | weight grad oneDNN ms "
        "| weight grad GEMM ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {tuple(r['input'])} | {r['out_channels']} | {r['kernel']} | {r['stride']} | {r['count']} | "
                     + " | ".join(f"{r[k]:.1f}" for k in keys) + " |")  # fmt: skip
    lines.append("| **per step** | | | | | " + " | ".join(f"**{totals[k]:.0f}**" for k in keys) + " |")
    print("\n".join(lines))
    print(
        f"\nweight gradients per step: GEMM / oneDNN = {totals['weight_grad_gemm_ms'] / totals['weight_grad_onednn_ms']:.2f}"
    )
    write_report(args.out, {
        "benchmark": "conv_weight_grad", "command": command_line(argv), "machine": machine(args.threads),
        "settings": {"size": args.size, "batch": args.batch, "iters": args.iters, "layout": "channels-last"},
        "totals_ms_per_step": totals, "shapes": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
