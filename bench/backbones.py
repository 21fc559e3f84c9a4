"""Backbones: size and cost of every registered backbone, and CPU latency of each family's smallest.

For every name `rtdetr.model.available_backbones()` lists, on the meta device (shapes only, no
memory for weights or activations): the parameters of the backbone alone as RT-DETR builds it
(return levels [1, 2, 3]), the parameters of the whole detector at 80 classes (`build_model`'s
defaults: hidden 256, 6 decoder layers, 300 queries), and the detector's and the backbone's GFLOPs
of one 640x640 forward pass (`count_flops`: a multiply-add counts 2). Names that are aliases of
another (TAO's fan_*_p4_hybrid) are counted too and folded into their short name's row of the table
once their numbers are found equal.

Then, for --latency-names (by default the smallest variant of each family), the batch-1 640x640
CPU latency in ONNX Runtime FP32: each detector is built with random weights, exported with
`export_onnx` (fixed batch 1, deploy-fused), and opened as `OnnxBackend` sessions (CPU provider,
--threads intra-op threads) in this one process; after --warmup untimed rounds, --iters rounds run
every session once on the same random image, rotating the order, --pause seconds apart. Reports
median, p25, p90 and min per name, and the paired ratio to the first name (the median over rounds
of the ratio within a round). The load averages before and after are recorded: on a shared machine
other jobs inflate the absolute numbers, while the interleaving slows every session alike. Prints
Markdown tables and writes JSON.

    python bench/backbones.py [--latency-names resnet_18 ...] [--warmup 3] [--iters 15]
                              [--threads 2] [--pause 0.05] [--out bench/results/backbones.json]
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import argument_parser, command_line, machine, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "backbones.json"
LATENCY_NAMES = [
    "resnet_18",
    "resnet_18vd",
    "convnext_tiny",
    "convnextv2_atto",
    "efficientvit_b0",
    "fan_tiny",
]
SIZE = 640
NUM_CLASSES = 80
RETURN_IDX = [1, 2, 3]


def family(name: str) -> str:
    """The family a registered name belongs to (the module that registers it, v1/v2 and B/L apart)."""
    if name.startswith("resnet_"):
        return "ResNet-vd" if name.endswith("vd") else "ResNet"
    if name.startswith("convnextv2_"):
        return "ConvNeXt-V2"
    if name.startswith("convnext_"):
        return "ConvNeXt"
    if name.startswith("efficientvit_"):
        return f"EfficientViT-{name.removeprefix('efficientvit_')[0].upper()}"
    if name.startswith("fan_"):
        return "FAN-Hybrid"
    return "other"


def aliases() -> dict[str, str]:
    """{alias: the short name it names the same network as}."""
    from rtdetr.model.backbones import fan

    return {alias: f"fan_{variant}" for alias, variant in fan.ALIASES.items()}


def measure_size(name: str) -> dict:
    """Parameters of the backbone and of the detector, and GFLOPs at SIZE x SIZE, on the meta device."""
    from rtdetr.model import build_backbone, build_model
    from rtdetr.model.profiling import count_flops, count_parameters

    with torch.device("meta"):
        backbone = build_backbone(name, RETURN_IDX)
        detector = build_model(num_classes=NUM_CLASSES, backbone=name)
    return {
        "name": name,
        "family": family(name),
        "backbone_params": count_parameters(backbone),
        "detector_params": count_parameters(detector),
        "backbone_gflops": count_flops(backbone, SIZE, SIZE) / 1e9,
        "detector_gflops": count_flops(detector, SIZE, SIZE) / 1e9,
        "out_channels": list(backbone.out_channels),
        "out_strides": list(backbone.out_strides),
    }


def export(name: str, folder: Path) -> Path:
    """The detector with ``name``'s backbone, random weights, exported for batch 1 at SIZE x SIZE."""
    from rtdetr.deploy.export import export_onnx
    from rtdetr.model import build_model
    from rtdetr.model.checkpoint import ModelMetadata

    torch.manual_seed(0)
    section = {"backbone": name, "num_classes": NUM_CLASSES}
    model = build_model(num_classes=NUM_CLASSES, backbone=name).eval()
    meta = ModelMetadata(model=section, num_classes=NUM_CLASSES, input_size=[SIZE, SIZE])
    return export_onnx(model, meta, folder / f"{name}.onnx", height=SIZE, width=SIZE, batch_size=1)


def time_sessions(files: dict[str, Path], args) -> dict[str, dict]:
    """Interleaved timing of one OnnxBackend session per file (see the module docstring)."""
    from rtdetr.deploy import OnnxBackend

    names = list(files)
    sessions = {n: OnnxBackend(files[n], device="cpu", threads=args.threads).session for n in names}
    image = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    finite = {}
    for n in names:  # one untimed check run: the outputs TAO's contract names, finite
        logits, boxes = sessions[n].run(["pred_logits", "pred_boxes"], {"inputs": image})
        if logits.shape != (1, 300, NUM_CLASSES) or boxes.shape != (1, 300, 4):
            raise SystemExit(f"{n}: unexpected output shapes {logits.shape}, {boxes.shape}")
        finite[n] = bool(np.isfinite(logits).all() and np.isfinite(boxes).all())
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.iters):
        for k in range(len(names)):
            n = names[(k + r) % len(names)]
            time.sleep(args.pause)  # the previous session's idle threads stop spinning
            start = time.perf_counter()
            sessions[n].run(["pred_logits", "pred_boxes"], {"inputs": image})
            if r >= args.warmup:
                times[n].append(1000 * (time.perf_counter() - start))
        print(f"round {r + 1}/{args.warmup + args.iters}", file=sys.stderr)
    first = times[names[0]]
    return {
        n: {
            "median_ms": statistics.median(t),
            "p25_ms": float(np.percentile(t, 25)),
            "p90_ms": float(np.percentile(t, 90)),
            "min_ms": min(t),
            # the median over rounds of the ratio to the first name's run in the same round (both a
            # moment apart): less moved by load that comes and goes than the ratio of the medians
            "vs_first_paired": statistics.median(a / b for a, b in zip(t, first)),
            "outputs_finite": finite[n],
            "onnx_mb": files[n].stat().st_size / 1e6,
            "times_ms": t,
        }
        for n, t in times.items()
    }


def size_table(sizes: list[dict]) -> str:
    alias_of = aliases()
    folded: dict[str, list[str]] = {}
    for alias, short in alias_of.items():
        folded.setdefault(short, []).append(alias)
    lines = [
        f"| backbone | also named | family | backbone params (M) | detector params (M), {NUM_CLASSES} classes "
        f"| detector GFLOPs {SIZE} | backbone GFLOPs {SIZE} |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for s in sizes:
        if s["name"] in alias_of:
            continue
        also = ", ".join(folded.get(s["name"], []))
        lines.append(
            f"| {s['name']} | {also} | {s['family']} | {s['backbone_params'] / 1e6:.2f} "
            f"| {s['detector_params'] / 1e6:.2f} | {s['detector_gflops']:.1f} | {s['backbone_gflops']:.1f} |"
        )
    return "\n".join(lines)


def latency_table(latency: dict[str, dict], sizes: dict[str, dict]) -> str:
    first = next(iter(latency))
    lines = [
        f"| backbone | family | median ms | p25 ms | p90 ms | min ms | vs {first}, paired "
        "| detector GFLOPs | ONNX MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in latency.items():
        lines.append(
            f"| {name} | {family(name)} | {s['median_ms']:.1f} | {s['p25_ms']:.1f} | {s['p90_ms']:.1f} "
            f"| {s['min_ms']:.1f} | {s['vs_first_paired']:.2f}x | {sizes[name]['detector_gflops']:.1f} "
            f"| {s['onnx_mb']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--latency-names", nargs="*", default=LATENCY_NAMES, help="backbones to time (none: skip)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3, help="rounds not timed")
    parser.add_argument("--iters", type=int, default=15, help="timed rounds")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds before each timed run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")

    import onnxruntime
    import timm

    from rtdetr.model import available_backbones

    names = available_backbones()
    unknown = [n for n in args.latency_names if n not in names]
    if unknown:
        parser.error(f"--latency-names: unknown {unknown}; available: {', '.join(names)}")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()

    sizes = []
    for name in names:
        sizes.append(measure_size(name))
        s = sizes[-1]
        print(
            f"{name}: backbone {s['backbone_params'] / 1e6:.2f}M, detector {s['detector_params'] / 1e6:.2f}M, "
            f"{s['detector_gflops']:.1f} GFLOPs",
            file=sys.stderr,
        )
    by_name = {s["name"]: s for s in sizes}
    keys = ("backbone_params", "detector_params", "backbone_gflops", "detector_gflops")
    for alias, short in aliases().items():
        by_name[alias]["alias_of"] = short
        if any(by_name[alias][k] != by_name[short][k] for k in keys):
            raise SystemExit(f"{alias} differs from {short}, whose row it would be folded into")

    latency: dict[str, dict] = {}
    load_latency_start = os.getloadavg()
    if args.latency_names:
        with tempfile.TemporaryDirectory(prefix="rtdetr_backbones_bench_") as tmp:
            files = {}
            for name in args.latency_names:
                print(f"{name}: exporting ...", file=sys.stderr)
                files[name] = export(name, Path(tmp))
            latency = time_sessions(files, args)
    load_end = os.getloadavg()

    print(size_table(sizes))
    if latency:
        print()
        print(latency_table(latency, by_name))
    report = {
        "benchmark": "backbones",
        "command": command_line(argv),
        "date": datetime.date.today().isoformat(),
        "machine": machine(args.threads, onnxruntime=onnxruntime.__version__, timm=timm.__version__),
        # 1, 5 and 15 minute load averages: other jobs on a shared machine
        "load_average": {"start": load_start, "latency_start": load_latency_start, "end": load_end},
        "settings": {
            "size": [SIZE, SIZE],
            "num_classes": NUM_CLASSES,
            "return_idx": RETURN_IDX,
            "flops": "torch.utils.flop_counter on the meta device, a multiply-add counts 2",
            "latency": "ONNX Runtime FP32, CPU provider, all graph optimisations, batch 1, random weights",
            "threads": args.threads,
            "warmup": args.warmup,
            "iters": args.iters,
            "pause_s": args.pause,
        },
        "wall_s": time.perf_counter() - started,
        "sizes": sizes,
        "latency": latency,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
