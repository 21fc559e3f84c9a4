"""Inference over image files and videos with TAO's outputs.

For an image ``dir/a.jpg``: ``labels/a.txt`` (KITTI lines) and ``images_annotated/a.jpg``; for a video
``v.mp4``: ``labels/v/v_000000.txt`` per frame and ``images_annotated/v.mp4``; with ``is_internal``
both go under ``<out>/<the file's grandparent folder name>/`` and boxes carry no captions. All
detections also go to ``detections.json`` (COCO layout: images, categories, annotations with
scores; boxes in original pixels).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from rtdetr.common.files import atomic_write, atomic_write_text
from rtdetr.data.images import UNREADABLE_IMAGE_ERRORS, load_image
from rtdetr.data.sources import InferenceInputs
from rtdetr.data.video import VIDEO_ERRORS, VideoReader, VideoWriter
from rtdetr.deploy.detector import Detections, Detector
from rtdetr.predict.draw import draw_detections, kitti_line

log = logging.getLogger(__name__)

DETECTIONS_JSON = "detections.json"


@dataclass
class InferenceSummary:
    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def line(self) -> str:
        parts = [f"{self.images} images"]
        if self.videos:
            parts.append(f"{self.videos} videos ({self.frames} frames)")
        parts.append(f"{self.detections} detections")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable files skipped")
        return ", ".join(parts)


class _ImageFiles(Dataset):
    """Decodes and prepares image files in loader workers; an unreadable file yields its error."""

    def __init__(self, paths: Sequence[Path], detector: Detector):
        self.paths, self.preset = list(paths), detector.preset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.paths[index])
        except UNREADABLE_IMAGE_ERRORS as exc:
            return index, None, None, None, str(exc) or type(exc).__name__
        tensor, canvas = self.preset.image_only(tv_tensors.Image(F.pil_to_tensor(image)))
        return index, tensor, canvas, torch.tensor([image.height, image.width]), None


def _collate(batch):
    return batch


class OutputWriter:
    """Writes the label files, annotated images and the COCO detections of one inference run."""

    def __init__(
        self,
        out_dir: Path,
        class_names: Sequence[str],
        colours: Sequence[tuple[int, int, int]],
        category_ids: Sequence[int] | None,
        outline_width: int = 3,
        is_internal: bool = False,
    ):
        self.out_dir = Path(out_dir)
        self.class_names, self.colours = list(class_names), list(colours)
        self.outline_width, self.is_internal = outline_width, is_internal
        self.category_ids = [
            c if category_ids is not None and c >= 0 else i
            for i, c in enumerate(category_ids if category_ids is not None else range(len(class_names)))
        ]
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._stems: set[tuple[Path, str]] = set()

    def base(self, source: Path) -> Path:
        """The folder that receives labels/ and images_annotated/ for ``source``."""
        if self.is_internal:
            return self.out_dir / (source.resolve().parent.parent.name or "root")
        return self.out_dir

    def claim(self, base: Path, stem: str) -> str:
        """A stem for one input's outputs in ``base`` (images_annotated/<stem>.<ext>, labels/<stem>.txt or
        labels/<stem>/): ``stem``, or ``stem_2``... when an earlier input of this run took it."""
        candidate, n = stem, 1
        while (base, candidate) in self._stems:
            n += 1
            candidate = f"{stem}_{n}"
        if n > 1:
            log.warning("another input is also named %s; this one's outputs are named %s", stem, candidate)
        self._stems.add((base, candidate))
        return candidate

    def labels(self, path: Path, det: Detections) -> None:
        lines = [kitti_line(det.names[i], det.boxes[i], det.scores[i]) for i in range(len(det))]
        atomic_write_text(path, "".join(line + "\n" for line in lines), fsync=False)

    def draw(self, image: Image.Image, det: Detections) -> Image.Image:
        return draw_detections(
            image, det.boxes, det.labels, det.scores, self.class_names, self.colours,
            self.outline_width, captions=not self.is_internal,
        )  # fmt: skip

    def record(self, file_name: str, det: Detections, **extra) -> None:
        image_id = len(self.images) + 1
        h, w = det.image_size
        self.images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, **extra})
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(self.category_ids[int(label)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "score": float(score),
                    "iscrowd": 0,
                }
            )

    def finish(self) -> Path:
        categories = [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self.class_names)]
        data = {"images": self.images, "categories": categories, "annotations": self.annotations}
        return atomic_write_text(self.out_dir / DETECTIONS_JSON, json.dumps(data) + "\n")


def _save_image(image: Image.Image, path: Path) -> None:
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    options = {"quality": 95} if fmt == "JPEG" else {}
    atomic_write(path, lambda fh: image.save(fh, format=fmt, **options), mode="wb", fsync=False)


def run_inference(
    detector: Detector,
    inputs: InferenceInputs,
    writer: OutputWriter,
    *,
    conf: float = 0.5,
    batch_size: int = 4,
    workers: int = 0,
) -> InferenceSummary:
    """Detect in every image and video of ``inputs``; ``writer`` writes the outputs."""
    summary = InferenceSummary()
    if inputs.images:
        _run_images(detector, inputs.images, writer, summary, conf, batch_size, workers)
    for video in inputs.videos:
        _run_video(detector, video, writer, summary, conf, batch_size)
    writer.finish()
    for name, reason in summary.unreadable[:5]:
        log.warning("skipped %s: %s", name, reason)
    if len(summary.unreadable) > 5:
        log.warning("... and %d more unreadable files", len(summary.unreadable) - 5)
    return summary


def _run_images(detector, paths, writer, summary, conf, batch_size, workers) -> None:
    loader = DataLoader(
        _ImageFiles(paths, detector), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        multiprocessing_context="fork" if workers > 0 else None,
    )  # fmt: skip
    with tqdm(total=len(paths), unit="img", desc="inference", disable=None) as bar:
        for batch in loader:
            good = [item for item in batch if item[4] is None]
            for index, *_, error in batch:
                if error is not None:
                    summary.unreadable.append((str(paths[index]), error))
            if good:
                dets = detector.detect_batch(
                    torch.stack([g[1] for g in good]), torch.stack([g[2] for g in good]),
                    torch.stack([g[3] for g in good]), conf,
                )  # fmt: skip
                for (index, *_), det in zip(good, dets):
                    _write_image(paths[index], det, writer)
                    summary.images += 1
                    summary.detections += len(det)
            bar.update(len(batch))


def _write_image(path: Path, det: Detections, writer: OutputWriter) -> None:
    det.source = str(path)
    base = writer.base(path)
    stem = writer.claim(base, path.stem)
    writer.labels(base / "labels" / f"{stem}.txt", det)
    _save_image(writer.draw(load_image(path), det), base / "images_annotated" / f"{stem}{path.suffix}")
    writer.record(str(path), det)


def _next_frames(frames, count: int) -> tuple[list[Image.Image], BaseException | None]:
    """Up to ``count`` decoded frames, and the decoding error that stopped them early, if any."""
    batch: list[Image.Image] = []
    try:
        for frame in frames:
            batch.append(frame)
            if len(batch) == count:
                break
    except VIDEO_ERRORS as exc:
        return batch, exc
    return batch, None


def _run_video(detector, path, writer, summary, conf, batch_size) -> None:
    """Annotated video and per-frame labels; a video that fails to decode midway keeps the frames
    decoded before (a warning says where it stopped)."""
    try:
        video = VideoReader(path)
    except VIDEO_ERRORS as exc:
        summary.unreadable.append((str(path), str(exc) or type(exc).__name__))
        return
    base = writer.base(path)
    stem = writer.claim(base, path.stem)
    out, index, error = None, 0, None
    try:
        with video, tqdm(total=video.frame_count or None, unit="frame", desc=path.name, disable=None) as bar:
            frames = iter(video)
            while error is None:
                batch, error = _next_frames(frames, batch_size)
                for image, det in zip(batch, detector.predict(batch, conf=conf, batch_size=batch_size)):
                    if out is None:
                        out = VideoWriter(
                            base / "images_annotated" / f"{stem}.mp4", video.fps, image.width, image.height
                        )
                    writer.labels(base / "labels" / stem / f"{stem}_{index:06d}.txt", det)
                    out.write(writer.draw(image, det))
                    writer.record(str(path), det, frame=index)
                    summary.detections += len(det)
                    index += 1
                bar.update(len(batch))
                if len(batch) < batch_size:
                    break
    except BaseException:
        if out is not None:
            out.abort()
        raise
    if out is None:
        summary.unreadable.append((str(path), str(error) if error else "no frames"))
        return
    out.close()
    if error is not None:
        log.warning(
            "%s: decoding stopped after %d frames (%s); the outputs cover those frames", path, index, error
        )
        summary.unreadable.append((str(path), f"decoding stopped after {index} frames: {error}"))
    summary.videos += 1
    summary.frames += index
