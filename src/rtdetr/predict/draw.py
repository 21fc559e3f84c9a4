"""Inference outputs: KITTI label lines, class colours and annotated images."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache

from PIL import Image, ImageColor, ImageDraw, ImageFont

from rtdetr.errors import UserError

log = logging.getLogger(__name__)

# Distinct colours for classes without a color_map entry (class index modulo the palette).
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 225, 25), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    (128, 128, 128), (255, 255, 255),
)  # fmt: skip


def kitti_line(name: str, box: Sequence[float], score: float) -> str:
    """TAO's KITTI label line of one detection (box xyxy in pixels)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        f"{name} 0.00 0 0.00 {x1:.3f} {y1:.3f} {x2:.3f} {y2:.3f} "
        f"0.00 0.00 0.00 0.00 0.00 0.00 0.00 {float(score):.3f}"
    )


def parse_colour(value: str, where: str) -> tuple[int, int, int]:
    """A colour name ('red') or hex code ('#ff8800', '#f80') as RGB; UserError naming ``where``."""
    try:
        rgb = ImageColor.getrgb(str(value).strip())
    except ValueError as exc:
        raise UserError(
            f"{where}: unknown colour {value!r} (use a colour name such as 'red' or a hex code such as '#ff8800')"
        ) from exc
    return tuple(rgb[:3])


def class_colours(
    class_names: Sequence[str], color_map: Mapping[str, str] | None = None, field: str = "inference.color_map"
) -> list[tuple[int, int, int]]:
    """One RGB colour per class: ``color_map[name]`` where given, else the palette's."""
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(class_names))]
    index = {name: i for i, name in enumerate(class_names)}
    for name, value in (color_map or {}).items():
        rgb = parse_colour(value, f"{field}.{name}")
        if name not in index:
            log.warning(
                "%s.%s: no class of that name (classes: %s); ignored", field, name, ", ".join(class_names)
            )
            continue
        colours[index[name]] = rgb
    return colours


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_detections(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    outline_width: int = 3,
    captions: bool = True,
) -> Image.Image:
    """A copy of ``image`` with each box outlined in its class colour and, with ``captions``, a
    ``name: 0.87`` label on a filled background above the box (inside it at the top edge)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = _font(max(10, round(min(out.size) / 45)))
    for box, label, score in zip(boxes, labels, scores):
        x1, y1, x2, y2 = (float(v) for v in box)
        colour = colours[int(label)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=max(1, int(outline_width)))
        if not captions:
            continue
        text = f"{class_names[int(label)]}: {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th], fill=colour)
        dark = sum(colour) > 380  # black text on light colours
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font)
    return out
