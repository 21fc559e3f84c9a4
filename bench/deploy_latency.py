"""CPU deployment: latency of PyTorch, ONNX Runtime FP32 and INT8, OpenVINO FP32 and INT8 (NNCF), and
transformers, and the INT8 accuracy cost, on one model.

The model is an RT-DETR checkpoint trained on BCCD (--checkpoint; bench/train_bccd.py leaves one in
bench_runs/bccd), or, with --random r18vd|r50vd, the published architecture with random weights
(latency only: no accuracy table). For each input size it

1. exports it with `rtdetr export` (fixed batch 1, that size) and quantizes it twice with `rtdetr
   quantize`: ONNX Runtime's INT8 ONNX file and NNCF's INT8 OpenVINO IR (`quantize.backend:
   openvino`), both calibrated on the same --cal-images BCCD train images;
2. loads the same weights into transformers' RTDetrForObjectDetection (ours_state_dict_to_hf) and
   checks that PyTorch, transformers, ONNX Runtime FP32 and OpenVINO FP32 agree (to 1e-3) on a BCCD
   test image;
3. times batch-1 inference on a BCCD test image in interleaved rounds (every round runs each variant
   once, rotating the order, after a --settle pause), each variant in a process of its own (so no
   runtime's spinning idle threads compete with the next one): ours in PyTorch eager (deploy-fused,
   `torch.inference_mode`), ONNX Runtime FP32 and INT8 (CPU provider, all graph optimisations),
   OpenVINO FP32 (the same ONNX file, f32 precision) and INT8 (the IR), transformers eager; the same
   threads everywhere;
4. with a trained checkpoint, evaluates the four deployed variants on BCCD's test split with `rtdetr
   evaluate` (mAP, mAP50).

Targets: ONNX Runtime FP32 <= 0.7x transformers' eager latency; each runtime's INT8 <= 0.5x its FP32
with at most 1 point of mAP50 lost, judged on the ratios of the median latencies. Also printed: the
paired ratios (the median over rounds of the ratio within a round), which load that comes and goes
on a shared machine moves less. Prints Markdown tables and writes JSON.

    python bench/deploy_latency.py [--checkpoint PTH | --random r18vd|r50vd] [--data /path/to/bccd]
                                   [--sizes 640 320] [--threads 2] [--warmup 5] [--iters 30] [--cal-images 100]
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
VARIANTS = ("pytorch", "ort_fp32", "ort_int8", "ov_fp32", "ov_int8", "transformers")
ULTRALYTICS_VARIANTS = ("ul_ort_fp32", "ul_ov_fp32")  # with --ultralytics
# the deployed files of each variant, and the runtime evaluate runs them with
DEPLOYED = {"ort_fp32": ("fp32", "onnxruntime"), "ort_int8": ("int8", "onnxruntime"),
            "ov_fp32": ("fp32", "openvino"), "ov_int8": ("ov_int8", "openvino")}  # fmt: skip
FP32_TARGET, INT8_TARGET, MAP50_LOSS = 0.7, 0.5, 0.01
ULTRALYTICS_TARGET = 0.9  # our best FP32 CPU path against ultralytics' best, the same model class (R50)


def random_checkpoint(arch: str, folder: Path) -> Path:
    """Our checkpoint of the published ``arch`` (r18vd or r50vd) with random weights (4 classes)."""
    from transformers import RTDetrForObjectDetection

    from rtdetr.model.convert import convert_hf
    from rtdetr.model.testing import hf_config, randomize_

    torch.manual_seed(0)
    hf = randomize_(RTDetrForObjectDetection(hf_config(arch, num_labels=4)), seed=1).eval()
    with torch.no_grad():  # keep masked (all-equal) tokens out of the top-k, as the parity tests do
        hf.model.enc_output[0].bias.zero_()
    hf.save_pretrained(folder / f"hf_{arch}")
    return Path(convert_hf(folder / f"hf_{arch}", folder / f"{arch}_random.pth"))


def hf_twin(checkpoint: Path):
    """transformers' RTDetrForObjectDetection with the checkpoint's weights (an r18vd or r50vd model)."""
    from transformers import RTDetrForObjectDetection

    from rtdetr.model.checkpoint import load_model
    from rtdetr.model.convert_hf import ours_state_dict_to_hf
    from rtdetr.model.testing import hf_config

    ours = load_model(checkpoint)
    arch = "r50vd" if ours.metadata.model["backbone"] == "resnet_50vd" else "r18vd"
    config = hf_config(arch, num_labels=ours.metadata.num_classes)
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
    """The FP32 and INT8 ONNX files and the INT8 OpenVINO IR of the checkpoint at ``size`` (a folder
    per size: DeepStream's files beside each ONNX file)."""
    folder = folder / str(size)
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8, ov_int8 = folder / "model.onnx", folder / "model_int8.onnx", folder / "model_int8.xml"
    base = {"results_dir": str(folder / f"results_{size}")}
    run_task("export", {**base, "export": {"checkpoint": str(args.checkpoint), "onnx_file": str(fp32),
             "input_width": size, "input_height": size, "batch_size": 1}}, folder)  # fmt: skip
    images = args.data / "images"
    train = json.loads((args.data / "annotations" / "instances_train.json").read_text())["images"]
    cal = [str(images / i["file_name"]) for i in train]
    run_task("quantize", {**base, "quantize": {"onnx_file": str(fp32), "output_file": str(int8),
             "cal_image_dir": cal, "cal_images": args.cal_images}}, folder)  # fmt: skip
    run_task("quantize", {**base, "quantize": {"onnx_file": str(fp32), "output_file": str(ov_int8),
             "backend": "openvino", "cal_image_dir": cal, "cal_images": args.cal_images}}, folder)  # fmt: skip
    files = {"fp32": fp32, "int8": int8, "ov_int8": ov_int8}
    if args.ultralytics:
        files["ultralytics"] = ultralytics_onnx(size, folder)
    return files


# ultralytics' RT-DETR-R50 (its rtdetr-resnet50.yaml, random weights: latency does not depend on
# them) exported by ultralytics itself to ONNX at one size, batch 1, opset 17
ULTRALYTICS_EXPORT = """
import sys
from ultralytics import RTDETR
print(RTDETR("rtdetr-resnet50.yaml").export(format="onnx", imgsz=int(sys.argv[1]), opset=17, batch=1,
                                            dynamic=False, simplify=False))
"""


def ultralytics_onnx(size: int, folder: Path) -> Path:
    import os
    import subprocess

    work = folder / "ultralytics"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ULTRALYTICS_EXPORT, str(size)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"ultralytics' export failed: {out.stderr[-2000:]}")
    return work / out.stdout.strip().splitlines()[-1]


class PlainRunner:
    """A foreign ONNX file run as it is by ONNX Runtime or OpenVINO (FP32), for timing only."""

    def __init__(self, path: str, runtime: str, threads: int):
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            name = self.session.get_inputs()[0].name
            self.run = lambda x: self.session.run(None, {name: x})
        else:
            import openvino as ov

            config = {
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32",
            }
            compiled = ov.Core().compile_model(path, "CPU", config)
            request = compiled.create_infer_request()
            self.run = lambda x: list(request.infer({0: x}).values())

    def __call__(self, images: torch.Tensor):
        return [torch.from_numpy(np.asarray(t)) for t in self.run(images.numpy())]


def evaluate(model: Path, runtime: str, size: int, args, folder: Path) -> dict:
    spec = {
        "results_dir": str(folder / f"eval_{size}_{model.stem}_{runtime}"),
        "dataset": {
            "test_data_sources": {"image_dir": str(args.data / "images"),
                                  "json_file": str(args.data / "annotations" / "instances_test.json")},
            "num_classes": 4, "batch_size": 4, "workers": 2,
        },
        "evaluate": {"checkpoint": str(args.checkpoint), "trt_engine": str(model), "runtime": runtime,
                     "input_width": size, "input_height": size},
    }  # fmt: skip
    out = run_task("evaluate", spec, folder)
    return json.loads((out / "results.json").read_text())["stats"]


def make_runner(name: str, files: dict[str, str], checkpoint: str, threads: int):
    """A callable images -> (pred_logits, pred_boxes) for one variant."""
    from rtdetr.deploy import OnnxBackend, OpenVinoBackend, TorchBackend

    torch.set_num_threads(threads)
    if name.startswith("ul_"):
        return PlainRunner(
            files["ultralytics"], "openvino" if name == "ul_ov_fp32" else "onnxruntime", threads
        )
    if name == "pytorch":
        return TorchBackend.from_checkpoint(checkpoint, device="cpu")  # deploy-fused
    if name in DEPLOYED:
        path, runtime = DEPLOYED[name]
        backend = OpenVinoBackend if runtime == "openvino" else OnnxBackend
        return backend(files[path], device="cpu", threads=threads)
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
    variants = VARIANTS if args.transformers else VARIANTS[:-1]
    if args.ultralytics:
        variants += ULTRALYTICS_VARIANTS
    for name in variants:
        conns[name], child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(name, {k: str(v) for k, v in files.items()}, str(args.checkpoint),
                                                args.threads, child), daemon=True)  # fmt: skip
        proc.start()
        procs.append(proc)
    for name in variants:
        assert conns[name].recv() == "ready", name

    def call(name: str, keep: bool = False):
        time.sleep(args.settle)  # the previous variant's idle threads stop spinning before this one runs
        conns[name].send(("run", image, keep))
        return conns[name].recv()

    ref = [torch.from_numpy(t) for t in call("pytorch", keep=True)[0]]
    agree = {}
    for name in ("transformers", "ort_fp32", "ov_fp32") if args.transformers else ("ort_fp32", "ov_fp32"):
        agree[name] = output_difference(ref, [torch.from_numpy(t) for t in call(name, keep=True)[0]])
        if agree[name] > 1e-3:
            raise SystemExit(f"{size}: {name} differs from PyTorch by {agree[name]:.2e}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.warmup + args.iters):
        shift = i % len(variants)
        for name in variants[shift:] + variants[:shift]:
            ms = call(name)[1]
            if i >= args.warmup:
                times[name].append(ms)
    for name in variants:
        conns[name].send(("stop",))
    for proc in procs:
        proc.join(timeout=60)
    stats = {name: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "min_ms": min(t)}
             for name, t in times.items()}  # fmt: skip
    accuracy = {}
    if args.random is None:
        accuracy = {
            name: evaluate(files[path], runtime, size, args, folder)
            for name, (path, runtime) in DEPLOYED.items()
        }
    median = {name: s["median_ms"] for name, s in stats.items()}
    return {
        "size": size,
        "max_abs_diff_vs_pytorch": agree,
        "latency": stats,
        "times_ms": times,
        "fp32_vs_transformers": median["ort_fp32"] / median["transformers"] if args.transformers else None,
        "int8_vs_fp32": median["ort_int8"] / median["ort_fp32"],
        "ov_fp32_vs_ort_fp32": median["ov_fp32"] / median["ort_fp32"],
        "ov_int8_vs_ov_fp32": median["ov_int8"] / median["ov_fp32"],
        # our best FP32 CPU path against ultralytics' best FP32 CPU path (--ultralytics)
        "best_fp32_vs_ultralytics": min(median["ort_fp32"], median["ov_fp32"])
        / min(median["ul_ort_fp32"], median["ul_ov_fp32"])
        if args.ultralytics
        else None,
        # the median over rounds of the ratio within a round (both runs a moment apart, so sharing the
        # machine's state): less moved by load that comes and goes than the ratio of the medians
        "paired": {
            "fp32_vs_transformers": _paired(times["ort_fp32"], times["transformers"])
            if args.transformers
            else None,
            "int8_vs_fp32": _paired(times["ort_int8"], times["ort_fp32"]),
            "ov_fp32_vs_ort_fp32": _paired(times["ov_fp32"], times["ort_fp32"]),
            "ov_int8_vs_ov_fp32": _paired(times["ov_int8"], times["ov_fp32"]),
        },
        "accuracy": {name: {"mAP": s["mAP"], "mAP50": s["mAP50"]} for name, s in accuracy.items()},
        "map50_change": {
            "ort_int8": accuracy["ort_int8"]["mAP50"] - accuracy["ort_fp32"]["mAP50"],
            "ov_int8": accuracy["ov_int8"]["mAP50"] - accuracy["ov_fp32"]["mAP50"],
        }
        if accuracy
        else {},
        # an IR's weights are in the .bin beside its .xml
        "file_mb": {
            name: sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.is_file()) / 1e6
            if path.suffix == ".xml"
            else path.stat().st_size / 1e6
            for name, path in files.items()
        },
    }


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def tables(results: list[dict]) -> str:
    lines = ["| size | variant | median ms | p90 ms | min ms | vs transformers | vs ORT FP32 |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        hf = r["latency"].get("transformers", {}).get("median_ms")
        fp32 = r["latency"]["ort_fp32"]["median_ms"]
        for name, s in r["latency"].items():
            versus = f"{s['median_ms'] / hf:.2f}x" if hf else "-"
            lines.append(f"| {r['size']} | {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['min_ms']:.1f} "
                         f"| {versus} | {s['median_ms'] / fp32:.2f}x |")  # fmt: skip
    lines += [
        "",
        "| size | ORT FP32 / transformers | ORT INT8 / ORT FP32 | OV FP32 / ORT FP32 | OV INT8 / OV FP32 |",
        "|---|---:|---:|---:|---:|",
    ]
    keys = ("fp32_vs_transformers", "int8_vs_fp32", "ov_fp32_vs_ort_fp32", "ov_int8_vs_ov_fp32")
    for r in results:
        cells = " | ".join(f"{r[k]:.2f}x (paired {r['paired'][k]:.2f}x)" if r[k] else "-" for k in keys)
        lines.append(f"| {r['size']} | {cells} |")
    if all(r.get("best_fp32_vs_ultralytics") for r in results):
        lines += ["", "| size | our best FP32 / ultralytics' best FP32 |", "|---|---:|"]
        lines += [f"| {r['size']} | {r['best_fp32_vs_ultralytics']:.2f}x |" for r in results]
    if all(r["accuracy"] for r in results):
        lines += ["", "| size | variant | mAP | mAP50 |", "|---|---|---:|---:|"]
        for r in results:
            for name, a in r["accuracy"].items():
                lines.append(f"| {r['size']} | {name} | {a['mAP']:.4f} | {a['mAP50']:.4f} |")
    lines += ["", "| size | file | MB |", "|---|---|---:|"]
    for r in results:
        for name, mb in r["file_mb"].items():
            lines.append(f"| {r['size']} | {name} | {mb:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, bccd=True)
    parser.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="an r18vd or r50vd rtdetr checkpoint"
    )
    parser.add_argument(
        "--random",
        choices=["r18vd", "r50vd"],
        help="instead of --checkpoint: the architecture, random weights",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    parser.add_argument(
        "--no-transformers", dest="transformers", action="store_false",
        help="leave transformers out (for a checkpoint whose architecture is not a published one)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--cal-images", type=int, default=100)
    parser.add_argument(
        "--ultralytics", action="store_true",
        help="also time ultralytics' RT-DETR-R50 (rtdetr-resnet50.yaml, random weights) exported by ultralytics "
        "to ONNX, in ONNX Runtime and OpenVINO FP32 (needs ultralytics importable)",
    )  # fmt: skip
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause before each timed run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    check_bccd(parser, args.data)
    if args.random is None and not args.checkpoint.is_file():
        parser.error(
            f"--checkpoint {args.checkpoint} not found (run bench/train_bccd.py first, or give --random)"
        )
    torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino
    import transformers

    label = f"random {args.random}" if args.random else str(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="rtdetr_deploy_bench_") as tmp:
        if args.random is not None:
            args.checkpoint = random_checkpoint(args.random, Path(tmp))
        results = [bench_size(size, args, Path(tmp)) for size in args.sizes]
    print(tables(results))
    fp32_ok = args.transformers and all(r["fp32_vs_transformers"] <= FP32_TARGET for r in results)

    def int8_ok_for(name: str, ratio: str) -> bool:
        return all(
            r[ratio] <= INT8_TARGET and r["map50_change"].get(name, 0.0) >= -MAP50_LOSS for r in results
        )

    int8_ok = int8_ok_for("ort_int8", "int8_vs_fp32")
    ov_int8_ok = int8_ok_for("ov_int8", "ov_int8_vs_ov_fp32")
    report = {
        "benchmark": "deploy_latency",
        "command": command_line(argv),
        "machine": machine(args.threads, onnxruntime=onnxruntime.__version__, openvino=openvino.get_version(),
                           transformers=transformers.__version__),
        "settings": {"checkpoint": label, "random_weights": args.random is not None, "batch": 1, "warmup": args.warmup, "iters": args.iters,
                     "cal_images": args.cal_images, "settle_s": args.settle},
        "results": results,
        "fp32_target": target_verdict(f"ORT FP32 <= {FP32_TARGET}x transformers", FP32_TARGET, fp32_ok)
        if args.transformers
        else None,
        "int8_target": target_verdict(f"INT8 <= {INT8_TARGET}x ORT FP32, mAP50 loss <= 1 point", INT8_TARGET, int8_ok),
        "ultralytics_target": target_verdict(
            f"our best FP32 <= {ULTRALYTICS_TARGET}x ultralytics' best FP32", ULTRALYTICS_TARGET,
            all(r["best_fp32_vs_ultralytics"] <= ULTRALYTICS_TARGET for r in results),
        ) if args.ultralytics else None,
        "ov_int8_target": target_verdict(f"OpenVINO INT8 <= {INT8_TARGET}x OpenVINO FP32, mAP50 loss <= 1 point",
                                         INT8_TARGET, ov_int8_ok),
    }  # fmt: skip
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
