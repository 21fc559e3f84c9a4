"""COCO JSON reading: per-image records, the TAO category convention, and a report of skipped items.

A record is a plain dict per image (JSON-like, so the serialized dataset can pickle it):

    {"image_id": int, "file_name": str (path joined with image_dir), "height": int, "width": int,
     "boxes": [[x1, y1, x2, y2], ...] float pixels (clipped to the image), "labels": [int, ...] logit
     indices, "crowd_boxes": [[x1, y1, x2, y2], ...], "crowd_labels": [int, ...]}

Crowd boxes are kept aside: they are never training targets.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from rtdetr.data.mscoco import MSCOCO_CATEGORY_IDS
from rtdetr.errors import UserError, abbreviate

logger = logging.getLogger(__name__)

ISSUES_LOG = "dataset_issues.log"  # every skipped item of a run's data, in its results directory

# Reasons an item is skipped or changed; the keys of SkipReport.counts.
MISSING_FILE = "image file not found (image dropped)"
NOT_A_FILE = "image path is a folder, not a file (image dropped)"
DUPLICATE_IMAGE = "duplicate image id (later image dropped)"
UNKNOWN_IMAGE = "annotation of an unknown image id (dropped)"
UNKNOWN_CATEGORY = "annotation of an unknown category id (dropped)"
INVALID_BOX = "bbox is not 4 finite numbers (dropped)"
EMPTY_BOX = "box with zero or negative width/height (dropped)"
OUTSIDE_BOX = "box entirely outside the image (dropped)"
CLIPPED_BOX = "box partly outside the image (clipped)"
CROWD_BOX = "crowd box (kept aside, not a training target)"
UNREADABLE_SIZE = "image size unknown and header unreadable (image dropped)"
SIZE_FROM_FILE = "width/height not positive integers (read from the image file)"
INVALID_CROWD = "iscrowd is not 0 or 1 (annotation dropped)"
INVALID_CATEGORY = "category without an integer id >= 0 (dropped, with its annotations)"
INVALID_IMAGE = "image without an integer id or a file_name string (image dropped)"
INVALID_ANNOTATION = "annotation is not an object or has no image_id (dropped)"
MISSING_CATEGORY = "annotation without category_id (dropped)"
MISSING_BOX = "annotation without bbox (dropped)"


@dataclass
class SkipReport:
    """Items of a dataset that were dropped or changed while reading it, with reasons."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail)

    def add(self, reason: str, detail: str) -> None:
        self.items.append((reason, detail))

    def extend(self, other: SkipReport) -> None:
        self.items.extend(other.items)

    @property
    def counts(self) -> Counter:
        """reason -> number of items."""
        return Counter(reason for reason, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def summary_lines(self, limit: int = 5) -> list[str]:
        """One line per reason with its count, then the first `limit` items, then how many more."""
        if not self.items:
            return []
        lines = [f"{count} x {reason}" for reason, count in self.counts.most_common()]
        lines += [f"  {detail}: {reason}" for reason, detail in self.items[:limit]]
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more (see {ISSUES_LOG})")
        return lines

    def log_lines(self) -> list[str]:
        """Every item, one per line (`detail: reason`), after a count per reason (`# n x reason`)."""
        lines = [f"# {count} x {reason}" for reason, count in self.counts.most_common()]
        return lines + [f"{detail}: {reason}" for reason, detail in self.items]


@dataclass
class CocoSource:
    """The usable images of one (or several concatenated) COCO files, and their classes.

    records: one dict per image (see the module docstring); boxes in pixels, labels = logit indices.
    categories: COCO category id -> name, as in the file(s).
    label_to_category: logit index -> COCO category id, length num_classes (-1 where no category
        maps to the index); give it to the postprocessor to report predictions as category ids.
    class_names: logit index -> name (`class_<i>` where no category maps to the index).
    """

    json_files: list[str]
    records: list[dict[str, Any]]
    categories: dict[int, str]
    num_classes: int
    remap_mscoco_category: bool
    report: SkipReport = field(default_factory=SkipReport)

    @property
    def category_to_label(self) -> dict[int, int]:
        """COCO category id -> logit index."""
        return category_to_label(self.categories, self.remap_mscoco_category)

    @property
    def label_to_category(self) -> list[int]:
        inverse = [-1] * self.num_classes
        for category_id, label in self.category_to_label.items():
            inverse[label] = category_id
        return inverse

    @property
    def class_names(self) -> list[str]:
        names = [f"class_{i}" for i in range(self.num_classes)]
        for category_id, label in self.category_to_label.items():
            names[label] = self.categories[category_id]
        return names

    def boxes_per_class(self) -> dict[int, int]:
        """logit index -> number of (non-crowd) boxes."""
        return dict(sorted(Counter(label for r in self.records for label in r["labels"]).items()))

    def summary_lines(self, limit: int = 5) -> list[str]:
        """A few lines for the log: images, boxes per class, skipped items (first `limit`)."""
        names = self.class_names
        negatives = sum(1 for r in self.records if not r["labels"])
        per_class = ", ".join(f"{names[k]} {n}" for k, n in self.boxes_per_class().items())
        files = ", ".join(self.json_files)
        lines = [
            f"{files}: {len(self.records)} images ({negatives} without boxes), "
            f"{sum(len(r['labels']) for r in self.records)} boxes: {per_class or 'none'}"
        ]
        return lines + self.report.summary_lines(limit)


def category_to_label(
    categories: dict[int, str] | Sequence[int], remap_mscoco_category: bool
) -> dict[int, int]:
    """COCO category id -> logit index: the id itself (TAO), or 0..79 for the 80 MS-COCO ids (remap)."""
    if remap_mscoco_category:
        mscoco = {category_id: i for i, category_id in enumerate(MSCOCO_CATEGORY_IDS)}
        return {c: mscoco[c] for c in categories if c in mscoco}
    return {c: c for c in categories}


def _read_json(json_file: Path) -> dict:
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise UserError(f"{json_file}: annotation file not found") from exc
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{json_file}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{json_file}: cannot read annotation file: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of thousands of digits, deep nesting
        raise UserError(f"{json_file}: malformed JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{json_file}: not a COCO annotation file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise UserError(f"{json_file}: missing required COCO key '{key}'")
        if not isinstance(data[key], list):
            raise UserError(f"{json_file}: '{key}' must be a list")
    return data


def _show(value: Any) -> str:
    """A value of the file for a report line: its repr, abbreviated."""
    return abbreviate(repr(value), 60)


def _as_id(value: Any) -> int | None:
    """An id as an int: integers, and floats with an integral value (1.0, as some writers emit),
    within int64; None for anything else (bools, strings, lists, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:  # stored as int64 tensors
        return value
    return None


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)  # an int too large for a float raises OverflowError
    except OverflowError:
        return False


def _crowd_flag(value: Any) -> bool | None:
    """iscrowd as a bool: 0/1 (also as floats, bools or the strings "0"/"1"; null as absent, 0);
    None when invalid."""
    if value is None:
        return False
    if isinstance(value, str):
        return {"0": False, "1": True}.get(value.strip())
    if isinstance(value, bool):
        return value
    if _is_finite_number(value) and value in (0, 1):
        return bool(value)
    return None


def _image_size(path: str) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation, reading only the header; None if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
            return height, width
    except (OSError, ValueError, SyntaxError):
        return None


def load_coco(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    num_classes: int,
    remap_mscoco_category: bool = False,
    check_files: bool = True,
) -> CocoSource:
    """Read a COCO detection file into per-image records (bad items skipped and reported).

    Without `remap_mscoco_category`, category_id is the logit index, so num_classes must exceed the
    largest category id. With it, the 80 MS-COCO ids map to 0..79 and others are dropped.
    `check_files=False` skips the per-image existence check (benchmarks on synthetic files).
    Raises UserError for an unreadable/malformed file, a missing required key, a class-count
    mismatch, or when no usable image remains.
    """
    json_file = Path(json_file)
    data = _read_json(json_file)
    report = SkipReport()

    if not data["categories"]:
        raise UserError(f"{json_file}: 'categories' is empty: no class to train or evaluate")
    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        category_id = _as_id(cat.get("id")) if isinstance(cat, dict) else None
        if category_id is None or category_id < 0:
            shown = _show(cat.get("id")) if isinstance(cat, dict) else f"a {type(cat).__name__}"
            report.add(INVALID_CATEGORY, f"{json_file.name} categories[{i}] (id {shown})")
            continue
        name = str(cat.get("name", f"class_{category_id}"))
        if categories.setdefault(category_id, name) != name:
            raise UserError(
                f"{json_file}: categories[{i}] repeats id {category_id} with another name "
                f"({abbreviate(categories[category_id], 40)!r}, then {abbreviate(name, 40)!r})"
            )
    if not categories:
        raise UserError(
            f"{json_file}: none of the {len(data['categories'])} categories has an integer id >= 0: "
            "no class to train or evaluate"
        )
    _check_num_classes(json_file, categories, num_classes, remap_mscoco_category)
    to_label = category_to_label(categories, remap_mscoco_category)

    records: dict[int, dict[str, Any]] = {}
    dropped: set[Any] = set()  # ids of images dropped above: their annotations go silently
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            report.add(INVALID_IMAGE, f"{json_file.name} images[{i}] (a {type(img).__name__})")
            continue
        image_id, file_name = _as_id(img.get("id")), img.get("file_name")
        if image_id is None or not isinstance(file_name, str) or not file_name:
            detail = f"id {_show(img.get('id'))}, file_name {_show(file_name)}"
            report.add(INVALID_IMAGE, f"{json_file.name} images[{i}] ({detail})")
            continue
        if image_id in records or image_id in dropped:
            report.add(DUPLICATE_IMAGE, f"{json_file.name} image {image_id} ({abbreviate(file_name, 80)})")
            continue
        path = os.path.join(image_dir, file_name)
        if check_files and not os.path.isfile(path):
            reason = NOT_A_FILE if os.path.isdir(path) else MISSING_FILE
            report.add(reason, f"{json_file.name} image {image_id} ({path})")
            dropped.add(image_id)
            continue
        height, width = _as_id(img.get("height")), _as_id(img.get("width"))
        if not (height and width and height > 0 and width > 0):
            size = _image_size(path)
            if size is None:
                report.add(UNREADABLE_SIZE, f"{json_file.name} image {image_id} ({path})")
                dropped.add(image_id)
                continue
            if "height" in img or "width" in img:  # given but unusable (absent is common and fine)
                given = f"width {img.get('width')!r}, height {img.get('height')!r}"
                report.add(
                    SIZE_FROM_FILE, f"{json_file.name} image {image_id} ({given}; file {size[1]}x{size[0]})"
                )
            height, width = size
        records[image_id] = {
            "image_id": image_id, "file_name": path, "height": height, "width": width,
            "boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": [],
        }  # fmt: skip

    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            shown = f"id {_show(ann.get('id'))}" if isinstance(ann, dict) else f"a {type(ann).__name__}"
            report.add(INVALID_ANNOTATION, f"{json_file.name} annotations[{i}] ({shown})")
            continue
        ident = _show(ann["id"]) if "id" in ann else f"[{i}]"
        where = f"{json_file.name} annotation {ident} of image {_show(ann['image_id'])}"
        image_id = _as_id(ann["image_id"])
        record = records.get(image_id)
        if record is None:
            if image_id not in dropped:
                report.add(UNKNOWN_IMAGE, where)
            continue
        if "category_id" not in ann:
            report.add(MISSING_CATEGORY, where)
            continue
        if "bbox" not in ann:
            report.add(MISSING_BOX, where)
            continue
        category_id = _as_id(ann["category_id"])
        label = None if category_id is None else to_label.get(category_id)
        if label is None:
            report.add(UNKNOWN_CATEGORY, f"{where} (category_id {_show(ann['category_id'])})")
            continue
        crowd = _crowd_flag(ann.get("iscrowd", 0))
        if crowd is None:
            report.add(INVALID_CROWD, f"{where} (iscrowd {_show(ann['iscrowd'])})")
            continue
        box = _clip_box(ann["bbox"], record["width"], record["height"], report, where)
        if box is None:
            continue
        if crowd:
            report.add(CROWD_BOX, where)
            record["crowd_boxes"].append(box)
            record["crowd_labels"].append(label)
        else:
            record["boxes"].append(box)
            record["labels"].append(label)

    if not records:
        reasons = ", ".join(f"{n} x {reason}" for reason, n in report.counts.most_common())
        first = f"; first: {report.items[0][1]}" if report.items else ""
        raise UserError(
            f"{json_file}: no usable image of {len(data['images'])}: {reasons or 'no images'}{first}"
        )
    source = CocoSource(
        [str(json_file)], list(records.values()), categories, num_classes, remap_mscoco_category, report
    )
    return source  # the summary: source.summary_lines() (rtdetr.data.sources.read_sources logs it)


def _check_num_classes(json_file: Path, categories: dict[int, str], num_classes: int, remap: bool) -> None:
    if remap:
        if num_classes < len(MSCOCO_CATEGORY_IDS):
            raise UserError(
                f"{json_file}: dataset.remap_mscoco_category maps the COCO categories to 0..79, so "
                f"dataset.num_classes must be at least 80 (it is {num_classes})"
            )
        return
    if categories and max(categories) >= num_classes:
        largest = max(categories)
        raise UserError(
            f"{json_file}: category_id {largest} is used as a logit index but dataset.num_classes is "
            f"{num_classes}; set dataset.num_classes to at least {largest + 1}, or renumber the "
            f"categories to 0..{num_classes - 1} (or set dataset.remap_mscoco_category for MS-COCO files)"
        )


def _clip_box(bbox: Any, width: int, height: int, report: SkipReport, where: str) -> list[float] | None:
    """COCO [x, y, w, h] -> [x1, y1, x2, y2] clipped to the image, or None (reason reported)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_finite_number(v) for v in bbox):
        report.add(INVALID_BOX, f"{where} (bbox {_show(bbox)})")
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        report.add(EMPTY_BOX, f"{where} (bbox {bbox!r})")
        return None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        report.add(OUTSIDE_BOX, f"{where} (bbox {bbox!r}, image {width}x{height})")
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        report.add(CLIPPED_BOX, f"{where} (bbox {bbox!r}, image {width}x{height})")
    return [x1, y1, x2, y2]


def concat_sources(sources: Sequence[CocoSource]) -> CocoSource:
    """Several sources as one (train_data_sources). Image ids stay unique: when two sources share an
    id, every source after the first is shifted past the previous ones' largest id."""
    if not sources:
        raise ValueError("concat_sources needs at least one source")
    if len(sources) == 1:
        return sources[0]
    first = sources[0]
    if any(
        s.num_classes != first.num_classes or s.remap_mscoco_category != first.remap_mscoco_category
        for s in sources
    ):
        raise ValueError("sources read with different num_classes or remap_mscoco_category")
    ids = [r["image_id"] for s in sources for r in s.records]
    shift = len(set(ids)) != len(ids)
    categories: dict[int, str] = {}
    records: list[dict[str, Any]] = []
    report = SkipReport()
    offset = 0
    for source in sources:
        for category_id, name in source.categories.items():
            if categories.setdefault(category_id, name) != name:
                logger.warning(
                    "%s: category %d is named %r, %r in an earlier source; keeping %r",
                    source.json_files[0], category_id, name, categories[category_id], categories[category_id],
                )  # fmt: skip
        for record in source.records:
            records.append(dict(record, image_id=record["image_id"] + offset) if shift else record)
        if shift:
            offset = max(r["image_id"] + offset for r in source.records) + 1
        report.extend(source.report)
    if shift:
        logger.info("image ids repeat across train_data_sources; shifted to keep them unique")
    return CocoSource(
        [f for s in sources for f in s.json_files], records, categories, first.num_classes,
        first.remap_mscoco_category, report,
    )  # fmt: skip
