"""Inference inputs: folders, files and globs."""

from __future__ import annotations

import pytest

from rtdetr.data.sources import list_inputs
from rtdetr.errors import UserError


def test_folders_files_and_globs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for name in ("2.jpg", "1.PNG", "clip.mp4", "notes.txt"):
        (a / name).write_bytes(b"x")
    (b / "3.jpeg").write_bytes(b"x")
    (b / "odd.dat").write_bytes(b"x")
    found = list_inputs([str(a), str(b / "*.jpeg"), str(b / "odd.dat"), str(a / "2.jpg")])
    assert found.images == [a / "1.PNG", a / "2.jpg", b / "3.jpeg", b / "odd.dat"]  # each once
    assert found.videos == [a / "clip.mp4"]
    assert found.ignored == [a / "notes.txt"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [("{tmp}/missing", "image_dir[0]: {tmp}/missing: no such file or folder"),
     ("{tmp}/*.png", "the pattern matches no file"),
     ("{tmp}", "no image or video files"),
     ("", "image_dir[0]: empty path")],
)  # fmt: skip
def test_clear_errors(tmp_path, entry, message):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=message.format(tmp=tmp_path).replace("*", r"\*").replace("[", r"\[")):
        list_inputs([entry.format(tmp=tmp_path)])
