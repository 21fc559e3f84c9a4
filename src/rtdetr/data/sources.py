"""Where a run's data come from: the spec's COCO sources (read, summarised in the log, their skipped
items in the results folder's issue log), and inference inputs (folders, single files and glob
patterns -> image files and video files)."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rtdetr.common.files import atomic_write_text
from rtdetr.config import ExperimentConfig
from rtdetr.data.coco import ISSUES_LOG, CocoSource, concat_sources, load_coco
from rtdetr.errors import UserError
from rtdetr.log import is_rank_zero

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_GLOB_CHARS = ("*", "?", "[")


@dataclass
class InferenceInputs:
    """Files to run on, in a stable order (sorted within each entry, entries in the given order)."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files in the folders that are neither


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_inputs(
    entries: list[str], field_name: str = "dataset.infer_data_sources.image_dir"
) -> InferenceInputs:
    """Expand each entry: a folder (its files, not recursive), a file, or a glob pattern.

    In folders and globs, files are taken by extension (images and videos) and the others ignored;
    a file named directly is always taken (as a video by its extension, else as an image). An entry
    that names nothing, or no file at all in the end, is a UserError.
    """
    found = InferenceInputs()
    seen: set[Path] = set()

    def add(path: Path, named: bool) -> None:
        key = path.resolve()  # one file named two ways is still one input
        if key in seen:
            return
        seen.add(key)
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            found.videos.append(path)
        elif suffix in IMAGE_EXTENSIONS or named:
            found.images.append(path)
        else:
            found.ignored.append(path)

    for i, entry in enumerate(entries):
        where = f"{field_name}[{i}]"
        if not entry:
            raise UserError(f"{where}: empty path")
        path = Path(entry).expanduser()
        if any(c in entry for c in _GLOB_CHARS) and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(entry), recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                raise UserError(f"{where}: {entry}: the pattern matches no file")
            for p in files:
                add(p, named=False)
        elif path.is_dir():
            for p in sorted(path.iterdir()):
                if p.is_file():
                    add(p, named=False)
        elif path.is_file():
            add(path, named=True)
        else:
            raise UserError(f"{where}: {entry}: no such file or folder")
    if not found.images and not found.videos:
        names = ", ".join(entries)
        raise UserError(
            f"{field_name}: no image or video files in {names} (images: {', '.join(IMAGE_EXTENSIONS)}; "
            f"videos: {', '.join(VIDEO_EXTENSIONS)})"
        )
    if found.ignored:
        log.info(
            "ignored %d files that are neither images nor videos (e.g. %s)",
            len(found.ignored),
            found.ignored[0],
        )
    return found


def read_sources(cfg: ExperimentConfig, which: str, issues: list[str] | None = None) -> CocoSource:
    """The COCO source(s) of ``which`` ("train", "val" or "test") as one; each source's summary is
    logged (images, boxes per class, skipped items by reason and the first few), and its skipped
    items appended to ``issues`` (lines for the results directory's issue log, see write_issues)."""
    d = cfg.dataset
    raw = {"train": d.train_data_sources, "val": [d.val_data_sources], "test": [d.test_data_sources]}[which]
    sources = [
        load_coco(
            s.json_file, s.image_dir, num_classes=d.num_classes, remap_mscoco_category=d.remap_mscoco_category
        )
        for s in raw
    ]
    for source in sources:
        report_source(source, which, issues)
    return concat_sources(sources)


def report_source(source: CocoSource, name: str, issues: list[str] | None = None) -> None:
    """Log the source's summary; append every skipped item (after a count per reason) to ``issues``."""
    if not is_rank_zero():
        return
    for line in source.summary_lines():
        log.info("%s data: %s", name, line)
    if issues is not None and len(source.report):
        issues.append(f"# {name}: {', '.join(source.json_files)}")
        issues += source.report.log_lines()


def write_issues(results_dir: Path, issues: list[str]) -> None:
    """The issue log of a run whose data were read: written whole (atomically), or removed when
    there is nothing to report (a log of an earlier run stays until then)."""
    if not is_rank_zero():
        return
    path = Path(results_dir) / ISSUES_LOG
    if issues:
        atomic_write_text(path, "\n".join(issues) + "\n")
    else:
        path.unlink(missing_ok=True)
