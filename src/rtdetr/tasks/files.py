"""What a task reads and writes, and the rules that keep it from destroying files.

- A task never writes over one of its inputs: every output path (the results folder's own files and
  files elsewhere, such as ``export.onnx_file``) is compared with every input path before anything
  is written, whatever ``overwrite`` says.
- A results folder belongs to one task: the one whose ``Starting <task>.`` line opens its
  status.json. A task refuses a folder that holds another task's results, a status.json that is
  not JSON Lines of status records (it never appends to one), and, in a folder without status.json,
  files or folders that it would write (a user's ``results.json`` or ``labels/``). It owns only
  the names it declares; everything else in the folder is left alone.
- Partial files of a killed run (``.<owned name>.<8 random characters>.tmp``, as ``atomic_write``
  names them) are removed when the task runs again in the folder; nothing else is.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtdetr.errors import UserError, abbreviate

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
SPEC_FILE = "experiment.yaml"
COMMON_OWNED = (SPEC_FILE, STATUS_FILE)

_STARTED = re.compile(r"^Starting (\w+)\.$")
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's random part: 8 chars


@dataclass
class TaskFiles:
    """The files of one run of a task.

    inputs / outputs: spec field (or a description) -> path, for files read and files written
    outside the results folder. owned: names and glob patterns, relative to the results folder, of
    what the task writes there (files or folders), besides experiment.yaml and status.json.
    """

    inputs: dict[str, str | os.PathLike] = field(default_factory=dict)
    outputs: dict[str, str | os.PathLike] = field(default_factory=dict)
    owned: tuple[str, ...] = ()

    def all_owned(self) -> tuple[str, ...]:
        return COMMON_OWNED + tuple(self.owned)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also through links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs_not_inputs(
    inputs: Mapping[str, str | os.PathLike | None], outputs: Mapping[str, str | os.PathLike | None]
) -> None:
    """UserError when a path written is a path read (or one of two outputs is the other)."""
    ins = [(name, Path(p).expanduser()) for name, p in inputs.items() if p]
    outs = [(name, Path(p).expanduser()) for name, p in outputs.items() if p]
    for i, (out_name, out_path) in enumerate(outs):
        for in_name, in_path in ins:
            if _same_file(out_path, in_path):
                raise UserError(
                    f"{out_name}: {abbreviate(str(out_path), 120)} is the same file as {in_name}, which this "
                    "task reads; writing it would destroy the input: choose another path"
                )
        for other_name, other_path in outs[i + 1 :]:
            if _same_file(out_path, other_path):
                raise UserError(
                    f"{out_name}: {abbreviate(str(out_path), 120)} is the same file as {other_name}; "
                    "choose another path"
                )


def owner_of(results_dir: Path) -> str | None:
    """The task whose results a folder holds (its status.json's first ``Starting <task>.`` line);
    None for a folder without status.json or whose log has no start line. UserError for a
    status.json that is not a status log (rtdetr appends to nothing else)."""
    path = results_dir / STATUS_FILE
    if not path.exists():
        return None
    problem = None
    owner = None
    try:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except (ValueError, RecursionError):
                    problem = f"line {number} is not JSON"
                    break
                if not isinstance(line, dict) or not isinstance(line.get("status"), str):
                    problem = f"line {number} is not a status record"
                    break
                match = _STARTED.match(str(line.get("message", "")))
                if owner is None and line["status"] == "STARTED" and match:
                    owner = match.group(1)
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or exc})"
    if path.is_dir():
        problem = "is a folder"
    if problem is not None:
        raise UserError(
            f"results folder {results_dir}: {STATUS_FILE} {problem}, so it is not a status log of "
            "rtdetr; choose another results_dir, or move the file away"
        )
    return owner


def claim_results_dir(results_dir: Path, task: str, owned: Iterable[str]) -> None:
    """Check that ``task`` may write ``owned`` in ``results_dir`` (see the module docstring);
    UserError naming the folder and what is in the way otherwise."""
    owner = owner_of(results_dir)
    if owner is not None and owner != task:
        raise UserError(
            f"results folder {results_dir} holds the results of {owner} ({STATUS_FILE}); give {task} a "
            f"folder of its own ({task}.results_dir, or results_dir for <results_dir>/{task})"
        )
    if owner is not None or (results_dir / STATUS_FILE).exists():
        return
    for pattern in owned:
        found = next(iter(sorted(results_dir.glob(pattern))), None)
        if found is not None:
            raise UserError(
                f"results folder {results_dir} already holds {found.relative_to(results_dir)}, which "
                f"{task} writes, and no {STATUS_FILE} of rtdetr: choose an empty results_dir or move "
                "those files away"
            )


def remove_partial_files(results_dir: Path, owned: Iterable[str]) -> list[Path]:
    """Remove ``.<name>.<8 characters>.tmp`` files whose name is one of ``owned`` (partial writes of
    a killed run) from ``results_dir``; returns them."""
    patterns = list(owned)
    removed = []
    try:
        entries = list(results_dir.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = _PARTIAL.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if any(fnmatch.fnmatchcase(match.group("name"), p) for p in patterns):
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    if removed:
        log.info("removed %d partial files of an interrupted run from %s", len(removed), results_dir)
    return removed
