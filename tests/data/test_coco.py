"""COCO reading: errors name the file, bad items are skipped with reasons, the category convention."""

from __future__ import annotations

import json

import pytest

from rtdetr.data import coco
from rtdetr.data.coco import concat_sources, load_coco
from rtdetr.data.mscoco import MSCOCO_CATEGORY_IDS
from rtdetr.errors import UserError


def test_missing_json_file_names_it(tmp_path):
    with pytest.raises(UserError, match="nope.json: annotation file not found"):
        load_coco(tmp_path / "nope.json", tmp_path, num_classes=4)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,,}]}')
    with pytest.raises(UserError, match=r"bad.json: malformed JSON at line 2") as info:
        load_coco(path, tmp_path, num_classes=4)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(make_coco, key):
    path, image_dir = make_coco([{"id": 1}], [])
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"ann.json: missing required COCO key '{key}'"):
        load_coco(path, image_dir, num_classes=4)


def test_records_missing_keys_are_skipped_and_counted(make_coco):
    """An image without file_name (or null, or an id "seven"), an annotation without bbox,
    category_id or image_id, a category without id: each is skipped and counted, the rest is read."""
    images = [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},  # kept
        {"image_id": 1, "category_id": 1},  # no bbox
        {"image_id": 1, "bbox": [1, 1, 5, 5]},  # no category_id
        {"category_id": 1, "bbox": [1, 1, 5, 5]},  # no image_id
        {"image_id": "seven", "category_id": 1, "bbox": [1, 1, 5, 5]},  # of the image "seven"
        {"image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},  # of the category without id
    ]
    categories = [{"id": 1, "name": "c1"}, {"name": "no id"}, {"id": "two", "name": "c2"}]
    path, image_dir = make_coco(images, anns, categories)
    data = json.loads(path.read_text())
    del data["images"][1]["file_name"]
    data["images"][2]["file_name"] = None
    data["images"][3]["id"] = "seven"
    data["images"].append(["not", "an", "object"])
    data["annotations"].append("not an object")
    path.write_text(json.dumps(data))
    source = load_coco(path, image_dir, num_classes=4)
    assert [r["image_id"] for r in source.records] == [1]
    assert source.records[0]["labels"] == [1]
    assert dict(source.report.counts) == {
        coco.INVALID_IMAGE: 4, coco.INVALID_CATEGORY: 2, coco.MISSING_BOX: 1, coco.MISSING_CATEGORY: 1,
        coco.INVALID_ANNOTATION: 2, coco.UNKNOWN_IMAGE: 1, coco.UNKNOWN_CATEGORY: 1,
    }  # fmt: skip
    assert "images[3] (id 'seven', file_name 'img4.png')" in "\n".join(source.report.log_lines())


def test_nothing_usable_left_is_one_line(make_coco):
    path, image_dir = make_coco([{"id": 1}], [])
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = None
    data["images"][0]["id"] = "x" * 100_000
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"no usable image of 1: 1 x image without an integer id") as info:
        load_coco(path, image_dir, num_classes=4)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)
    data["categories"] = [{"name": "no id"}]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="none of the 1 categories has an integer id"):
        load_coco(path, image_dir, num_classes=4)


def test_category_id_is_the_logit_index(small_coco):
    path, image_dir = small_coco
    with pytest.raises(UserError) as info:
        load_coco(path, image_dir, num_classes=3)
    message = str(info.value)
    assert "category_id 3" in message and "set dataset.num_classes to at least 4, or" in message
    source = load_coco(path, image_dir, num_classes=4)
    assert source.label_to_category == [-1, 1, 2, 3]
    assert source.class_names == ["class_0", "c1", "c2", "c3"]
    assert {label for r in source.records for label in r["labels"]} == {1, 2, 3}


def test_remap_mscoco_category(make_coco):
    categories = [{"id": c, "name": f"n{c}"} for c in (1, 90, 12)]  # 12 is not an MS-COCO id
    anns = [{"image_id": 1, "category_id": c, "bbox": [1, 1, 5, 5]} for c in (1, 90, 12)]
    path, image_dir = make_coco([{"id": 1}], anns, categories)
    source = load_coco(path, image_dir, num_classes=80, remap_mscoco_category=True)
    assert source.records[0]["labels"] == [0, 79]
    assert source.report.counts[coco.UNKNOWN_CATEGORY] == 1
    inverse = source.label_to_category
    assert len(inverse) == 80 and inverse[0] == 1 and inverse[79] == 90
    full = coco.category_to_label(MSCOCO_CATEGORY_IDS, True)
    assert sorted(full.values()) == list(range(80))
    with pytest.raises(UserError, match="num_classes must be at least 80"):
        load_coco(path, image_dir, num_classes=10, remap_mscoco_category=True)


def test_bad_items_are_skipped_with_reasons(make_coco, tmp_path):
    images = [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]},  # kept as is
        {"image_id": 1, "category_id": 2, "bbox": [-5, 20, 10, 10]},  # clipped to [0, 20, 5, 24]
        {"image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 5]},  # zero width
        {"image_id": 1, "category_id": 1, "bbox": [3, 3, 5, -1]},  # negative height
        {"image_id": 1, "category_id": 1, "bbox": [40, 3, 5, 5]},  # outside the 32x24 image
        {"image_id": 1, "category_id": 1, "bbox": [3, 3, 5]},  # not 4 numbers
        {"image_id": 1, "category_id": 7, "bbox": [3, 3, 5, 5]},  # unknown category
        {"image_id": 99, "category_id": 1, "bbox": [3, 3, 5, 5]},  # unknown image
        {"image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # crowd
        {"image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]},  # image 4's file is missing
    ]
    path, image_dir = make_coco(images, anns)
    (image_dir / "img4.png").unlink()
    source = load_coco(path, image_dir, num_classes=4)

    by_id = {r["image_id"]: r for r in source.records}
    assert sorted(by_id) == [1, 2, 3]  # missing file dropped, negatives (2: only crowd, 3: none) kept
    assert by_id[1]["boxes"] == [[4, 4, 14, 14], [0, 20, 5, 24]] and by_id[1]["labels"] == [1, 2]
    assert (
        by_id[2]["boxes"] == []
        and by_id[2]["crowd_boxes"] == [[1, 1, 6, 6]]
        and by_id[2]["crowd_labels"] == [3]
    )
    assert by_id[3]["boxes"] == []
    assert dict(source.report.counts) == {
        coco.CLIPPED_BOX: 1, coco.EMPTY_BOX: 2, coco.OUTSIDE_BOX: 1, coco.INVALID_BOX: 1,
        coco.UNKNOWN_CATEGORY: 1, coco.UNKNOWN_IMAGE: 1, coco.CROWD_BOX: 1, coco.MISSING_FILE: 1,
    }  # fmt: skip

    lines = source.report.summary_lines(limit=2)
    assert lines[0].startswith("2 x box with zero or negative")
    assert len(lines) == 8 + 2 + 1 and "and 7 more" in lines[-1]
    text = "\n".join(source.report.log_lines())
    assert "img4.png" in text and "annotation 8 of image 99" in text
    assert len(text.splitlines()) == 8 + 9
    summary = source.summary_lines()[0]
    assert "3 images (2 without boxes), 2 boxes: c1 1, c2 1" in summary


def test_a_run_logs_the_summary_and_writes_every_skipped_item(make_coco, tmp_path, caplog):
    from rtdetr.data.sources import ISSUES_LOG, report_source, write_issues

    images = [{"id": 1}, {"id": 2}]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
        {"image_id": 9, "category_id": 2, "bbox": [1, 1, 5, 5]},
    ]
    source = load_coco(*make_coco(images, anns), num_classes=4)
    (tmp_path / ISSUES_LOG).write_text("an earlier run's log\n")
    issues: list[str] = []
    with caplog.at_level("INFO", logger="rtdetr"):
        report_source(source, "train", issues)
    assert (tmp_path / ISSUES_LOG).read_text() == "an earlier run's log\n"  # until the data are read
    write_issues(tmp_path, issues)
    logged = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert "train data: " in logged[0] and "2 images (1 without boxes), 1 boxes: c1 1" in logged[0]
    assert any("1 x annotation of an unknown category id" in m for m in logged), logged
    assert any("annotation 3 of image 9" in m for m in logged), logged
    issues = (tmp_path / ISSUES_LOG).read_text()
    assert "# train: " in issues and "# 1 x annotation of an unknown category" in issues
    assert len(issues.splitlines()) == 1 + 2 + 2
    write_issues(tmp_path, [])  # a run without issues leaves no log of an earlier one
    assert not (tmp_path / ISSUES_LOG).exists()


def test_no_usable_image_is_an_error(make_coco):
    path, image_dir = make_coco([{"id": 1}], [], write_images=False)
    with pytest.raises(
        UserError, match=r"ann.json: no usable image of 1: 1 x image file not found.*img1.png"
    ):
        load_coco(path, image_dir, num_classes=4)
    assert len(load_coco(path, image_dir, num_classes=4, check_files=False).records) == 1


def test_size_read_from_header_when_missing(make_coco):
    path, image_dir = make_coco(
        [{"id": 1, "width": 20, "height": 10}], [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30]}]
    )
    data = json.loads(path.read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    path.write_text(json.dumps(data))
    record = load_coco(path, image_dir, num_classes=4).records[0]
    assert (record["height"], record["width"]) == (10, 20) and record["boxes"] == [[0, 0, 20, 10]]


def test_concat_sources_keeps_image_ids_unique(make_coco):
    a = load_coco(*make_coco([{"id": 1}, {"id": 5}], [], name="a.json"), num_classes=4)
    b = load_coco(*make_coco([{"id": 1}, {"id": 2}], [], name="b.json"), num_classes=4)
    c = load_coco(*make_coco([{"id": 7}], [], name="c.json"), num_classes=4)
    assert [r["image_id"] for r in concat_sources([a, c]).records] == [1, 5, 7]  # no clash: unchanged
    both = concat_sources([a, b])
    assert [r["image_id"] for r in both.records] == [1, 5, 7, 8]
    assert both.json_files == [str(a.json_files[0]), str(b.json_files[0])]
    assert [r["image_id"] for r in a.records] == [1, 5]  # inputs untouched


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"images": [], "annotations": [], "categories": [], "n": ' + "9" * 5000 + "}", "Exceeds the limit"),
        ("[" * 100_000 + "]" * 100_000, "recursion depth"),
    ],
)
def test_json_the_parser_cannot_take_is_one_line_naming_the_file(tmp_path, text, match):
    path = tmp_path / "odd.json"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"odd.json: malformed JSON: .*{match}") as info:
        load_coco(path, tmp_path, num_classes=4)
    assert "\n" not in str(info.value)


def test_empty_categories_and_one_id_with_two_names_are_errors(make_coco):
    path, image_dir = make_coco([{"id": 1}], [])
    path.write_text(json.dumps({**json.loads(path.read_text()), "categories": []}))
    with pytest.raises(UserError, match="ann.json: 'categories' is empty"):
        load_coco(path, image_dir, num_classes=4)
    twice = [{"id": 1, "name": "red"}, {"id": 1, "name": "blue"}]
    with pytest.raises(
        UserError, match=r"categories\[1\] repeats id 1 with another name \('red', then 'blue'\)"
    ):
        load_coco(*make_coco([{"id": 1}], [], categories=twice), num_classes=4)
    same = [{"id": 1, "name": "red"}, {"id": 1, "name": "red"}, {"id": 2.0, "name": "blue"}]
    assert load_coco(*make_coco([{"id": 1}], [], categories=same), num_classes=4).categories == {
        1: "red",
        2: "blue",
    }


def test_odd_values_are_skipped_or_read_as_meant(make_coco, tmp_path):
    images = [
        {"id": 1},
        {"id": 2.0, "width": "32", "height": 24},  # an integral float id; a width that is a string
        {"id": 3, "file_name": "missing.png"},
        {"id": 3},  # the same id again, after the first copy was dropped
        {"id": 4, "file_name": "folder.png"},
    ]
    anns = [
        {"image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]},  # an unhashable image id
        {"image_id": {"a": 1}, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"image_id": 1, "category_id": 1, "bbox": [10**400, 1, 5, 5]},  # too large for a float
        {"image_id": 1, "category_id": True, "bbox": [1, 1, 5, 5]},  # a bool is not an id
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, True, 5]},
        {"image_id": 1.0, "category_id": 2.0, "bbox": [1, 1, 5, 5], "iscrowd": "0"},  # read as meant
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "1"},
        {"image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": "yes"},
        {"image_id": 2, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": None},  # as absent
        {"image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},  # of the dropped image 3: silent
    ]
    path, image_dir = make_coco(images, anns, write_images=False)
    from PIL import Image

    for name in ("img1.png", "img2.0.png", "img3.png"):
        Image.new("RGB", (32, 24)).save(image_dir / name)
    (image_dir / "folder.png").mkdir()
    source = load_coco(path, image_dir, num_classes=4)
    by_id = {r["image_id"]: r for r in source.records}
    assert sorted(by_id) == [1, 2]
    assert by_id[1]["labels"] == [2] and by_id[1]["crowd_boxes"] == []
    assert by_id[2]["crowd_labels"] == [1] and (by_id[2]["width"], by_id[2]["height"]) == (32, 24)
    assert by_id[2]["labels"] == [2]
    assert dict(source.report.counts) == {
        coco.UNKNOWN_IMAGE: 2, coco.INVALID_BOX: 2, coco.UNKNOWN_CATEGORY: 1, coco.CROWD_BOX: 1,
        coco.INVALID_CROWD: 1, coco.MISSING_FILE: 1, coco.DUPLICATE_IMAGE: 1, coco.NOT_A_FILE: 1,
        coco.SIZE_FROM_FILE: 1,
    }  # fmt: skip


def test_ids_beyond_int64_and_files_that_are_not_utf8(make_coco, tmp_path):
    with pytest.raises(UserError, match=r"no usable image of 1: 1 x image without an integer id"):
        load_coco(*make_coco([{"id": 1e20}], []), num_classes=4)
    latin = tmp_path / "latin.json"
    latin.write_bytes(
        '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "caf\u00e9"}]}'.encode("latin-1")
    )
    with pytest.raises(UserError, match=r"latin.json: cannot read annotation file: 'utf-8' codec"):
        load_coco(latin, tmp_path, num_classes=4)
