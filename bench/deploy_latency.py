"""CPU deployment: latency of PyTorch, ONNX Runtime FP32 and INT8, and transformers, and the INT8
accuracy cost, on one trained model.

The model is an r18vd RT-DETR trained on BCCD (by default the checkpoint bench/train_bccd.py leaves
in bench_runs/bccd). For each input size it

1. exports it with `rtdetr export` (fixed batch 1, that size) and quantizes it with `rtdetr quantize`
   (calibrated on --cal-images BCCD train images, the quantize spec's defaults otherwise);
2. loads the same weights into transformers' RTDetrForObjectDetection (ours_state_dict_to_hf) and
   checks that PyTorch, transformers and ONNX Runtime FP32 agree (to 1e-3) on a BCCD test image;
3. times batch-1 inference on a BCCD test image in interleaved rounds (every round runs each variant
   once, rotating the order, after a --settle pause), each variant in a process of its own (so no
   runtime's spinning idle threads compete with the next one): ours in PyTorch eager (deploy-fused, `torch.inference_mode`), ONNX
   Runtime FP32 and INT8 (CPU provider, all graph optimisations), transformers eager; the same
   threads everywhere;
4. evaluates the FP32 and INT8 ONNX files on BCCD's test split with `rtdetr evaluate` (mAP, mAP50).

Targets: ONNX Runtime FP32 <= 0.7x transformers' eager latency; INT8 <= 0.5x ONNX Runtime FP32 with
at most 1 point of mAP50 lost, judged on the ratios of the median latencies. Also printed: the
paired ratios (the median over rounds of the ratio within a round), which load that comes and goes
on a shared machine moves less. Prints Markdown tables and writes JSON.

    python bench/deploy_latency.py [--checkpoint PTH] [--data /path/to/bccd] [--sizes 640 320] [--threads 2]
                                   [--warmup 5] [--iters 30] [--cal-images 100]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import argument_parser, check_bccd, command_line, machine, target_verdict, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "deploy_latency.json"
DEFAULT_CHECKPOINT = Path("bench_runs/bccd/train/rtdetr_model_latest.pth")  # bench/train_bccd.py writes it
VARIANTS = ("pytorch", "ort_fp32", "ort_int8", "transformers")
FP32_TARGET, INT8_TARGET, MAP50_LOSS = 0.7, 0.5, 0.01


def hf_twin(checkpoint: Path):
    """transformers' RTDetrForObjectDetection with the checkpoint's weights (an r18vd model)."""
    from transformers import RTDetrForObjectDetection

    from rtdetr.model.checkpoint import load_model
    from rtdetr.model.convert_hf import ours_state_dict_to_hf
    from rtdetr.model.testing import hf_config

    ours = load_model(checkpoint)
    config = hf_config("r18vd", num_labels=ours.metadata.num_classes)
    config.num_queries = ours.metadata.model["num_queries"]
    hf = RTDetrForObjectDetection(config).eval()
    hf.load_state_dict(ours_state_dict_to_hf(ours.state_dict()), strict=True)
    return hf


def run_task(task: str, spec: dict, folder: Path) -> Path:
    from rtdetr.config import load_spec
    from rtdetr.tasks.runner import run_task as run

    path = folder / f"{task}.yaml"
    path.write_text(json.dumps(spec))
    return run(task, load_spec(path, action=task))


def prepare(size: int, args, folder: Path) -> dict[str, Path]:
    """The FP32 and INT8 ONNX files of the checkpoint at ``size`` (a folder per size: DeepStream's
    files beside each ONNX file)."""
    folder = folder / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "model.onnx", folder / "model_int8.onnx"
    base = {"results_dir": str(folder / f"results_{size}")}
    run_task("export", {**base, "export": {"checkpoint": str(args.checkpoint), "onnx_file": str(fp32),
             "input_width": size, "input_height": size, "batch_size": 1}}, folder)  # fmt: skip
    images = args.data / "images"
    train = json.loads((args.data / "annotations" / "instances_train.json").read_text())["images"]
    cal = [str(images / i["file_name"]) for i in train]
    run_task("quantize", {**base, "quantize": {"onnx_file": str(fp32), "output_file": str(int8),
             "cal_image_dir": cal, "cal_images": args.cal_images}}, folder)  # fmt: skip
    return {"fp32": fp32, "int8": int8}


def evaluate(model: Path, size: int, args, folder: Path) -> dict:
    spec = {
        "results_dir": str(folder / f"eval_{size}_{model.stem}"),
        "dataset": {
            "test_data_sources": {"image_dir": str(args.data / "images"),
                                  "json_file": str(args.data / "annotations" / "instances_test.json")},
            "num_classes": 4, "batch_size": 4, "workers": 2,
        },
        "evaluate": {"checkpoint": str(args.checkpoint), "trt_engine": str(model), "input_width": size,
                     "input_height": size},
    }  # fmt: skip
    out = run_task("evaluate", spec, folder)
    return json.loads((out / "results.json").read_text())["stats"]


def make_runner(name: str, files: dict[str, str], checkpoint: str, threads: int):
    """A callable images -> (pred_logits, pred_boxes) for one variant."""
    from rtdetr.deploy import OnnxBackend, TorchBackend

    torch.set_num_threads(threads)
    if name == "pytorch":
        return TorchBackend.from_checkpoint(checkpoint, device="cpu")  # deploy-fused
    if name.startswith("ort_"):
        return OnnxBackend(files[name.removeprefix("ort_")], device="cpu", threads=threads)
    hf = hf_twin(Path(checkpoint))

    def transformers(images):
        with torch.inference_mode():
            out = hf(pixel_values=images)
        return out.logits.float(), out.pred_boxes.float()

    return transformers


def worker(name: str, files: dict[str, str], checkpoint: str, threads: int, conn) -> None:
    """Serve ("run", images) -> (outputs, ms) and ("stop",) in a process of its own, so that no other
    runtime's threads (e.g. torch's spinning OpenMP pool) share its process."""
    runner = make_runner(name, files, checkpoint, threads)
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd[0] == "stop":
            return
        images = torch.from_numpy(cmd[1])
        start = time.perf_counter()
        out = runner(images)
        ms = 1000 * (time.perf_counter() - start)
        conn.send(([t.detach().numpy() for t in out] if cmd[2] else None, ms))


def bench_size(size: int, args, folder: Path) -> dict:
    import multiprocessing as mp

    from rtdetr.data.images import load_image
    from rtdetr.deploy import TorchBackend
    from rtdetr.deploy.detector import Detector
    from rtdetr.deploy.parity import output_difference

    files = prepare(size, args, folder)
    first = json.loads((args.data / "annotations" / "instances_test.json").read_text())["images"][0]
    detector = Detector(TorchBackend.from_checkpoint(args.checkpoint, device="cpu"), input_size=(size, size))
    image = detector.prepare(load_image(args.data / "images" / first["file_name"]))[0][None].numpy()
    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for name in VARIANTS:
        conns[name], child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, {k: str(v) for k, v in files.items()}, str(args.checkpoint),
                                                args.threads, child), daemon=True)  # fmt: skip
        proc.start()
        procs.append(proc)
    for name in VARIANTS:
        assert conns[name].recv() == "ready", name

    def call(name: str, keep: bool = False):
        time.sleep(args.settle)  # the previous variant's idle threads stop spinning before this one runs
        conns[name].send(("run", image, keep))
        return conns[name].recv()

    ref = [torch.from_numpy(t) for t in call("pytorch", keep=True)[0]]
    agree = {}
    for name in ("transformers", "ort_fp32"):
        agree[name] = output_difference(ref, [torch.from_numpy(t) for t in call(name, keep=True)[0]])
        if agree[name] > 1e-3:
            raise SystemExit(f"{size}: {name} differs from PyTorch by {agree[name]:.2e}")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(args.warmup + args.iters):
        for name in VARIANTS[i % 4 :] + VARIANTS[: i % 4]:
            ms = call(name)[1]
            if i >= args.warmup:
                times[name].append(ms)
    for name in VARIANTS:
        conns[name].send(("stop",))
    for proc in procs:
        proc.join(timeout=60)
    stats = {name: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "min_ms": min(t)}
             for name, t in times.items()}  # fmt: skip
    accuracy = {name: evaluate(path, size, args, folder) for name, path in files.items()}
    return {
        "size": size,
        "max_abs_diff_vs_pytorch": agree,
        "latency": stats,
        "times_ms": times,
        "fp32_vs_transformers": stats["ort_fp32"]["median_ms"] / stats["transformers"]["median_ms"],
        "int8_vs_fp32": stats["ort_int8"]["median_ms"] / stats["ort_fp32"]["median_ms"],
        # the median over rounds of the ratio within a round (both runs a moment apart, so sharing the
        # machine's state): less moved by load that comes and goes than the ratio of the medians
        "paired": {
            "fp32_vs_transformers": _paired(times["ort_fp32"], times["transformers"]),
            "int8_vs_fp32": _paired(times["ort_int8"], times["ort_fp32"]),
        },
        "accuracy": {name: {"mAP": s["mAP"], "mAP50": s["mAP50"]} for name, s in accuracy.items()},
        "map50_change": accuracy["int8"]["mAP50"] - accuracy["fp32"]["mAP50"],
        "file_mb": {name: path.stat().st_size / 1e6 for name, path in files.items()},
    }


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def tables(results: list[dict]) -> str:
    lines = ["| size | variant | median ms | p90 ms | min ms | vs transformers | vs ORT FP32 |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        hf, fp32 = r["latency"]["transformers"]["median_ms"], r["latency"]["ort_fp32"]["median_ms"]
        for name in VARIANTS:
            s = r["latency"][name]
            lines.append(f"| {r['size']} | {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['min_ms']:.1f} "
                         f"| {s['median_ms'] / hf:.2f}x | {s['median_ms'] / fp32:.2f}x |")  # fmt: skip
    lines += [
        "",
        "| size | ORT FP32 / transformers, paired | ORT INT8 / ORT FP32, paired |",
        "|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['size']} | {r['paired']['fp32_vs_transformers']:.2f}x | {r['paired']['int8_vs_fp32']:.2f}x |"
        )
    lines += ["", "| size | ONNX | mAP | mAP50 | file MB |", "|---|---|---:|---:|---:|"]
    for r in results:
        for name in ("fp32", "int8"):
            a = r["accuracy"][name]
            lines.append(
                f"| {r['size']} | {name} | {a['mAP']:.4f} | {a['mAP50']:.4f} | {r['file_mb'][name]:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, bccd=True)
    parser.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="an r18vd rtdetr checkpoint"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--cal-images", type=int, default=100)
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause before each timed run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    check_bccd(parser, args.data)
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} not found (run bench/train_bccd.py first)")
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers

    with tempfile.TemporaryDirectory(prefix="rtdetr_deploy_bench_") as tmp:
        results = [bench_size(size, args, Path(tmp)) for size in args.sizes]
    print(tables(results))
    fp32_ok = all(r["fp32_vs_transformers"] <= FP32_TARGET for r in results)
    int8_ok = all(r["int8_vs_fp32"] <= INT8_TARGET and r["map50_change"] >= -MAP50_LOSS for r in results)
    report = {
        "benchmark": "deploy_latency",
        "command": command_line(argv),
        "machine": machine(args.threads, onnxruntime=onnxruntime.__version__, transformers=transformers.__version__),
        "settings": {"checkpoint": str(args.checkpoint), "batch": 1, "warmup": args.warmup, "iters": args.iters,
                     "cal_images": args.cal_images, "settle_s": args.settle},
        "results": results,
        "fp32_target": target_verdict(f"ORT FP32 <= {FP32_TARGET}x transformers", FP32_TARGET, fp32_ok),
        "int8_target": target_verdict(f"INT8 <= {INT8_TARGET}x ORT FP32, mAP50 loss <= 1 point", INT8_TARGET, int8_ok),
    }  # fmt: skip
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
