"""The BCCD sample shipped in the package, written out as an ordinary COCO folder.

``write_sample(DIR)`` gives::

    DIR/images/*.jpg                         64 images, 640x480
    DIR/annotations/instances_train.json     48 of them (BCCD's train split)
    DIR/annotations/instances_val.json       the other 16 (BCCD's val split)
    DIR/annotations/instances_test.json      the val split again, for evaluate
    DIR/LICENSE, DIR/README.md

which is what the example specs in docs/examples/ read (``rtdetr sample-data data/bccd``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from rtdetr.common.files import atomic_write
from rtdetr.errors import UserError

# annotation file written -> the sample's split it holds
SPLITS = {"instances_train.json": "train", "instances_val.json": "val", "instances_test.json": "val"}

README = """\
# BCCD sample

A small subset of BCCD (blood cell detection: RBC, WBC, Platelets), written by
`rtdetr sample-data`, in COCO layout:

- `images/`: {images} JPEG images, 640x480.
- `annotations/instances_train.json`: {train} images of BCCD's train split.
- `annotations/instances_val.json`: {val} images of BCCD's val split.
- `annotations/instances_test.json`: the val split again (the same images and boxes), so that
  `rtdetr evaluate` has test data; it is not an independent test set.

`file_name`s are relative to `images/`. Category ids are 1..3, so `num_classes` is 4 under TAO's
convention (the category id is the logit index).

Source: the BCCD_Dataset repository by Shenggan, MIT License (see LICENSE beside this file),
converted from Pascal VOC XML to COCO JSON.
"""


@dataclass
class SampleSummary:
    """What ``write_sample`` wrote: the folder, the number of images, and per annotation file its
    number of images and boxes."""

    root: Path
    images: int
    annotations: dict[str, tuple[int, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A few lines for the user: each file or folder written, and what it holds."""
        notes = {"instances_test.json": ", the val split again"}
        out = [f"wrote {self.root}:", f"  {self.root / 'images'}/  {self.images} images"]
        for name, (images, boxes) in self.annotations.items():
            path = self.root / "annotations" / name
            out.append(f"  {path}  {images} images, {boxes} boxes{notes.get(name, '')}")
        out.append(f"  {self.root / 'LICENSE'}, {self.root / 'README.md'}")
        return out


def sample_source() -> resources.abc.Traversable:
    """The sample inside the package: images/, train.json, val.json, LICENSE, README.md."""
    return resources.files("rtdetr") / "assets" / "bccd_sample"


def check_target(root: str | Path, overwrite: bool) -> Path:
    """``root`` as a folder to write the sample into: one-line UserError for a file, or for a
    folder that exists and is not empty unless ``overwrite``."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is a file; give a folder to write the sample into")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise UserError(f"{root} exists and is not empty; choose another folder or pass --overwrite")
    blocking = next((p for p in root.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"{root}: {blocking} is a file, not a folder")
    return root


def write_sample(root: str | Path, overwrite: bool = False) -> SampleSummary:
    """Write the shipped BCCD sample under ``root`` as a COCO folder (see the module docstring).

    Each file is written to a temporary name and renamed. With ``overwrite`` the sample's files
    replace those of the same name; other files in ``root`` are left alone."""
    root = check_target(root, overwrite)
    source = sample_source()
    image_files = sorted(
        (f for f in (source / "images").iterdir() if f.name.lower().endswith(".jpg")), key=lambda f: f.name
    )
    splits = {split: json.loads((source / f"{split}.json").read_text()) for split in set(SPLITS.values())}
    summary = SampleSummary(root=root, images=len(image_files))
    try:
        for image in image_files:
            _write_bytes(root / "images" / image.name, image.read_bytes())
        for name, split in SPLITS.items():
            data = splits[split]
            _write_bytes(root / "annotations" / name, (json.dumps(data, indent=1) + "\n").encode())
            summary.annotations[name] = (len(data["images"]), len(data["annotations"]))
        _write_bytes(root / "LICENSE", (source / "LICENSE").read_bytes())
        counts = {s: len(d["images"]) for s, d in splits.items()}
        text = README.format(images=len(image_files), train=counts["train"], val=counts["val"])
        _write_bytes(root / "README.md", text.encode())
    except OSError as exc:
        target = exc.filename or root
        raise UserError(f"{target}: cannot write: {exc.strerror or exc}") from exc
    return summary


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data), mode="wb", fsync=False)
