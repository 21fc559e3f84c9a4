"""Datasets of the job server: COCO folders under the data folder, or archives extracted safely.

A dataset is an image folder and a COCO annotation file. In a folder (or an archive) they are found as
``images/`` and ``annotations.json`` at its top, or the only ``*.json`` there or in ``annotations/``;
``image_dir`` and ``json_file`` (relative to the folder) choose others. The toolkit's own reader checks
the pair, and what it found is kept as the dataset's summary.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

from rtdetr.data.coco import load_coco
from rtdetr.errors import UserError, abbreviate

MAX_MEMBERS = 1_000_000
MAX_CLASSES = 100_000  # dataset.num_classes' limit
COPY_CHUNK = 1 << 20


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, links resolved, is ``folder`` or lies below it."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in parts:
        return "a '..' path"
    if member.issym() or member.islnk():
        return "a link"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "a device or pipe"
    if not (member.isfile() or member.isdir()):
        return "not a file or folder"
    if not parts:
        return "an empty name"
    return None


def extract_archive(archive: Path, target: Path, max_bytes: int) -> None:
    """Extract a tar (gz, bz2, xz) into the new folder ``target``: files and folders only, every name
    relative and without '..', at most ``max_bytes`` in all. Every member is checked before anything
    is written; a refused archive leaves nothing behind. UserError names the first bad member."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed below; opening is what may fail here)
    except (tarfile.TarError, OSError) as exc:
        raise UserError("the upload is not a tar archive (tar, tar.gz, tar.bz2 or tar.xz)") from exc
    try:
        with tar:
            members = _checked_members(tar, max_bytes)
            target.mkdir(parents=True)
            try:
                for member in members:
                    _extract_member(tar, member, target)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"the archive cannot be read or extracted: {exc}") from exc


def _checked_members(tar: tarfile.TarFile, max_bytes: int) -> list[tarfile.TarInfo]:
    members = []
    total = 0
    for member in tar:
        problem = _member_problem(member)
        if problem:
            raise UserError(f"archive member '{abbreviate(member.name, 120)}' is {problem}; refused")
        members.append(member)
        total += member.size if member.isfile() else 0
        if total > max_bytes:
            raise UserError(f"the archive holds more than {max_bytes} bytes; refused")
        if len(members) > MAX_MEMBERS:
            raise UserError(f"the archive holds more than {MAX_MEMBERS} members; refused")
    return members


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    relative = "/".join(p for p in member.name.replace("\\", "/").split("/") if p not in ("", "."))
    path = target / relative
    # the folder is new and holds only what was extracted (no links), so no parent leads outside
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UserError(
            f"archive member '{abbreviate(member.name, 120)}' lies below a file; refused"
        ) from exc
    if member.isdir():
        if path.exists() and not path.is_dir():
            raise UserError(f"archive member '{abbreviate(member.name, 120)}' repeats a file name; refused")
        path.mkdir(exist_ok=True)
        return
    source = tar.extractfile(member)
    if source is None:
        raise UserError(f"archive member '{abbreviate(member.name, 120)}' cannot be read")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError as exc:
        raise UserError(f"archive member '{abbreviate(member.name, 120)}' repeats a name; refused") from exc
    with os.fdopen(fd, "wb") as out, source:
        remaining = member.size
        while remaining > 0:
            chunk = source.read(min(COPY_CHUNK, remaining))
            if not chunk:
                break
            out.write(chunk)
            remaining -= len(chunk)


def dataset_root(folder: Path) -> Path:
    """The folder itself, or its only subfolder when it holds nothing else (an archive of one folder)."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


def find_pair(root: Path, image_dir: str | None, json_file: str | None) -> tuple[Path, Path]:
    """The image folder and annotation file of a dataset folder (rules in the module docstring)."""
    for value, field in ((image_dir, "image_dir"), (json_file, "json_file")):
        if value and (os.path.isabs(value) or ".." in Path(value).parts):
            raise UserError(
                f"{field}: '{abbreviate(value)}' must be relative to the dataset folder, without '..'"
            )
    images = root / (image_dir or "images")
    if not images.is_dir() or not inside(images, root):
        raise UserError(f"image_dir: no image folder '{image_dir or 'images'}' in the dataset folder")
    if json_file:
        annotations = root / json_file
    elif (root / "annotations.json").is_file():
        annotations = root / "annotations.json"
    else:
        found = sorted(root.glob("*.json")) or sorted((root / "annotations").glob("*.json"))
        if len(found) != 1:
            names = ", ".join(str(p.relative_to(root)) for p in found[:10])
            raise UserError(
                "json_file: " + ("no COCO annotation file (annotations.json, *.json or annotations/*.json)"
                                 if not found else f"several annotation files ({names}); name one")
            )  # fmt: skip
        annotations = found[0]
    if not annotations.is_file() or not inside(annotations, root):
        raise UserError(f"json_file: no annotation file '{json_file}' in the dataset folder")
    return images, annotations


def _num_classes(json_file: Path) -> int:
    """TAO's convention: the largest category id + 1 (the category id is the logit index)."""
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{json_file.name}: not a readable JSON file: {exc}") from exc
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list):
        raise UserError(f"{json_file.name}: no 'categories' list: not a COCO detection file")
    ids = [c.get("id") for c in categories if isinstance(c, dict)]
    ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_CLASSES]
    return max(ids, default=0) + 1


def summarize(image_dir: Path, json_file: Path) -> dict[str, Any]:
    """What the toolkit's COCO reader finds in a dataset: images, boxes per class, skipped items."""
    num_classes = _num_classes(json_file)
    source = load_coco(json_file, image_dir, num_classes=num_classes)
    names = source.class_names
    counts = source.report.counts
    return {
        "images": len(source.records),
        "images_without_boxes": sum(1 for r in source.records if not r["labels"]),
        "boxes": sum(len(r["labels"]) for r in source.records),
        "num_classes": num_classes,
        "categories": {str(k): v for k, v in sorted(source.categories.items())},
        "boxes_per_class": {names[k]: n for k, n in source.boxes_per_class().items()},
        "skipped": dict(counts.most_common()),
        "skipped_examples": [f"{detail}: {reason}" for reason, detail in source.report.items[:20]],
        "lines": source.summary_lines(),
    }
