"""Image files -> 8-bit RGB PIL images, EXIF orientation applied."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

# What a broken, truncated or non-image file raises while it is opened or decoded.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def load_image(path: str | os.PathLike) -> Image.Image:
    """The decoded image as 8-bit RGB, upright (EXIF orientation applied).

    Grayscale/palette/CMYK/etc. convert to RGB; alpha is dropped (as torchvision's read_image does);
    16-bit images are scaled 0..65535 -> 0..255 (32-bit/float ones by their range), never clipped.
    Raises one of UNREADABLE_IMAGE_ERRORS for a file that cannot be decoded (e.g. truncated).
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as 8-bit RGB (see load_image)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), sixteen_bit=img.mode in _SIXTEEN_BIT)).convert(
            "RGB"
        )
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _to_uint8(array: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """[H, W] integer/float array -> uint8: 16-bit /257; 32-bit int/float by the range the values fit
    (float 0..1, 0..255, 0..65535), else stretched min..max."""
    if sixteen_bit:
        scaled = array / 257.0
    else:
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if array.dtype.kind == "f" and low >= 0 and high <= 1:
            scaled = array * 255.0
        elif low >= 0 and high <= 255:
            scaled = array
        elif low >= 0 and high <= 65535:
            scaled = array / 257.0
        else:
            scaled = (array - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(np.nan_to_num(np.asarray(scaled, dtype=np.float64))), 0, 255).astype(np.uint8)
