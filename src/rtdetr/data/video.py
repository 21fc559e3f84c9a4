"""Video files frame by frame (PyAV): decode to RGB PIL images, encode annotated frames to H.264."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image

# What a missing, broken or undecodable video raises.
VIDEO_ERRORS = (av.FFmpegError, OSError, ValueError)


class VideoReader:
    """``with VideoReader(path) as video: for frame in video: ...`` (RGB PIL images, in order).

    ``fps`` is the stream's average frame rate (25 when the file does not say).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._container = av.open(str(self.path))
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"{self.path}: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else Fraction(25)
        self.frame_count = int(self._stream.frames or 0)  # 0 when unknown

    def __iter__(self) -> Iterator[Image.Image]:
        for frame in self._container.decode(self._stream):
            yield frame.to_image()

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encodes RGB PIL images of one size to an H.264 (yuv420p) file at ``fps``.

    Odd sizes are padded by one pixel (the codec needs even ones). Written to a temporary file that
    is renamed over ``path`` on close, so a failed run never leaves half a video.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, width: int, height: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp{self.path.suffix}")
        self._container = av.open(str(self._tmp), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, image: Image.Image) -> None:
        if image.size != (self._stream.width, self._stream.height):
            canvas = Image.new("RGB", (self._stream.width, self._stream.height))
            canvas.paste(image, (0, 0))
            image = canvas
        for packet in self._stream.encode(av.VideoFrame.from_image(image)):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._container.close()
        self._tmp.unlink(missing_ok=True)
