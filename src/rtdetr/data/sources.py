"""Inference inputs: folders, single files and glob patterns -> image files and video files."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from rtdetr.errors import UserError

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
