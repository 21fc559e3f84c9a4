"""The tables of the job server and its sessions (SQLAlchemy 2).

SQLite (the default) runs in WAL mode, so that status requests read while the scheduler writes;
any other SQLAlchemy URL (PostgreSQL) works the same. The jobs table is also the queue: a job is
claimed by one conditional UPDATE from Pending to Running (see ``claim``).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, event, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# Job statuses (TAO's names)
PENDING, RUNNING, DONE, ERROR = "Pending", "Running", "Done", "Error"
CANCELED, CANCELING = "Canceled", "Canceling"
PAUSING, PAUSED, RESUMING = "Pausing", "Paused", "Resuming"
STATUSES = (PENDING, RUNNING, DONE, ERROR, CANCELED, CANCELING, PAUSING, PAUSED, RESUMING)
QUEUED = (PENDING, RESUMING)  # waiting for a slot; Resuming: a paused job, to go on from its checkpoint
ACTIVE = (RUNNING, CANCELING, PAUSING)  # a process may be alive
FINISHED = (DONE, ERROR, CANCELED, PAUSED)


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Dataset(Base):
    """A COCO dataset: an image folder and an annotation file, both under the data folder.

    summary: what the toolkit's reader found (images, boxes per class, skipped items with reasons).
    uploaded: the files were extracted from an archive into the data folder (removed with the row).
    """

    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(32), default="coco")
    root: Mapped[str] = mapped_column(Text)
    image_dir: Mapped[str] = mapped_column(Text)
    json_file: Mapped[str] = mapped_column(Text)
    uploaded: Mapped[bool] = mapped_column(default=False)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Experiment(Base):
    """A network and its datasets; ``base_spec`` lies under the specs of every job it runs."""

    __tablename__ = "experiments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    network_arch: Mapped[str] = mapped_column(String(32), default="rtdetr")
    train_datasets: Mapped[list] = mapped_column(JSON, default=list)
    eval_dataset: Mapped[str | None] = mapped_column(String(32), default=None)
    test_dataset: Mapped[str | None] = mapped_column(String(32), default=None)
    base_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)


class Job(Base):
    """One run of an action. ``specs`` is the complete, validated spec it runs with; ``handle``
    identifies its process for the executor (a process group id for the local one)."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    org: Mapped[str] = mapped_column(String(64), index=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), default=None)
    action: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    specs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_dir: Mapped[str] = mapped_column(Text)
    handle: Mapped[str | None] = mapped_column(String(64), default=None)
    gpu: Mapped[str | None] = mapped_column(String(16), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=now)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and use from several threads."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def claim(session: Session, job_id: str, **values: Any) -> bool:
    """Move a queued job (Pending or Resuming) to Running with ``values`` set, in one conditional
    UPDATE: of several schedulers racing for a job exactly one gets True."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(QUEUED))
        .values(status=RUNNING, started_at=now(), **values)
    )
    session.commit()
    return result.rowcount == 1


def set_status(session: Session, job_id: str, status: str, expected: tuple[str, ...], **values: Any) -> bool:
    """Set a job's status when it is one of ``expected`` (conditional, as ``claim``)."""
    if status in FINISHED:
        values.setdefault("finished_at", now())
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(expected)).values(status=status, **values)
    )
    session.commit()
    return result.rowcount == 1
