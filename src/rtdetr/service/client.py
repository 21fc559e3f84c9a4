"""`rtdetr client`: the job server from the command line, with the remote client's command names.

::

    rtdetr client login --server http://host:8000 --token TOKEN [--org ORG]
    DATASET_ID=$(rtdetr client dataset-create --name train --path bccd --json_file annotations/train.json)
    EXPERIMENT_ID=$(rtdetr client experiment-create --name bccd --train_datasets $DATASET_ID ...)
    SPECS=$(rtdetr client get-spec --action train --job_type experiment --id $EXPERIMENT_ID)
    JOB_ID=$(rtdetr client experiment-run-action --action train --id $EXPERIMENT_ID --specs "$SPECS")
    rtdetr client get-action-status --job_type experiment --id $EXPERIMENT_ID --job $JOB_ID --wait

Commands that create something print its id alone (for ``$(...)``); the others print a table, or the
server's JSON with ``--json``. The server, token and organisation come from the flags, else the
environment (RTDETR_SERVER, RTDETR_SERVICE_TOKEN, RTDETR_ORG), else the file ``login`` writes
(RTDETR_CLIENT_CONFIG, default ~/.config/rtdetr/client.json, mode 0600). Only httpx is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from rtdetr.common.files import atomic_write, atomic_write_text
from rtdetr.errors import UserError, abbreviate

SERVER_ENV, TOKEN_ENV, ORG_ENV, CONFIG_ENV = (
    "RTDETR_SERVER",
    "RTDETR_SERVICE_TOKEN",
    "RTDETR_ORG",
    "RTDETR_CLIENT_CONFIG",
)
DEFAULT_SERVER, DEFAULT_ORG = "http://127.0.0.1:8000", "default"
FINISHED = ("Done", "Error", "Canceled", "Paused")
TIMEOUT = 60.0


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".config" / "rtdetr" / "client.json").expanduser()


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable client settings file ({exc}); run `rtdetr client login` again"
        ) from exc
    return data if isinstance(data, dict) else {}


class Api:
    """The server's API for one organisation; every failure is a UserError of one line per problem."""

    def __init__(self, server: str, token: str | None, org: str):
        self.server, self.org = server.rstrip("/"), org
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=TIMEOUT)

    def url(self, path: str) -> str:
        return f"/api/v1/orgs/{self.org}{path}"

    def call(self, method: str, path: str, *, raw: bool = False, **kwargs) -> Any:
        try:
            r = self.http.request(method, self.url(path) if not path.startswith("/api/") else path, **kwargs)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the server at {self.server}: {exc}") from exc
        check(r)
        return r if raw else r.json()

    def stream(self, path: str, params: dict, write: Callable[[bytes], None]) -> None:
        try:
            with self.http.stream("GET", self.url(path), params=params, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    check(r)
                for chunk in r.iter_bytes():
                    write(chunk)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach the server at {self.server}: {exc}") from exc


def check(response) -> None:
    """A UserError for an answer that is not a success: the server's problems, one per line."""
    if response.status_code < 400:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    if response.status_code == 401:
        detail = f"{detail}; run `rtdetr client login --token ...` or set {TOKEN_ENV}"
    problems = detail if isinstance(detail, list) else [detail]
    lines = [
        f"server ({response.status_code}): "
        + (p if isinstance(p, str) else f"{'.'.join(map(str, p.get('loc', [])))}: {p.get('msg', p)}")
        if isinstance(p, (str, dict))
        else str(p)
        for p in problems
    ]
    raise ClientError(lines)


class ClientError(UserError):
    def __init__(self, lines: list[str]):
        self._lines = lines
        super().__init__("; ".join(lines))

    def lines(self) -> list[str]:
        return list(self._lines)


# ------------------------------------------------------------------------------------ output
def table(rows: list[dict], columns: Sequence[str]) -> str:
    """Rows as aligned text columns."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return abbreviate(json.dumps(value), 50)
    return abbreviate(value, 60)


def progress_line(job: dict, width: int = 24) -> str:
    """A job's status in one line: a bar of its epochs, the loss and mAP of the latest epoch, the ETA."""
    kpi = job.get("kpi") or {}
    parts = [f"{job['status']:<9}"]
    epoch, total = job.get("epoch"), job.get("max_epoch")
    if isinstance(epoch, int) and isinstance(total, int) and total > 0:
        done = min(total, epoch + 1)
        filled = round(width * done / total)
        parts.append(f"[{'#' * filled}{'.' * (width - filled)}] epoch {done}/{total}")
    for key, label in (("train_loss", "loss"), ("val_mAP50", "mAP50"), ("test_mAP", "test mAP")):
        if isinstance(kpi.get(key), (int, float)):
            parts.append(f"{label} {kpi[key]:.4f}")
    if job.get("eta") and job["status"] == "Running":
        parts.append(f"ETA {job['eta']}")
    if job.get("status_message") and job["status"] not in ("Running",):
        parts.append(abbreviate(job["status_message"], 100))
    return "  ".join(parts)


def _json_or(args, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text(data))


def _id_or_json(args, data: dict) -> None:
    print(json.dumps(data, indent=2) if args.json else data["id"])


def _json_arg(text: str | None, flag: str) -> dict:
    """A JSON object given inline or as @FILE."""
    if text is None:
        return {}
    source = flag
    if text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise UserError(f"{flag}: cannot read {source}: {exc.strerror or exc}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise UserError(f"{source}: a JSON object is needed, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------ commands
def cmd_login(args, api: Api) -> None:
    api.call("GET", "/api/v1/health")
    api.call("GET", "/experiments")  # the token is right
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"server": api.server, "token": args.token, "org": api.org}) + "\n")
    os.chmod(path, 0o600)
    print(f"logged in to {api.server} (organisation {api.org}); settings in {path}")


def cmd_dataset_create(args, api: Api) -> None:
    if args.dataset_type not in ("object_detection",) or args.dataset_format != "coco":
        raise UserError(
            "dataset-create: rtdetr datasets are --dataset_type object_detection --dataset_format coco"
        )
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"--file {path}: no such archive")
        with path.open("rb") as fh:
            data = api.call(
                "POST",
                "/datasets:upload",
                files={"file": (path.name, fh)},
                data={"name": args.name or path.name},
            )
    elif args.path:
        body = {"name": args.name or args.path, "path": args.path}
        body.update({k: getattr(args, k) for k in ("image_dir", "json_file") if getattr(args, k)})
        data = api.call("POST", "/datasets", json=body)
    else:
        raise UserError(
            "dataset-create: give --path (a COCO folder under the server's data folder) or --file ARCHIVE"
        )
    _id_or_json(args, data)


def cmd_experiment_create(args, api: Api) -> None:
    if args.network_arch != "rtdetr":
        raise UserError(f"--network_arch {args.network_arch}: this server runs rtdetr")
    body = {
        "name": args.name,
        "train_datasets": [d for item in args.train_datasets for d in item.split(",") if d],
        "eval_dataset": args.eval_dataset,
        "test_dataset": args.test_dataset,
        "base_spec": _json_arg(args.base_spec, "--base_spec"),
    }
    _id_or_json(args, api.call("POST", "/experiments", json=body))


def cmd_list(what: str, columns: Sequence[str]) -> Callable:
    def run(args, api: Api) -> None:
        path = f"/experiments/{args.id}/jobs" if what == "jobs" else f"/{what}"
        rows = api.call("GET", path)
        for row in rows:  # a dataset's counts are in its summary
            row.update({k: v for k, v in (row.get("summary") or {}).items() if k in columns and k not in row})
        _json_or(args, rows, lambda rows: table(rows, columns))

    return run


def cmd_delete(what: str) -> Callable:
    def run(args, api: Api) -> None:
        _json_or(args, api.call("DELETE", f"/{what}/{args.id}"), lambda d: f"deleted {d['id']}")

    return run


def cmd_get_spec(args, api: Api) -> None:
    data = api.call("GET", f"/experiments/{args.id}/specs/{args.action}/schema")
    print(json.dumps(data if args.schema else data["default"], indent=2))


def cmd_run_action(args, api: Api) -> None:
    body = {
        "action": args.action,
        "specs": _json_arg(args.specs, "--specs"),
        "parent_job_id": args.parent_job_id,
    }
    if args.name:
        body["name"] = args.name
    _id_or_json(args, api.call("POST", f"/experiments/{args.id}/jobs", json=body))


def _job_path(args) -> str:
    return f"/experiments/{args.id}/jobs/{args.job}"


def cmd_status(args, api: Api) -> None:
    job = api.call("GET", _job_path(args))
    if not args.wait:
        _json_or(args, job, progress_line)
        return
    live = sys.stdout.isatty() and not args.json
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while job["status"] not in FINISHED:
        if live:
            print(
                "\r" + progress_line(job)[: shutil.get_terminal_size().columns - 1].ljust(40),
                end="",
                flush=True,
            )
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(args.interval)
        job = api.call("GET", _job_path(args))
    if live:
        print("\r", end="")
    _json_or(args, job, progress_line)
    if job["status"] == "Error":
        raise UserError(f"job {job['id']} ended in Error: {job.get('message') or job.get('status_message')}")


def cmd_job_action(action: str) -> Callable:
    def run(args, api: Api) -> None:
        if action == "resume" and getattr(args, "action", None):
            job = api.call("GET", _job_path(args))
            if job["action"] != args.action:
                raise UserError(f"--action {args.action}: job {args.job} is a {job['action']} job")
        body = {"specs": _json_arg(args.specs, "--specs")} if getattr(args, "specs", None) else None
        job = api.call("POST", f"{_job_path(args)}:{action}", json=body)
        _json_or(args, job, lambda j: j["id"] if action == "resume" else progress_line(j))

    return run


def cmd_logs(args, api: Api) -> None:
    params = {"tail": args.tail}
    if not args.follow:
        sys.stdout.write(api.call("GET", f"{_job_path(args)}/logs", params=params, raw=True).text)
        return
    out = sys.stdout.buffer

    def write(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    api.stream(f"{_job_path(args)}/logs", {**params, "follow": "true"}, write)


def cmd_list_files(args, api: Api) -> None:
    _json_or(
        args, api.call("GET", f"{_job_path(args)}:list_files"), lambda rows: table(rows, ("path", "size"))
    )


def cmd_download(args, api: Api) -> None:
    params = {"file": args.file} if args.file else {}
    name = Path(args.file).name if args.file else f"{args.job}.tar.gz"
    target = Path(args.output or name)
    if target.is_dir():
        target = target / name
    response = api.call("GET", f"{_job_path(args)}:download", params=params, raw=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda fh: fh.write(response.content), mode="wb")
    print(target)


# ------------------------------------------------------------------------------------ parser
def _common(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name (after it, they do not
    reset what was given before it)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS if suppress else None)
    common.add_argument("--server", help=f"the server's URL (or {SERVER_ENV}; default {DEFAULT_SERVER})")
    common.add_argument("--token", help=f"the server's bearer token (or {TOKEN_ENV})")
    common.add_argument("--org", help=f"the organisation (or {ORG_ENV}; default '{DEFAULT_ORG}')")
    common.add_argument("--json", action="store_true", help="print the server's JSON answer")
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="rtdetr client", parents=[_common(suppress=False)],
        description="Datasets, experiments and jobs on an rtdetr job server (`rtdetr serve`), with the "
        "remote client's command names.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="client_command", metavar="<command>", required=True)

    def add(name: str, handler: Callable, help: str, job: bool = False, experiment: bool = False):
        p = sub.add_parser(name, parents=[common], help=help, description=help + ".")
        p.set_defaults(handler=handler)
        if experiment or job:
            p.add_argument("--id", required=True, help="the experiment's id")
            p.add_argument("--job_type", default="experiment", choices=["experiment"], help=argparse.SUPPRESS)
        if job:
            p.add_argument("--job", required=True, help="the job's id")
        return p

    p = add("login", cmd_login, "check the server and token and keep them for the next commands")
    p = add("dataset-create", cmd_dataset_create, "a dataset from a COCO folder on the server or an archive")
    p.add_argument("--name", help="a name (default: the path or the archive's name)")
    p.add_argument("--path", help="a COCO folder, relative to the server's data folder")
    p.add_argument("--image_dir", help="its image folder, when not images/")
    p.add_argument("--json_file", help="its annotation file, when not the only one")
    p.add_argument("--file", help="a tar archive (gz, bz2, xz) of images/ and a COCO file, to upload")
    p.add_argument("--dataset_type", default="object_detection")
    p.add_argument("--dataset_format", default="coco")
    add("list-datasets", cmd_list("datasets", ("id", "name", "images", "boxes", "json_file")), "the datasets")
    p = add("dataset-delete", cmd_delete("datasets"), "delete a dataset")
    p.add_argument("--id", required=True)
    p = add("experiment-create", cmd_experiment_create, "an experiment: the network and its datasets")
    p.add_argument("--name", required=True)
    p.add_argument("--network_arch", default="rtdetr")
    p.add_argument(
        "--train_datasets", nargs="+", required=True, help="dataset ids (space or comma separated)"
    )
    p.add_argument("--eval_dataset", required=True, help="the validation dataset's id")
    p.add_argument("--test_dataset", help="the test dataset's id (default: the validation dataset)")
    p.add_argument("--base_spec", help="a spec (JSON, or @FILE) under every job's specs")
    add(
        "list-experiments",
        cmd_list("experiments", ("id", "name", "network_arch", "train_datasets", "eval_dataset")),
        "the experiments",
    )
    p = add("experiment-delete", cmd_delete("experiments"), "delete an experiment and its jobs")
    p.add_argument("--id", required=True)
    p = add("get-spec", cmd_get_spec, "the default spec of an action, as JSON", experiment=True)
    p.add_argument("--action", required=True)
    p.add_argument("--schema", action="store_true", help="the JSON Schema and AutoML fields too")
    p = add(
        "experiment-run-action",
        cmd_run_action,
        "run an action of an experiment: prints the job's id",
        experiment=True,
    )
    p.add_argument("--action", required=True)
    p.add_argument("--specs", help="the job's spec (JSON, or @FILE), over the experiment's base spec")
    p.add_argument("--parent_job_id", help="the job whose model this one takes")
    p.add_argument("--name", help="a name for the job")
    add(
        "list-jobs",
        cmd_list("jobs", ("id", "action", "status", "epoch", "parent_id", "message")),
        "the jobs of an experiment",
        experiment=True,
    )
    p = add("get-action-status", cmd_status, "a job's status, epoch, loss, mAP and ETA", job=True)
    p.add_argument("--wait", action="store_true", help="follow it until it ends (a live bar on a terminal)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between two looks (with --wait)")
    p.add_argument("--timeout", type=float, default=0.0, help="give up waiting after this many seconds")
    add("job-cancel", cmd_job_action("cancel"), "cancel a job", job=True)
    add(
        "job-pause",
        cmd_job_action("pause"),
        "pause a train or distill job (it keeps its checkpoints)",
        job=True,
    )
    p = add(
        "job-resume", cmd_job_action("resume"), "resume a paused job from its latest checkpoint", job=True
    )
    p.add_argument("--action", help="the job's action (checked)")
    p.add_argument("--specs", help="changes to the job's spec (JSON, or @FILE)")
    add("job-retry", cmd_job_action("retry"), "run a failed or canceled job again", job=True)
    p = add("job-logs", cmd_logs, "the end of a job's output", job=True)
    p.add_argument("--tail", type=int, default=200, help="the last N lines (default 200)")
    p.add_argument("--follow", action="store_true", help="then what it writes, until it ends")
    add("list-files", cmd_list_files, "the files of a job", job=True)
    p = add("download", cmd_download, "a job's folder as a tar.gz, or one of its files", job=True)
    p.add_argument("--file", help="one file, relative to the job's folder")
    p.add_argument("--output", help="where to write it (a file or a folder; default: here)")
    return parser


def run(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` and run the command; UserError on any problem (the CLI prints it)."""
    args = build_parser().parse_args(list(argv))
    saved = read_config()
    server = args.server or os.environ.get(SERVER_ENV) or saved.get("server") or DEFAULT_SERVER
    org = args.org or os.environ.get(ORG_ENV) or saved.get("org") or DEFAULT_ORG
    args.token = args.token or os.environ.get(TOKEN_ENV) or saved.get("token")
    if args.client_command == "login" and not args.token:
        raise UserError(f"login: give --token (the server prints where its token file is) or set {TOKEN_ENV}")
    if not server.startswith(("http://", "https://")):
        raise UserError(f"--server {abbreviate(server)}: give a URL such as {DEFAULT_SERVER}")
    args.handler(args, Api(server, args.token, org))
    return args
