"""Back-to-back latency of ONNX files in one process: the steady state of a loop of inferences.

bench/deploy_latency.py times each runtime in a process of its own, after a pause: the latency of a
request that arrives when the model has been idle. This script times the other case, a stream of
requests (e.g. video frames): every given ONNX file (an rtdetr export) gets the ONNX Runtime
session `rtdetr.deploy.OnnxBackend` opens (CPU provider, --threads intra-op threads) in this one
process, and the sessions run in interleaved rounds (each round runs every session once, rotating
the order, --pause seconds apart) on the same random batch-1 input at the file's own size. Prints
median, p25 and min per file and each file's median against the first's, and writes JSON.

    python bench/onnx_back_to_back.py FP32.onnx INT8.onnx [--rounds 60] [--warmup 5] [--pause 0.05]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import argument_parser, command_line, machine, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "onnx_back_to_back.json"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("files", type=Path, nargs="+", help="ONNX files (the first is the reference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="rounds not timed")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between two runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"not found: {missing}")
    import onnxruntime as ort

    from rtdetr.deploy import OnnxBackend

    # rtdetr exports, in sessions exactly as evaluate, inference and the Detector open them
    sessions = [OnnxBackend(f, device="cpu", threads=args.threads).session for f in args.files]
    rng = np.random.default_rng(0)
    feeds = []
    for s in sessions:
        inp = s.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds.append({inp.name: rng.random(shape, dtype=np.float32)})
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(args.warmup + args.rounds):
        for k in range(len(sessions)):
            i = (k + r) % len(sessions)
            time.sleep(args.pause)
            start = time.perf_counter()
            sessions[i].run(None, feeds[i])
            if r >= args.warmup:
                times[i].append(1000 * (time.perf_counter() - start))
    reference = statistics.median(times[0])
    rows = []
    print("| file | median ms | p25 ms | min ms | vs first |\n|---|---:|---:|---:|---:|")
    for path, t in zip(args.files, times):
        median = statistics.median(t)
        row = {"file": str(path), "median_ms": median, "p25_ms": float(np.percentile(t, 25)),
               "min_ms": min(t), "vs_first": median / reference, "times_ms": t}  # fmt: skip
        rows.append(row)
        print(
            f"| {path.name} | {median:.1f} | {row['p25_ms']:.1f} | {row['min_ms']:.1f} | {row['vs_first']:.2f}x |"
        )
    report = {
        "benchmark": "onnx_back_to_back",
        "command": command_line(argv),
        "machine": machine(args.threads, onnxruntime=ort.__version__),
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "pause_s": args.pause},
        "results": rows,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
