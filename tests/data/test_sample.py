"""`rtdetr sample-data DIR`: the shipped BCCD sample written as a COCO folder."""

from __future__ import annotations

import json

from rtdetr.data.sample import SPLITS, sample_source, write_sample

ANNOTATIONS = ["instances_test.json", "instances_train.json", "instances_val.json"]


def test_writes_a_coco_folder_and_says_what_it_wrote(cli, tmp_path):
    root = tmp_path / "data" / "bccd"
    result = cli("sample-data", root)
    assert result.code == 0, result.err
    images = sorted(p.name for p in (root / "images").iterdir())
    assert len(images) == 64 and all(name.endswith(".jpg") for name in images)
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ANNOTATIONS
    assert sorted(p.name for p in root.iterdir()) == ["LICENSE", "README.md", "annotations", "images"]
    assert "MIT License" in (root / "LICENSE").read_text()
    assert "instances_test.json" in (root / "README.md").read_text()
    for name, split in SPLITS.items():
        data = json.loads((root / "annotations" / name).read_text())
        assert data == json.loads((sample_source() / f"{split}.json").read_text())
        assert {im["file_name"] for im in data["images"]} <= set(images)
        assert f"{root / 'annotations' / name}  {len(data['images'])} images" in result.out
    assert (root / "images" / images[0]).read_bytes() == (sample_source() / "images" / images[0]).read_bytes()
    assert not list(root.rglob(".*.tmp"))
    assert f"{root / 'images'}/  64 images" in result.out


def test_an_empty_folder_is_fine(tmp_path):
    (tmp_path / "bccd").mkdir()
    summary = write_sample(tmp_path / "bccd")
    assert summary.images == 64
    assert summary.annotations["instances_train.json"][0] == 48
    assert summary.annotations["instances_val.json"][0] == summary.annotations["instances_test.json"][0] == 16


def test_refuses_a_folder_that_is_not_empty_in_one_line(cli, tmp_path):
    root = tmp_path / "bccd"
    root.mkdir()
    (root / "mine.txt").write_text("keep")
    result = cli("sample-data", root)
    assert result.code == 2
    assert result.error_lines == [
        f"error: {root} exists and is not empty; choose another folder or pass --overwrite"
    ]
    assert len(result.err.strip().splitlines()) == 1
    assert sorted(p.name for p in root.iterdir()) == ["mine.txt"]


def test_overwrite_replaces_the_sample_and_leaves_other_files(cli, tmp_path):
    root = tmp_path / "bccd"
    assert cli("sample-data", root).code == 0
    (root / "annotations" / "instances_train.json").write_text("{}")
    (root / "mine.txt").write_text("keep")
    result = cli("sample-data", root, "--overwrite")
    assert result.code == 0, result.err
    assert json.loads((root / "annotations" / "instances_train.json").read_text())["images"]
    assert (root / "mine.txt").read_text() == "keep"


def test_refuses_a_file_and_a_path_below_a_file(cli, tmp_path):
    target = tmp_path / "bccd"
    target.write_text("")
    for path in (target, target / "below"):
        result = cli("sample-data", path, "--overwrite")
        assert result.code == 2 and len(result.error_lines) == 1, result.err
        assert "is a file" in result.error_lines[0]
