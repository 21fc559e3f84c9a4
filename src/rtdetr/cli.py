"""The `rtdetr` command: `rtdetr <task> -e spec.yaml [key=value ...]` and utility commands.

This module imports the spec, the task runner and the file helpers, which load in about 0.15 s;
what needs torch (about 1.5 s to import) is imported by the command that uses it, so that
`rtdetr --help`, `get-spec` and `validate` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rtdetr import __version__
from rtdetr.common.files import atomic_write_text, check_output_file
from rtdetr.common.status import read_status
from rtdetr.config import dump_yaml, load_spec, reference, spec_to_dict
from rtdetr.config.loader import apply_overrides, read_spec_file
from rtdetr.config.rules import TASKS
from rtdetr.data.sample import write_sample
from rtdetr.errors import SpecError, UserError
from rtdetr.log import setup_logging
from rtdetr.tasks.files import check_outputs_not_inputs
from rtdetr.tasks.quickstart import DEFAULT_PRETRAINED, run_quickstart
from rtdetr.tasks.runner import Terminated, record_refusal, results_dir_of, run_task

log = logging.getLogger("rtdetr.cli")

MAX_INFO_SIZE = 16384  # rtdetr info --size: FLOPs are counted on shapes alone, but a bound keeps them sane

TASK_HELP = {
    "train": "train a model on COCO-format data",
    "evaluate": "compute COCO metrics of a model on the test data",
    "inference": "detect objects in folders of images and videos",
    "export": "export a model to ONNX (and DeepStream files)",
    "distill": "train a student model with a frozen teacher",
    "gen_trt_engine": "build a TensorRT engine from an exported ONNX model",
    "quantize": "quantize an exported ONNX model to INT8 for CPUs (ONNX Runtime)",
    "automl": "search the automl_enabled fields, each trial a train run (Optuna)",
}


def _common_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default or False, help="log debug details"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default or False, help="log warnings only"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default or False, help="show tracebacks of errors"
    )


def _spec_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "-e", "--experiment_spec_file", "--experiment-spec-file", dest="spec", required=required,
        metavar="SPEC", help="experiment spec file (YAML or JSON)",
    )  # fmt: skip
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="dotted overrides parsed as YAML values, e.g. train.num_epochs=20 train.gpu_ids=[0,1]",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtdetr",
        description="RT-DETR object detection driven by TAO-style experiment specs.",
        epilog="Run `rtdetr <command> --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"rtdetr {__version__}")
    _common_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="tasks and utility commands")
    for task in TASKS:
        p = sub.add_parser(task, help=TASK_HELP[task], description=f"{task}: {TASK_HELP[task]}.")
        _spec_args(p)
        _common_flags(p, suppress=True)

    p = sub.add_parser(
        "get-spec", help="print the default spec of a task, its JSON Schema or its reference page",
        description="Print the complete default spec for a task (YAML or JSON), the JSON Schema of "
        "the spec (--schema), or the Markdown spec reference (--markdown).",
    )  # fmt: skip
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--action", choices=TASKS, help="the task whose default spec to print")
    what.add_argument("--schema", action="store_true", help="print the JSON Schema with field metadata")
    what.add_argument("--markdown", action="store_true", help="print the Markdown spec reference")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="format of the default spec")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "validate", help="check a spec without running anything",
        description="Check a spec (with overrides) for a task and print the resolved spec, or every problem.",
    )  # fmt: skip
    _spec_args(p)
    p.add_argument("--action", choices=TASKS, help="also check the values this task requires")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="format of the resolved spec")
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "convert", help="convert published RT-DETR weights (Hugging Face or original code) to a checkpoint",
        description="Convert a Hugging Face RT-DETR folder (config.json + model.safetensors) or a "
        "checkpoint of the original RT-DETR code into an rtdetr checkpoint with its metadata.",
    )  # fmt: skip
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", metavar="FOLDER", help="a Hugging Face RT-DETR folder")
    source.add_argument(
        "--original", metavar="FILE", help="a checkpoint of the original RT-DETR code or of TAO's RT-DETR"
    )
    arch = p.add_mutually_exclusive_group()
    arch.add_argument("--preset", help="with --original: the variant (r18vd, r34vd, r50vd_m, r50vd, r101vd)")
    arch.add_argument(
        "-e", "--experiment_spec_file", dest="spec", help="with --original: a spec whose model section fits"
    )
    p.add_argument("--class-names", metavar="FILE", help="with --original: class names, one per line")
    p.add_argument("-o", "--output", required=True, help="the checkpoint to write (.pth)")
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "quickstart", help="train, evaluate, run and export a small model on the shipped BCCD sample (no data needed)",
        description="Train a small RT-DETR on a 64-image BCCD sample shipped with the package "
        "(validating with COCO mAP), evaluate it, run inference on the sample's images, export it to "
        "ONNX and evaluate the ONNX file with ONNX Runtime; takes a few minutes on a laptop CPU.",
    )  # fmt: skip
    p.add_argument(
        "--results-dir", default="rtdetr_quickstart", help="where to write (default: ./rtdetr_quickstart)"
    )
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    p.add_argument("--size", type=int, default=320, help="input size, a multiple of 32 (default 320)")
    p.add_argument(
        "--pretrained", default=DEFAULT_PRETRAINED, metavar="NAME_OR_FILE",
        help=f"the COCO checkpoint to fine-tune (default {DEFAULT_PRETRAINED}: from the Hugging Face cache "
        "or the network); `none`, or one that cannot be had, trains a small model from scratch",
    )  # fmt: skip
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "sample-data", help="write the shipped 64-image BCCD sample as a COCO folder (for docs/examples)",
        description="Write the BCCD sample shipped with the package (blood cells, MIT license) as a "
        "COCO folder: DIR/images/*.jpg, DIR/annotations/instances_train.json, instances_val.json and "
        "instances_test.json (the val split again), LICENSE and README.md. The example specs in "
        "docs/examples read it from data/bccd.",
    )  # fmt: skip
    p.add_argument("dir", metavar="DIR", help="the folder to write (created; must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "detect", help="detect objects in images, folders, globs or videos with a model file or hub name",
        description="Detect objects with a trained model: a checkpoint, an exported ONNX file or TensorRT "
        "engine, or a hub name (hf://ORG/REPO[@REVISION], e.g. hf://PekingU/rtdetr_r50vd: downloaded or "
        "taken from the Hugging Face cache, converted once). Writes annotated images, KITTI labels and a "
        "COCO detections file (the inference task's outputs) and prints a summary.",
    )  # fmt: skip
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="images, folders, glob patterns or videos")
    p.add_argument("--model", required=True, metavar="NAME_OR_FILE", help="a model file or hub name")
    p.add_argument("--conf", type=float, default=0.5, help="score threshold (default 0.5)")
    p.add_argument(
        "--output", default="detections", metavar="DIR", help="where to write (default ./detections)"
    )
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "download", help="fill the Hugging Face cache with models by hub name (for offline machines)",
        description="Download hub names (hf://ORG/REPO[@REVISION]) into the Hugging Face cache and convert "
        "RT-DETR models once; copy the cache folder to a machine without a network (HF_HUB_OFFLINE=1).",
    )  # fmt: skip
    p.add_argument("names", nargs="+", metavar="NAME", help="hub names, e.g. hf://PekingU/rtdetr_r18vd")
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "info", help="print a model's parameters and GFLOPs",
        description="Parameters and GFLOPs (at the eval size) of the model a spec describes, or of a checkpoint.",
    )  # fmt: skip
    p.add_argument("-e", "--experiment_spec_file", dest="spec", metavar="SPEC", help="experiment spec file")
    p.add_argument("--checkpoint", help="a checkpoint instead of a spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the spec")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"),
        help=f"input size, multiples of 32 up to {MAX_INFO_SIZE} (default: eval_spatial_size)",
    )  # fmt: skip
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "serve", help="run the job server: datasets, experiments and jobs over a REST API",
        description="Run the job server (needs the service extra: pip install \"rtdetr[service]\"). "
        "It keeps datasets, experiments and jobs in a database, runs each job as `rtdetr <action>` and "
        "asks for the bearer token it writes to DATA_DIR/.service/token on its first start.",
    )  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--data-dir", default="rtdetr_service", help="the data folder (default ./rtdetr_service)")
    p.add_argument(
        "--db", metavar="URL", help="a SQLAlchemy database URL (default: SQLite in the data folder)"
    )
    p.add_argument(
        "--max-jobs", type=int, metavar="N",
        help="jobs running at once (default: one per GPU of this machine, or 1; with --executor slurm, 1)",
    )  # fmt: skip
    p.add_argument(
        "--executor", choices=["local", "slurm", "submitit-local"], default="local",
        help="where jobs run: processes of this machine (default), a Slurm cluster through submitit, or "
        "submitit's local executor (the Slurm path on this machine, to try it without a cluster)",
    )  # fmt: skip
    p.add_argument("--slurm-partition", metavar="NAME", help="the Slurm partition (default: the cluster's)")
    p.add_argument("--slurm-nodes", type=int, default=1, metavar="N", help="nodes per job (default 1)")
    p.add_argument(
        "--slurm-gpus-per-node", type=int, default=0, metavar="N",
        help="GPUs per node, one task (one DDP rank) each (default 0: one task on the CPU)",
    )  # fmt: skip
    p.add_argument(
        "--slurm-time", type=int, default=60 * 24, metavar="MINUTES", help="a job's time limit (default 1440)"
    )
    p.add_argument(
        "--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
        help="another sbatch parameter, e.g. account=vision or cpus-per-task=8 (repeatable)",
    )  # fmt: skip
    _common_flags(p, suppress=True)

    p = sub.add_parser(
        "client", add_help=False, prefix_chars="\0",
        help="datasets, experiments and jobs on a job server, with the remote client's commands",
    )  # fmt: skip
    p.add_argument("client_args", nargs=argparse.REMAINDER)
    return parser


def _emit(text: str, output: str | None) -> None:
    if output:
        check_output_file(output, "-o", True, "")
        try:
            atomic_write_text(output, text)
        except OSError as exc:
            raise UserError(f"-o: {output}: cannot write: {exc.strerror or exc}") from exc
        log.info("wrote %s", output)
    else:
        sys.stdout.write(text)


def _dump(data: dict, fmt: str) -> str:

    return json.dumps(data, indent=2) + "\n" if fmt == "json" else dump_yaml(data)


def cmd_get_spec(args: argparse.Namespace) -> int:

    if args.schema:
        _emit(json.dumps(reference.json_schema(), indent=2) + "\n", args.output)
    elif args.markdown:
        _emit(reference.markdown_reference(), args.output)
    else:
        _emit(_dump(reference.default_spec(), args.format), args.output)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:

    cfg = load_spec(args.spec, args.overrides, action=args.action)
    sys.stdout.write(_dump(spec_to_dict(cfg), args.format))
    log.info("%s is valid%s", args.spec, f" for {args.action}" if args.action else "")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from rtdetr.model import convert

    check_outputs_not_inputs(
        {"--hf": args.hf, "--original": args.original, "--class-names": args.class_names, "-e": args.spec},
        {"-o": args.output},
    )
    check_output_file(args.output, "-o", True, "")

    if args.hf:
        if args.preset or args.spec or args.class_names:
            raise UserError(
                "--preset, -e and --class-names go with --original; a Hugging Face folder describes itself"
            )
        out = convert.convert_hf(args.hf, args.output)
    else:
        if args.preset:
            section = convert.preset_model_section(args.preset)
        elif args.spec:
            section = spec_to_dict(load_spec(args.spec).model)
        else:
            raise UserError("--original needs --preset NAME or -e SPEC to describe the model")
        names = None
        if args.class_names:
            from rtdetr.data.classmap import read_classmap

            names = read_classmap(args.class_names)
        out = convert.convert_original(args.original, args.output, section, class_names=names)
    print(f"wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata, read_checkpoint
    from rtdetr.model.profiling import count_flops, count_parameters

    if bool(args.spec) == bool(args.checkpoint):
        raise UserError("give either -e SPEC or --checkpoint PATH")
    if args.size and any(s <= 0 or s % 32 or s > MAX_INFO_SIZE for s in args.size):
        raise UserError(
            f"--size {args.size[0]} {args.size[1]}: height and width must be positive multiples of 32 "
            f"up to {MAX_INFO_SIZE}"
        )
    if args.checkpoint:
        meta = ModelMetadata.from_dict(read_checkpoint(args.checkpoint)["rtdetr"])
    else:
        cfg = load_spec(args.spec, args.overrides)
        meta = ModelMetadata(
            model=spec_to_dict(cfg.model),
            num_classes=cfg.dataset.num_classes,
            input_size=list(cfg.dataset.augmentation.eval_spatial_size),
        )
    height, width = args.size or meta.input_size
    model = build_from_metadata(meta).eval()
    params = count_parameters(model)
    flops = count_flops(model, height, width)
    print(
        f"model: {meta.model['backbone']}, {meta.model['dec_layers']} decoder layers, {meta.num_classes} classes"
    )
    print(f"parameters: {params / 1e6:.2f} M")
    if model.frozen_fm is not None:
        fm = model.frozen_fm
        fm_params = count_parameters(fm)
        print(
            f"frozen foundation model: {meta.model['frozen_fm']['backbone']}, {fm_params / 1e6:.2f} M parameters "
            f"(frozen; {(params - fm_params) / 1e6:.2f} M train), summary {fm.summary_dim}, features {fm.width}"
        )
    print(f"GFLOPs at {height}x{width}: {flops / 1e9:.1f}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:

    if args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    dirs = run_quickstart(args.results_dir, args.epochs, args.size, args.pretrained)
    train_dir = dirs["train"]
    start = read_spec_file(Path(args.results_dir) / "quickstart_spec.yaml")["train"]["pretrained_model_path"]
    print(f"started from: {start or 'random weights (a small model from scratch)'}")
    kpis = [s["kpi"] for s in read_status(train_dir) if "val_mAP50" in s.get("kpi", {})]
    print(f"trained: {train_dir}")
    if kpis:
        print(f"validation: mAP {kpis[-1]['val_mAP']:.3f}, mAP50 {kpis[-1]['val_mAP50']:.3f}")
    print(f"checkpoint: {train_dir / 'rtdetr_model_latest.pth'}")
    print(f"logs and plots: {train_dir / 'logs'}, {train_dir / 'plots'}, status: {train_dir / 'status.json'}")
    stats = json.loads((dirs["evaluate"] / "results.json").read_text())["stats"]
    print(
        f"evaluated: {dirs['evaluate']} (results.json, plots/): mAP {stats['mAP']:.3f}, mAP50 {stats['mAP50']:.3f}"
    )
    print(f"inference: {dirs['inference']} (labels/, images_annotated/, detections.json)")
    onnx = json.loads((dirs["evaluate_onnx"] / "results.json").read_text())
    print(f"exported: {onnx['model']} (ONNX, DeepStream files beside it); run by ONNX Runtime: "
          f"mAP {onnx['stats']['mAP']:.3f}, mAP50 {onnx['stats']['mAP50']:.3f}")  # fmt: skip
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    if not 0.0 <= args.conf <= 1.0:
        raise UserError(f"--conf {args.conf}: give a score threshold from 0 to 1")
    key = "trt_engine" if args.model.endswith((".onnx", ".engine")) else "checkpoint"
    spec = {
        "results_dir": args.output,
        "inference": {
            key: args.model,
            "conf_threshold": args.conf,
            "results_dir": args.output,
        },
        "dataset": {"infer_data_sources": {"image_dir": list(args.sources)}, "workers": 0},
    }
    results = run_task("inference", load_spec(spec, action="inference"))
    status = [line for line in read_status(results) if line.get("kpi")]
    kpi = status[-1]["kpi"] if status else {}
    print(f"{kpi.get('images', 0)} images, {kpi.get('frames', 0)} video frames, {kpi.get('detections', 0)} "
          f"detections (score >= {args.conf}); results in {results}")  # fmt: skip
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from rtdetr.model import hub  # torch and huggingface_hub: loaded for this command only

    for name in args.names:
        if not hub.is_hub_name(name):
            raise UserError(f"'{name}': a hub name starts with hf://, e.g. hf://PekingU/rtdetr_r18vd")
        print(f"{name}: {hub.resolve(name, 'download')}")
    print(f"cache: {hub.cache_dir()}")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:

    summary = write_sample(args.dir, overwrite=args.overwrite)
    print("\n".join(summary.lines()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from rtdetr.service.app import serve
        from rtdetr.service.settings import Settings
    except ImportError as exc:
        raise UserError(f'serve needs the service extra: pip install "rtdetr[service]" ({exc})') from exc

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535")
    extra = {}
    for item in args.slurm_extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm-extra {item}: give KEY=VALUE, e.g. account=vision")
        extra[key] = value
    settings = Settings(
        data_dir=args.data_dir, db_url=args.db, executor=args.executor, slurm_partition=args.slurm_partition,
        slurm_nodes=args.slurm_nodes, slurm_gpus_per_node=args.slurm_gpus_per_node,
        slurm_time_min=args.slurm_time, slurm_extra=extra, max_jobs=args.max_jobs,
    )  # fmt: skip
    serve(settings, host=args.host, port=args.port)
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    try:
        from rtdetr.service.client import run
    except ImportError as exc:  # httpx
        raise UserError(f'client needs the service extra: pip install "rtdetr[service]" ({exc})') from exc

    args.debug = args.debug or "--debug" in args.client_args
    run(args.client_args)
    return 0


def cmd_task(args: argparse.Namespace) -> int:

    try:
        cfg = load_spec(args.spec, args.overrides, action=args.command)
    except SpecError as exc:
        _record_spec_failure(args, exc)
        raise
    run_task(args.command, cfg)
    return 0


def _record_spec_failure(args: argparse.Namespace, exc: SpecError) -> None:
    """A FAILURE line for a bad spec, when the spec names its results directory explicitly."""

    try:
        raw = apply_overrides(read_spec_file(args.spec), args.overrides)
        section = raw.get(args.command) if isinstance(raw.get(args.command), dict) else {}
        own, top = section.get("results_dir"), raw.get("results_dir")
        dry_run = args.command == "train" and section.get("is_dry_run") is True
        target = results_dir_of(
            args.command,
            own if isinstance(own, str) else None,
            top if isinstance(top, str) else None,
            dry_run,
        )
    except (UserError, OSError):
        return
    record_refusal(target, args.command, exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2

    setup_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    handlers = {
        "get-spec": cmd_get_spec,
        "validate": cmd_validate,
        "convert": cmd_convert,
        "info": cmd_info,
        "quickstart": cmd_quickstart,
        "sample-data": cmd_sample_data,
        "serve": cmd_serve,
        "client": cmd_client,
        "detect": cmd_detect,
        "download": cmd_download,
    }
    handler = handlers.get(args.command, cmd_task)

    try:
        return handler(args)
    except Terminated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        if args.debug:
            raise
        for line in exc.lines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
