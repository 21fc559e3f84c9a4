"""Training throughput of our RT-DETR against transformers' RTDetrForObjectDetection.

Same architecture on both sides (the r18vd config of rtdetr.model.testing, as in
tests/model/test_hf_parity.py, num_labels 80), random variance-preserving weights
(``rtdetr.model.testing.randomize_``) built in transformers and converted to ours, so both start equal.
A training step is: forward with the targets (denoising queries on), the loss, backward, AdamW step.

- ours: ``build_model(**model_args_from_hf_config(cfg))`` prepared as the engine prepares it
  (``use_channels_last``: convolution weights and images NHWC; ``use_gemm_weight_grad``: convolution
  weight gradients by im2col + GEMM on CPUs without AVX-512), the criterion the engine builds
  (``build_criterion(load_spec({}).model, 80)``), ``rtdetr.loss.total_loss``, the engine's AdamW
  parameter groups (``param_groups`` / ``build_optimizer`` with the default optim section);
- transformers: ``model(pixel_values=..., labels=...)`` and its own loss (``outputs.loss``),
  ``torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)`` (the fused kernel, as
  transformers' Trainer uses by default with torch >= 2.8; ours fuses too).

Ours runs with glibc malloc set to keep freed memory (``rtdetr.cpu.host_memory``), as
``rtdetr train`` runs on the CPU; transformers with its defaults (--host-allocator both gives it
the same settings, none takes them from ours).

Each side lives in its own (spawned) process so that its peak RSS (ru_maxrss) is its own; the parent
drives them in interleaved rounds (every round runs one step of each side, rotating who goes first,
so that the machine's noise is shared fairly) on the same synthetic batches (batch 4, random images,
3-8 random boxes per image). Before timing, both compute the final decoder layer's losses (VFL, L1,
GIoU) of batch 0 in eval mode (no denoising), which must agree to --check-tol: a check that both
sides start from the same weights and compute the same loss. Prints a Markdown table (images/s from the median
step time, ratio ours / transformers; also the paired ratio: the median over rounds of the ratio of the
two steps of a round) and writes JSON; --profile N adds the top torch.profiler ops of
N steps per side. Target: ours >= 1.2x transformers' images/s.

    python bench/train_throughput.py [--sizes 640 320] [--batch 4] [--threads 2]
                                     [--warmup 3] [--steps 10] [--profile 0]
                                     [--host-allocator ours|both|none]
                                     [--out bench/results/train_throughput.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    argument_parser,
    command_line,
    cpu_name,
    engine_optimizer,
    machine,
    target_verdict,
    write_report,
)
from torch import nn

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_throughput.json"
TARGET_RATIO = 1.2
SIDES = ("ours", "transformers")
NUM_LABELS = 80
LR = 1e-4
WEIGHT_DECAY = 1e-4
FINAL_LAYER_LOSSES = ("loss_vfl", "loss_bbox", "loss_giou")


def synthetic_batches(
    count: int, batch: int, size: int, seed: int = 0
) -> list[tuple[torch.Tensor, list[dict]]]:
    """``count`` batches of random images in [0, 1] with 3-8 random boxes (normalised cxcywh) each."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        images = torch.rand(batch, 3, size, size, generator=g)
        targets = []
        for _ in range(batch):
            n = int(torch.randint(3, 9, (1,), generator=g))
            wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
            centre = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
            labels = torch.randint(0, NUM_LABELS, (n,), generator=g)
            targets.append({"labels": labels, "boxes": torch.cat([centre, wh], 1)})
        batches.append((images, targets))
    return batches


class Side:
    """One side's model, loss and optimizer; ``step`` is one full training step."""

    def __init__(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, criterion=None):
        self.name, self.model, self.optimizer, self.criterion = name, model, optimizer, criterion

    def loss(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        if self.name == "transformers":
            labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
            return self.model(pixel_values=images, labels=labels).loss
        from rtdetr.loss import total_loss

        images = images.contiguous(memory_format=torch.channels_last)  # as DetectionModule does
        return total_loss(self.criterion(self.model(images, targets), targets))

    def final_layer_losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        """The weighted losses of the last decoder layer, in eval mode (ours returns no auxiliary
        outputs in eval mode; transformers still computes its auxiliary terms)."""
        if self.name == "transformers":
            labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
            losses = self.model(pixel_values=images, labels=labels).loss_dict
        else:
            losses = self.criterion(self.model(images, targets), targets)
        return {k: float(losses[k]) for k in FINAL_LAYER_LOSSES}

    def step(self, images: torch.Tensor, targets: list[dict]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images, targets)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def build_side(name: str, settings: dict, conn) -> Side:
    if name == "transformers":
        from transformers import RTDetrForObjectDetection

        from rtdetr.model.convert_hf import hf_state_dict_to_ours, model_args_from_hf_config
        from rtdetr.model.testing import hf_config, randomize_

        config = hf_config("r18vd", num_labels=NUM_LABELS)
        torch.manual_seed(0)
        model = randomize_(RTDetrForObjectDetection(config), seed=1)
        with torch.no_grad():  # as in the parity test: keep masked (all-equal) tokens out of the top-k
            model.model.enc_output[0].bias.zero_()
        torch.save(hf_state_dict_to_ours(model.state_dict()), settings["weights"])
        conn.send(model_args_from_hf_config(config))  # ours needs no transformers import
        # fused, as transformers' Trainer defaults to with torch >= 2.8 (optim adamw_torch_fused)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
        return Side(name, model.train(), optimizer)

    from rtdetr.config import load_spec
    from rtdetr.cpu.conv_grad import use_gemm_weight_grad
    from rtdetr.engine.model_setup import use_channels_last
    from rtdetr.engine.trainer import build_criterion
    from rtdetr.model import build_model

    model = build_model(**conn.recv())
    model.load_state_dict(torch.load(settings["weights"], mmap=True, weights_only=True), strict=True)
    use_channels_last(model)  # as `rtdetr train` does (except under FSDP)
    use_gemm_weight_grad(model)  # as `rtdetr train` on the CPU does (CPUs without AVX-512)
    spec = load_spec({})
    return Side(name, model.train(), engine_optimizer(model, spec), build_criterion(spec.model, NUM_LABELS))


def profile_steps(side: Side, batches: list, steps: int, top: int) -> list[dict]:
    """The ``top`` ops by self CPU time over ``steps`` training steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            side.step(*batches[i % len(batches)])
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "self_cpu_pct": 100 * e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in rows[:top]
    ]


def worker(name: str, settings: dict, conn) -> None:
    """Serve commands from the parent: ("check",), ("step", i), ("profile", n, top), ("stop",)."""
    torch.set_num_threads(settings["threads"])
    if settings["host_allocator"] == "both" or (settings["host_allocator"] == "ours" and name == "ours"):
        from rtdetr.cpu.host_memory import keep_freed_host_memory

        if not keep_freed_host_memory():  # as `rtdetr train` on the CPU
            print(f"{name}: glibc malloc settings not applied (not Linux/glibc)", file=sys.stderr)
    side = build_side(name, settings, conn)
    batches = synthetic_batches(settings["num_batches"], settings["batch"], settings["size"])
    conn.send("ready")
    while True:
        try:
            cmd = conn.recv()
        except EOFError:  # the parent is gone
            return
        if cmd[0] == "check":  # the final-layer losses of batch 0 in eval mode (no denoising)
            side.model.eval()
            with torch.no_grad():
                conn.send(side.final_layer_losses(*batches[0]))
            side.model.train()
        elif cmd[0] == "step":
            start, cpu = time.perf_counter(), time.process_time()
            loss = side.step(*batches[cmd[1] % len(batches)])
            conn.send((time.perf_counter() - start, time.process_time() - cpu, loss))
        elif cmd[0] == "profile":
            conn.send(profile_steps(side, batches, cmd[1], cmd[2]))
        else:
            conn.send({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return


def bench_size(size: int, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter per side: its peak RSS is its own
    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "threads": args.threads, "batch": args.batch, "size": size, "num_batches": args.num_batches,
            "weights": os.path.join(tmp, "ours.pt"), "host_allocator": args.host_allocator,
        }  # fmt: skip
        conns, procs = {}, {}
        for name in ("transformers", "ours"):  # transformers first: it writes the weights ours loads
            conns[name], child = ctx.Pipe()
            procs[name] = ctx.Process(target=worker, args=(name, settings, child), daemon=True)
            procs[name].start()
            if name == "transformers":
                model_args = conns[name].recv()  # sent once the weights are written
        conns["ours"].send(model_args)
        for name in SIDES:
            if conns[name].recv() != "ready":
                raise SystemExit(f"{name}: worker failed to start")

        check = {}
        for name in SIDES:
            conns[name].send(("check",))
            check[name] = conns[name].recv()
        ref = check["transformers"]
        rel = max(abs(check["ours"][k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in FINAL_LAYER_LOSSES)
        print(f"{size}: eval-mode final-layer losses of batch 0: ours {check['ours']}, transformers {ref}"
              f" (max rel. diff {rel:.2e})", file=sys.stderr)  # fmt: skip
        if rel > args.check_tol:
            for name in SIDES:
                procs[name].terminate()
            raise SystemExit(f"{size}: the losses differ by {rel:.2e} > --check-tol {args.check_tol}")

        wall: dict[str, list[float]] = {s: [] for s in SIDES}
        cpu: dict[str, list[float]] = {s: [] for s in SIDES}
        losses: dict[str, list[float]] = {s: [] for s in SIDES}
        for i in range(args.warmup + args.steps):
            order = SIDES[i % 2 :] + SIDES[: i % 2]  # rotate who goes first
            for name in order:
                conns[name].send(("step", i))
                w, c, loss = conns[name].recv()
                losses[name].append(loss)
                if i >= args.warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
            if i >= args.warmup:
                print(f"{size}: step {i - args.warmup + 1}/{args.steps}: "
                      + ", ".join(f"{s} {wall[s][-1]:.2f} s" for s in SIDES), file=sys.stderr)  # fmt: skip

        profiles = {}
        if args.profile:
            for name in SIDES:
                conns[name].send(("profile", args.profile, args.profile_top))
                profiles[name] = conns[name].recv()
        rss = {}
        for name in SIDES:
            conns[name].send(("stop",))
            rss[name] = conns[name].recv()["maxrss_mb"]
            procs[name].join(timeout=60)

    sides = {}
    for name in SIDES:
        t = wall[name]
        sides[name] = {
            "median_step_s": statistics.median(t),
            "min_step_s": min(t),
            "mean_step_s": statistics.fmean(t),
            "cpu_median_step_s": statistics.median(cpu[name]),
            "images_per_s": args.batch / statistics.median(t),
            "images_per_s_mean": args.batch * len(t) / sum(t),
            "peak_rss_mb": rss[name],
            "step_times_s": t,
            "losses": losses[name],
        }
        if args.profile:
            sides[name]["profile_top_ops"] = profiles[name]
    ratio = sides["ours"]["images_per_s"] / sides["transformers"]["images_per_s"]
    # within each round both sides ran back to back: the ratio of their steps there, then the median
    paired = statistics.median(t / o for o, t in zip(wall["ours"], wall["transformers"]))
    return {
        "size": size,
        "eval_loss_check": check,
        "eval_loss_max_rel_diff": rel,
        "ratio_ours_vs_transformers": ratio,
        "paired_ratio_ours_vs_transformers": paired,
        "sides": sides,
    }


def markdown_table(results: list[dict], batch: int) -> str:
    lines = [
        "| size | side | images/s (median step) | median step s | min step s | CPU s/step | peak RSS MB "
        "| ours / transformers | paired |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for name in SIDES:
            s = res["sides"][name]
            ratio = f"**{res['ratio_ours_vs_transformers']:.2f}x**" if name == "ours" else "1.00x"
            paired = f"{res['paired_ratio_ours_vs_transformers']:.2f}x" if name == "ours" else ""
            lines.append(
                f"| {res['size']}x{res['size']} b{batch} | {name} | {s['images_per_s']:.2f} | {s['median_step_s']:.2f} "
                f"| {s['min_step_s']:.2f} | {s['cpu_median_step_s']:.2f} | {s['peak_rss_mb']:.0f} | {ratio} | {paired} |"
            )
    return "\n".join(lines)


def profile_table(results: list[dict]) -> str:
    lines = []
    for res in results:
        for name in SIDES:
            ops = res["sides"][name].get("profile_top_ops")
            if not ops:
                continue
            lines += [
                f"\n{res['size']}x{res['size']} {name}: top ops by self CPU time",
                "",
                "| op | self CPU ms/step | % | calls/step |",
                "|---|---:|---:|---:|",
            ]
            lines += [
                f"| `{o['op']}` | {o['self_cpu_ms_per_step']:.1f} | {o['self_cpu_pct']:.1f} | {o['calls_per_step']:.0f} |"
                for o in ops
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320], help="square input sizes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each side's process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
    parser.add_argument("--num-batches", type=int, default=4, help="distinct synthetic batches, cycled")
    parser.add_argument(
        "--check-tol", type=float, default=1e-3, help="max rel. diff of the final-layer eval losses"
    )
    parser.add_argument("--profile", type=int, default=0, help="profile N more steps per side (0: off)")
    parser.add_argument("--profile-top", type=int, default=15, help="ops listed per profile")
    parser.add_argument(
        "--host-allocator", choices=("ours", "both", "none"), default="ours",
        help="which sides keep freed host memory (rtdetr.cpu.host_memory, as `rtdetr train` on the "
        "CPU does); 'both' gives transformers the same malloc settings",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.num_batches < 1:
        parser.error("--steps, --batch and --num-batches must be >= 1, --warmup >= 0")

    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
        f"CPU {cpu_name()} x{os.cpu_count()}, batch {args.batch}, sizes {args.sizes}, "
        f"warmup {args.warmup}, steps {args.steps}",
        file=sys.stderr,
    )
    results = [bench_size(size, args) for size in args.sizes]
    print(markdown_table(results, args.batch))
    passed = all(r["ratio_ours_vs_transformers"] >= TARGET_RATIO for r in results)
    target = target_verdict(f"ours >= {TARGET_RATIO}x transformers (images/s)", TARGET_RATIO, passed)
    if args.profile:
        print(profile_table(results))
    report = {
        "benchmark": "train_throughput",
        "command": command_line(argv),
        "machine": machine(args.threads, transformers=transformers.__version__),
        "settings": {
            "model": "r18vd (num_labels 80, 3 decoder layers, 100 denoising queries)",
            "batch": args.batch,
            "warmup": args.warmup,
            "steps": args.steps,
            "dtype": "float32",
            "step": "zero_grad, forward with targets, loss, backward, AdamW step",
            "ours_optimizer": "engine param_groups + build_optimizer (AdamW, default optim section)",
            "transformers_optimizer": f"torch.optim.AdamW(lr={LR}, weight_decay={WEIGHT_DECAY})",
            "processes": "one spawned process per side, driven in interleaved rounds",
            "host_allocator": {
                "ours": "ours keeps freed host memory (as `rtdetr train` on the CPU); transformers: glibc defaults",
                "both": "both sides keep freed host memory (rtdetr.cpu.host_memory)",
                "none": "glibc defaults on both sides",
            }[args.host_allocator],
        },
        **target,
        "results": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
