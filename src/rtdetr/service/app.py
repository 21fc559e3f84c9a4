"""The REST API of the job server (FastAPI) and ``serve``, which runs it with uvicorn.

Routes, under ``/api/v1/orgs/{org}/`` (every one needs ``Authorization: Bearer <token>``; only
``/api/v1/health``, the OpenAPI pages ``/docs`` and ``/openapi.json``, and the web page's files at
``/`` and ``/web/`` answer without it):

- ``datasets`` (POST a COCO folder under the data folder), ``datasets:upload`` (POST a tar archive),
  ``datasets`` (GET list), ``datasets/{id}`` (GET, DELETE)
- ``experiments`` (POST, GET list), ``experiments/{id}`` (GET, PATCH, DELETE)
- ``experiments/{id}/specs/{action}/schema``: the default spec, the JSON Schema, the AutoML fields
- ``experiments/{id}/jobs`` (POST ``{action, specs, parent_job_id, name}``, GET list),
  ``jobs/{job}`` (GET: status, epoch, ETA, KPIs), ``jobs/{job}:cancel`` (POST),
  ``jobs/{job}:pause``, ``jobs/{job}:resume``, ``jobs/{job}:retry`` (POST),
  ``jobs/{job}/logs?tail=N[&follow=true]``, ``jobs/{job}/metrics``, ``jobs/{job}:list_files``,
  ``jobs/{job}:download[?file=PATH]``

Errors are JSON ``{"detail": ...}``; a refused spec or dataset is a 422 whose detail lists every
problem, one line each.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import make_url, select, update
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from rtdetr import __version__
from rtdetr.common.files import atomic_write_text
from rtdetr.common.status import read_status
from rtdetr.config import dump_yaml, load_spec
from rtdetr.config import reference as spec_reference
from rtdetr.config.rules import TASKS
from rtdetr.errors import SpecError, UserError, abbreviate
from rtdetr.service import db
from rtdetr.service.datasets import dataset_root, extract_archive, find_pair, inside, summarize
from rtdetr.service.executor import LOG_FILE, SPEC_FILE, Executor, Scheduler, follow_file
from rtdetr.service.settings import Settings
from rtdetr.service.slurm import make_executor
from rtdetr.service.specs import build_job_spec, parent_model, service_default_spec, task_dir
from rtdetr.service.web import mount_web

log = logging.getLogger(__name__)

MAX_LOG_LINES = 100_000
MAX_FOLLOW_SECONDS = 24 * 3600
RESUMABLE = ("train", "distill")  # actions that go on from their latest checkpoint
UPLOAD_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------ bodies
class DatasetCreate(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    path: str = Field(description="a COCO folder: absolute under the data folder, or relative to it")
    image_dir: str | None = Field(None, description="the image folder, relative to path (default images)")
    json_file: str | None = Field(None, description="the COCO file, relative to path (default: found)")


class ExperimentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    network_arch: str = "rtdetr"
    train_datasets: list[str] = []
    eval_dataset: str | None = None
    test_dataset: str | None = Field(None, description="for evaluate and inference; default: eval_dataset")
    base_spec: dict[str, Any] = Field({}, description="spec values under those of every job")


class ExperimentUpdate(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=256)
    train_datasets: list[str] | None = None
    eval_dataset: str | None = None
    test_dataset: str | None = None
    base_spec: dict[str, Any] | None = None


class JobResume(BaseModel):
    specs: dict[str, Any] = Field({}, description="changes to the job's spec, validated as a new job's")


class JobCreate(BaseModel):
    action: str
    specs: dict[str, Any] = {}
    parent_job_id: str | None = None
    name: str = Field("", max_length=256)


# ------------------------------------------------------------------------------------ helpers
def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def dataset_out(d: db.Dataset) -> dict:
    return {
        "id": d.id, "name": d.name, "format": d.format, "root": d.root, "image_dir": d.image_dir,
        "json_file": d.json_file, "uploaded": d.uploaded, "summary": d.summary, "created_at": _iso(d.created_at),
    }  # fmt: skip


def experiment_out(e: db.Experiment) -> dict:
    return {
        "id": e.id, "name": e.name, "network_arch": e.network_arch, "train_datasets": e.train_datasets,
        "eval_dataset": e.eval_dataset, "test_dataset": e.test_dataset, "base_spec": e.base_spec,
        "created_at": _iso(e.created_at), "updated_at": _iso(e.updated_at),
    }  # fmt: skip


def progress(job: db.Job) -> dict:
    """Epoch, ETA, KPIs (the latest value of each) and the last message from the job's status.json."""
    try:
        lines = read_status(task_dir(job.job_dir, job.action, job.specs))
    except (OSError, ValueError):
        lines = []
    out: dict[str, Any] = {"epoch": None, "max_epoch": None, "eta": None, "time_per_epoch": None, "kpi": {}}
    trials = []  # an automl job's finished trials
    for line in lines:
        if not isinstance(line, dict):
            continue
        if isinstance(line.get("trial"), int):
            kpi = line.get("kpi") if isinstance(line.get("kpi"), dict) else {}
            trials.append({"number": line["trial"], "state": line.get("trial_state"),
                           "value": next(iter(kpi.values()), None), "params": line.get("params", {})})  # fmt: skip
            continue
        if "epoch" in line:
            for key in ("epoch", "max_epoch", "eta", "time_per_epoch"):
                out[key] = line.get(key, out[key])
        if isinstance(line.get("kpi"), dict):
            out["kpi"].update(line["kpi"])
    out["status_message"] = lines[-1].get("message", "") if lines and isinstance(lines[-1], dict) else ""
    if trials:
        out["trials"] = trials
    return out


def epoch_metrics(job: db.Job) -> list[dict]:
    """One row per epoch line of the job's status.json: the epoch and its KPIs (the last line of an
    epoch that was run twice, e.g. after a resume)."""
    try:
        lines = read_status(task_dir(job.job_dir, job.action, job.specs))
    except (OSError, ValueError):
        return []
    rows: dict[int, dict] = {}
    for line in lines:
        if (
            isinstance(line, dict)
            and isinstance(line.get("epoch"), int)
            and isinstance(line.get("kpi"), dict)
        ):
            rows[line["epoch"]] = {"epoch": line["epoch"], **line["kpi"]}
    return [rows[e] for e in sorted(rows)]


def job_out(job: db.Job, detail: bool = False) -> dict:
    out = {
        "id": job.id, "experiment_id": job.experiment_id, "parent_id": job.parent_id, "action": job.action,
        "name": job.name, "status": job.status, "message": job.message, "exit_code": job.exit_code,
        "gpu": job.gpu, "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at), **progress(job),
    }  # fmt: skip
    if detail:
        out["specs"] = job.specs
    return out


def _get(session: Session, model: type, org: str, ident: str, what: str):
    row = session.get(model, ident)
    if row is None or row.org != org:
        raise HTTPException(404, f"no {what} {abbreviate(ident, 40)}")
    return row


def _owned(session: Session, model: type, org: str) -> list:
    """The organisation's rows of ``model``, oldest first."""
    return list(session.scalars(select(model).where(model.org == org).order_by(model.created_at)))


def _job(session: Session, org: str, experiment_id: str, job_id: str) -> db.Job:
    job = _get(session, db.Job, org, job_id, "job")
    if job.experiment_id != experiment_id:
        raise HTTPException(
            404, f"no job {abbreviate(job_id, 40)} in experiment {abbreviate(experiment_id, 40)}"
        )
    return job


def _pair(d: db.Dataset) -> dict[str, str]:
    return {"image_dir": d.image_dir, "json_file": d.json_file}


def _check_datasets(session: Session, org: str, ids: list[str]) -> None:
    missing = [i for i in ids if (d := session.get(db.Dataset, i)) is None or d.org != org]
    if missing:
        raise HTTPException(422, [f"no dataset {abbreviate(i, 40)}" for i in missing])


def _check_base_spec(spec: dict) -> None:
    try:
        load_spec(spec)
    except SpecError as exc:
        raise SpecError([f"base_spec: {p.removeprefix('spec: ')}" for p in exc.problems]) from exc


# ------------------------------------------------------------------------------------ dependencies
_bearer = HTTPBearer(auto_error=False)


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 unless the request carries the server's bearer token."""
    token = str(request.app.state.settings.token).encode()
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def session_dep(request: Request) -> Iterator[Session]:
    """A database session for one request."""
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(session_dep)]


# ------------------------------------------------------------------------------------ the app
def create_app(settings: Settings, executor: Executor | None = None) -> FastAPI:
    """The API for ``settings``' data folder and database; the scheduler runs while the app does
    (FastAPI's lifespan: under uvicorn, or a TestClient used as a context manager)."""
    settings.prepare()
    engine = db.make_engine(settings.database_url())
    sessions = db.make_sessions(engine)
    executor = executor or make_executor(settings)
    scheduler = Scheduler(settings, sessions, executor)
    request_sessions = sessions

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()
            engine.dispose()

    app = FastAPI(title="rtdetr job service", version=__version__, lifespan=lifespan)
    app.state.settings, app.state.sessions, app.state.scheduler = settings, sessions, scheduler

    @app.middleware("http")
    async def guard_uploads(request: Request, call_next):
        """An upload is checked before its body is read (FastAPI reads a form before the route's
        dependencies run): the token, then its declared size."""
        if request.method == "POST" and request.url.path.endswith("/datasets:upload"):
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return JSONResponse(
                    status_code=401,
                    content={"detail": "missing or wrong bearer token"},
                    headers={"WWW-Authenticate": "Bearer"},
                )
            length = request.headers.get("content-length", "")
            if not length.isdigit():
                return JSONResponse(status_code=411, content={"detail": "an upload needs a Content-Length"})
            if int(length) > settings.max_upload_bytes + UPLOAD_CHUNK:  # the form's own bytes too
                return JSONResponse(
                    status_code=413,
                    content={"detail": f"the upload exceeds {settings.max_upload_bytes} bytes"},
                )
        return await call_next(request)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": exc.lines()})

    @app.get("/api/v1/health", tags=["service"])
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    api = APIRouter(prefix="/api/v1/orgs/{org}", dependencies=[Depends(require_token)])

    # -------------------------------------------------------------------------------- datasets
    def _add_dataset(session: Session, org: str, name: str, root: Path, images: Path, annotations: Path,
                     uploaded: bool, ident: str | None = None) -> dict:  # fmt: skip
        row = db.Dataset(
            org=org, name=name, root=os.path.realpath(root), image_dir=os.path.realpath(images),
            json_file=os.path.realpath(annotations), uploaded=uploaded, summary=summarize(images, annotations),
        )  # fmt: skip
        if ident:
            row.id = ident
        session.add(row)
        session.commit()
        return dataset_out(row)

    @api.post("/datasets", status_code=201, tags=["datasets"])
    def create_dataset(org: str, body: DatasetCreate, session: SessionDep) -> dict:
        """A dataset from a COCO folder already under the data folder."""
        path = Path(os.path.expanduser(body.path))
        path = path if path.is_absolute() else settings.data_dir / path
        if ".." in path.parts or not inside(path, settings.data_dir) or inside(path, settings.service_dir):
            raise UserError(
                f"path: '{abbreviate(body.path, 120)}' is outside the data folder {settings.data_dir}"
            )
        if not path.is_dir():
            raise UserError(f"path: '{abbreviate(body.path, 120)}' is not a folder")
        images, annotations = find_pair(path, body.image_dir, body.json_file)
        return _add_dataset(session, org, body.name, path, images, annotations, uploaded=False)

    @api.post("/datasets:upload", status_code=201, tags=["datasets"])
    def upload_dataset(
        org: str,
        file: Annotated[
            UploadFile, File(description="a tar archive (gz, bz2, xz) of images/ and a COCO file")
        ],
        name: Annotated[str, Form(min_length=1, max_length=256)],
        session: SessionDep,
        image_dir: Annotated[str | None, Form()] = None,
        json_file: Annotated[str | None, Form()] = None,
    ) -> dict:
        """A dataset from an uploaded archive, extracted safely into the data folder."""
        ident = db.new_id()
        target = settings.datasets_dir / ident
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=settings.tmp_dir)
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := file.file.read(UPLOAD_CHUNK):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise HTTPException(413, f"the upload exceeds {settings.max_upload_bytes} bytes")
                    out.write(chunk)
            extract_archive(Path(tmp), target, settings.max_upload_bytes)
            try:
                root = dataset_root(target)
                images, annotations = find_pair(root, image_dir, json_file)
                return _add_dataset(session, org, name, root, images, annotations, uploaded=True, ident=ident)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
        finally:
            os.unlink(tmp)

    @api.get("/datasets", tags=["datasets"])
    def list_datasets(org: str, session: SessionDep) -> list[dict]:
        return [dataset_out(d) for d in _owned(session, db.Dataset, org)]

    @api.get("/datasets/{dataset_id}", tags=["datasets"])
    def get_dataset(org: str, dataset_id: str, session: SessionDep) -> dict:
        return dataset_out(_get(session, db.Dataset, org, dataset_id, "dataset"))

    @api.delete("/datasets/{dataset_id}", tags=["datasets"])
    def delete_dataset(org: str, dataset_id: str, session: SessionDep) -> dict:
        """Remove a dataset (and its files, when it was uploaded); refused while an experiment uses it."""
        row = _get(session, db.Dataset, org, dataset_id, "dataset")
        users = [
            e.id
            for e in _owned(session, db.Experiment, org)
            if dataset_id in (e.train_datasets or []) or dataset_id in (e.eval_dataset, e.test_dataset)
        ]
        if users:
            raise HTTPException(409, f"dataset {dataset_id} is used by experiment(s) {', '.join(users)}")
        session.delete(row)
        session.commit()
        if row.uploaded:
            shutil.rmtree(settings.datasets_dir / row.id, ignore_errors=True)
        return {"id": dataset_id, "deleted": True}

    # ----------------------------------------------------------------------------- experiments
    @api.post("/experiments", status_code=201, tags=["experiments"])
    def create_experiment(org: str, body: ExperimentCreate, session: SessionDep) -> dict:
        if body.network_arch != "rtdetr":
            raise UserError(f"network_arch: '{abbreviate(body.network_arch)}' is not served here; use rtdetr")
        _check_datasets(
            session, org, [*body.train_datasets, *filter(None, (body.eval_dataset, body.test_dataset))]
        )
        _check_base_spec(body.base_spec)
        row = db.Experiment(
            org=org, name=body.name, network_arch=body.network_arch, train_datasets=body.train_datasets,
            eval_dataset=body.eval_dataset, test_dataset=body.test_dataset, base_spec=body.base_spec,
        )  # fmt: skip
        session.add(row)
        session.commit()
        return experiment_out(row)

    @api.get("/experiments", tags=["experiments"])
    def list_experiments(org: str, session: SessionDep) -> list[dict]:
        return [experiment_out(e) for e in _owned(session, db.Experiment, org)]

    @api.get("/experiments/{experiment_id}", tags=["experiments"])
    def get_experiment(org: str, experiment_id: str, session: SessionDep) -> dict:
        return experiment_out(_get(session, db.Experiment, org, experiment_id, "experiment"))

    @api.patch("/experiments/{experiment_id}", tags=["experiments"])
    def update_experiment(org: str, experiment_id: str, body: ExperimentUpdate, session: SessionDep) -> dict:
        row = _get(session, db.Experiment, org, experiment_id, "experiment")
        changes = body.model_dump(exclude_unset=True)
        ids = list(changes.get("train_datasets") or []) + [
            changes[k] for k in ("eval_dataset", "test_dataset") if changes.get(k)
        ]
        _check_datasets(session, org, ids)
        if changes.get("base_spec") is not None:
            _check_base_spec(changes["base_spec"])
        for key, value in changes.items():
            if value is not None or key in ("eval_dataset", "test_dataset"):
                setattr(row, key, value)
        session.commit()
        return experiment_out(row)

    @api.delete("/experiments/{experiment_id}", tags=["experiments"])
    def delete_experiment(org: str, experiment_id: str, session: SessionDep) -> dict:
        """Remove an experiment with its jobs and their folders; refused while a job is queued or runs."""
        row = _get(session, db.Experiment, org, experiment_id, "experiment")
        jobs = session.scalars(select(db.Job).where(db.Job.experiment_id == experiment_id)).all()
        busy = [j.id for j in jobs if j.status not in db.FINISHED]
        if busy:
            raise HTTPException(
                409, f"experiment {experiment_id} has jobs queued or running: {', '.join(busy)}"
            )
        for job in jobs:
            session.delete(job)
        session.flush()  # the jobs first: they refer to the experiment
        session.delete(row)
        session.commit()
        for job in jobs:
            shutil.rmtree(settings.jobs_dir / job.id, ignore_errors=True)
        return {"id": experiment_id, "deleted": True}

    @api.get("/experiments/{experiment_id}/specs/{action}/schema", tags=["experiments"])
    def spec_schema(org: str, experiment_id: str, action: str, session: SessionDep) -> dict:
        """The default spec of an action (as `rtdetr get-spec --action`), the spec's JSON Schema, and
        the fields AutoML may tune."""
        _get(session, db.Experiment, org, experiment_id, "experiment")
        if action not in TASKS:
            raise HTTPException(404, f"no action '{abbreviate(action)}'; the actions: {', '.join(TASKS)}")
        return {
            "default": service_default_spec(),
            **spec_reference.json_schema(),
            "automl_default_parameters": spec_reference.automl_fields(),
        }

    # ------------------------------------------------------------------------------------ jobs
    @api.post("/experiments/{experiment_id}/jobs", status_code=201, tags=["jobs"])
    def create_job(org: str, experiment_id: str, body: JobCreate, session: SessionDep) -> dict:
        """Queue a job. Its spec is the experiment's base spec, ``specs`` on top, the service's values
        filled in (rtdetr.service.specs); a spec that does not validate is a 422 listing every problem,
        and no job is created."""
        experiment = _get(session, db.Experiment, org, experiment_id, "experiment")
        parent = None
        if body.parent_job_id:
            parent_row = session.get(db.Job, body.parent_job_id)
            if parent_row is None or parent_row.org != org:
                raise UserError(f"parent_job_id: no job {abbreviate(body.parent_job_id, 40)}")
            if parent_row.status != db.DONE:
                raise HTTPException(
                    409,
                    f"parent_job_id: job {parent_row.id} is {parent_row.status}; a child needs a Done parent",
                )
            parent = parent_model(parent_row.action, parent_row.specs, parent_row.job_dir)
        datasets = {d.id: d for d in session.scalars(select(db.Dataset).where(db.Dataset.org == org))}
        roles = {
            "train": [_pair(datasets[i]) for i in experiment.train_datasets or [] if i in datasets],
            "val": [_pair(datasets[i]) for i in [experiment.eval_dataset] if i in datasets],
            "test": [_pair(datasets[i]) for i in [experiment.test_dataset] if i in datasets],
        }
        classes = [
            datasets[i].summary.get("num_classes") for i in experiment.train_datasets or [] if i in datasets
        ]
        num_classes = max((c for c in classes if isinstance(c, int)), default=None)
        ident = db.new_id()
        job_dir = settings.jobs_dir / ident
        spec = build_job_spec(
            body.action, body.specs, experiment.base_spec or {}, settings.data_dir, job_dir, roles,
            num_classes, parent,
        )  # fmt: skip
        job_dir.mkdir(parents=True)
        try:
            atomic_write_text(job_dir / SPEC_FILE, dump_yaml(spec))
            row = db.Job(
                id=ident, org=org, experiment_id=experiment_id, parent_id=body.parent_job_id,
                action=body.action, name=body.name, specs=spec, job_dir=str(job_dir),
            )  # fmt: skip
            session.add(row)
            session.commit()
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        scheduler.wake()
        return job_out(row)

    @api.get("/experiments/{experiment_id}/jobs", tags=["jobs"])
    def list_jobs(org: str, experiment_id: str, session: SessionDep) -> list[dict]:
        _get(session, db.Experiment, org, experiment_id, "experiment")
        rows = session.scalars(
            select(db.Job).where(db.Job.experiment_id == experiment_id).order_by(db.Job.created_at)
        )
        return [job_out(j) for j in rows]

    # the routes with ':' come before jobs/{job_id}, whose pattern would take "id:cancel" whole
    @api.post("/experiments/{experiment_id}/jobs/{job_id}:cancel", tags=["jobs"])
    def cancel_job(org: str, experiment_id: str, job_id: str, session: SessionDep) -> dict:
        """Cancel a job: a queued or paused one at once; a running one's process group gets SIGTERM,
        then SIGKILL after the grace time, and the job ends Canceled."""
        job = _job(session, org, experiment_id, job_id)
        at_once = (db.CANCELED, (*db.QUEUED, db.PAUSED), "canceled by the user")
        return _stop(session, job, at_once, db.CANCELING, (db.RUNNING, db.PAUSING), settings.cancel_grace,
                     "a queued, running or paused")  # fmt: skip

    @api.post("/experiments/{experiment_id}/jobs/{job_id}:pause", tags=["jobs"])
    def pause_job(org: str, experiment_id: str, job_id: str, session: SessionDep) -> dict:
        """Pause a train or distill job: a running one gets SIGTERM, stops at the next step and ends
        Paused with its checkpoints; a queued one is held. ``:resume`` goes on from the latest one."""
        job = _job(session, org, experiment_id, job_id)
        if job.action not in RESUMABLE:
            raise HTTPException(
                409, f"job {job.id} is a {job.action} job; only {' and '.join(RESUMABLE)} jobs can be paused"
            )
        return _stop(session, job, (db.PAUSED, db.QUEUED, "paused while queued"), db.PAUSING, (db.RUNNING,),
                     settings.pause_grace, "a queued or running")  # fmt: skip

    def _stop(session: Session, job: db.Job, at_once: tuple, stopping: str, running: tuple[str, ...],
              grace: float, which: str) -> dict:  # fmt: skip
        """Cancel or pause: a job in ``at_once[1]`` gets ``at_once[0]`` now (nothing runs); a job in
        ``running`` becomes ``stopping`` and its process gets SIGTERM, then SIGKILL after ``grace``."""
        status, waiting, message = at_once
        if db.set_status(session, job.id, status, waiting, message=message):
            session.refresh(job)
            return job_out(job)
        asked = db.set_status(session, job.id, stopping, running)
        session.refresh(job)
        if asked:
            if job.handle:
                executor.cancel(job.handle, grace)
            scheduler.wake()
        elif job.status != stopping:
            verb = "canceled" if stopping == db.CANCELING else "paused"
            raise HTTPException(409, f"job {job.id} is {job.status}; only {which} job can be {verb}")
        return job_out(job)

    def _requeue(session: Session, job: db.Job, status: str, expected: tuple[str, ...], what: str) -> dict:
        """Put a job back in the queue as ``status`` (its folder, and so its checkpoints, kept)."""
        if not db.set_status(session, job.id, status, expected, handle=None, gpu=None, exit_code=None,
                             message="", started_at=None, finished_at=None):  # fmt: skip
            session.refresh(job)
            raise HTTPException(
                409, f"job {job.id} is {job.status}; only a {' or '.join(expected)} job can be {what}"
            )
        with contextlib.suppress(OSError), open(Path(job.job_dir) / LOG_FILE, "a") as fh:
            fh.write(f"\n--- {what} by the user: the job runs again ---\n")
        scheduler.wake()
        session.refresh(job)
        return job_out(job)

    @api.post("/experiments/{experiment_id}/jobs/{job_id}:resume", tags=["jobs"])
    def resume_job(
        org: str, experiment_id: str, job_id: str, session: SessionDep, body: JobResume | None = None
    ) -> dict:
        """Queue a paused job again; it goes on from its latest checkpoint. ``specs`` may change its
        spec (e.g. more epochs), validated as a new job's is."""
        job = _job(session, org, experiment_id, job_id)
        if body is not None and body.specs and job.status == db.PAUSED:
            job_dir = Path(job.job_dir)
            spec = build_job_spec(job.action, body.specs, job.specs, settings.data_dir, job_dir, {})
            atomic_write_text(job_dir / SPEC_FILE, dump_yaml(spec))
            session.execute(update(db.Job).where(db.Job.id == job.id).values(specs=spec))
            session.commit()
        return _requeue(session, job, db.RESUMING, (db.PAUSED,), "resumed")

    @api.post("/experiments/{experiment_id}/jobs/{job_id}:retry", tags=["jobs"])
    def retry_job(org: str, experiment_id: str, job_id: str, session: SessionDep) -> dict:
        """Queue a failed or canceled job again with the same spec, in the same folder: a train or
        distill job goes on from its latest checkpoint, any other action runs again."""
        return _requeue(
            session, _job(session, org, experiment_id, job_id), db.PENDING, (db.ERROR, db.CANCELED), "retried"
        )

    @api.get("/experiments/{experiment_id}/jobs/{job_id}:list_files", tags=["jobs"])
    def list_files(org: str, experiment_id: str, job_id: str, session: SessionDep) -> list[dict]:
        """The files of the job's folder: path (relative to it) and size in bytes."""
        root = Path(_job(session, org, experiment_id, job_id).job_dir)
        files = []
        for folder, _, names in os.walk(root):
            for name in sorted(names):
                path = Path(folder) / name
                if not inside(path, root) or not path.is_file():
                    continue
                files.append({"path": str(path.relative_to(root)), "size": path.stat().st_size})
        return sorted(files, key=lambda f: f["path"])

    @api.get("/experiments/{experiment_id}/jobs/{job_id}:download", tags=["jobs"])
    def download(
        org: str,
        experiment_id: str,
        job_id: str,
        session: SessionDep,
        file: Annotated[
            str | None, Query(description="one file, relative to the job's folder; default: all")
        ] = None,
    ):
        """One file of the job's folder, or the whole folder as a tar.gz; nothing outside it."""
        root = Path(_job(session, org, experiment_id, job_id).job_dir)
        if file is not None:
            path = root / file
            if os.path.isabs(file) or ".." in Path(file).parts or not inside(path, root):
                raise HTTPException(403, f"file: '{abbreviate(file, 120)}' is outside the job's folder")
            if not path.is_file():
                raise HTTPException(404, f"file: no file '{abbreviate(file, 120)}' in the job's folder")
            return FileResponse(os.path.realpath(path), filename=path.name)
        fd, tmp = tempfile.mkstemp(prefix=f"{job_id}-", suffix=".tar.gz", dir=settings.tmp_dir)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(root, arcname=job_id)  # links are stored as links: nothing outside is read
        except BaseException:
            os.unlink(tmp)
            raise
        return FileResponse(
            tmp,
            filename=f"{job_id}.tar.gz",
            media_type="application/gzip",
            background=BackgroundTask(os.unlink, tmp),
        )

    @api.get("/experiments/{experiment_id}/jobs/{job_id}/logs", tags=["jobs"])
    def job_logs(
        org: str,
        experiment_id: str,
        job_id: str,
        session: SessionDep,
        tail: Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="the last N lines")] = 200,
        follow: Annotated[bool, Query(description="then what the job writes, until it ends")] = False,
        max_seconds: Annotated[
            float, Query(gt=0, le=MAX_FOLLOW_SECONDS, description="the longest a follow lasts")
        ] = 3600.0,
    ) -> Response:
        """The end of the job's output; with ``follow``, a stream of it that lasts while the job
        runs (or is queued) and ends once the job did and its output is read."""
        job = _job(session, org, experiment_id, job_id)
        if not follow:
            return PlainTextResponse(executor.logs(Path(job.job_dir), tail))
        ident = job.id

        def active() -> bool:
            with request_sessions() as s:
                row = s.get(db.Job, ident)
                return row is not None and row.status in (*db.QUEUED, *db.ACTIVE)

        return StreamingResponse(
            follow_file(Path(job.job_dir) / LOG_FILE, tail, active, max_seconds), media_type="text/plain"
        )

    @api.get("/experiments/{experiment_id}/jobs/{job_id}/metrics", tags=["jobs"])
    def job_metrics(org: str, experiment_id: str, job_id: str, session: SessionDep) -> list[dict]:
        """The job's KPIs per epoch (train_loss, val_loss, val_mAP, val_mAP50, ...): its curves."""
        return epoch_metrics(_job(session, org, experiment_id, job_id))

    @api.get("/experiments/{experiment_id}/jobs/{job_id}", tags=["jobs"])
    def get_job(org: str, experiment_id: str, job_id: str, session: SessionDep) -> dict:
        """The job's status (Pending, Running, Done, Error, Canceling, Canceled ...), its epoch, ETA and
        KPIs from status.json, and the spec it runs with."""
        return job_out(_job(session, org, experiment_id, job_id), detail=True)

    mount_web(app)
    app.include_router(api)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until Ctrl+C; jobs that run then go on and are followed again on the next start."""
    app = create_app(settings)
    shown = make_url(settings.database_url()).render_as_string(hide_password=True)
    print(f"rtdetr service: data in {settings.data_dir}, database {shown}")
    print(f"bearer token in {settings.token_file} (send 'Authorization: Bearer <token>')")
    print(f"API on http://{host}:{port}/api/v1, docs on http://{host}:{port}/docs")
    print(f"web page on http://{host}:{port}/?org=<org>#token=<token>")
    uvicorn.run(app, host=host, port=port, log_level="info")
