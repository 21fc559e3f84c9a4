"""KITTI lines, colours and drawing of the inference outputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtdetr.errors import UserError
from rtdetr.predict.draw import PALETTE, class_colours, draw_detections, kitti_line, parse_colour


def test_kitti_line_is_taos_format():
    assert kitti_line("car", [1, 2.5, 30.25, 40.0004], 0.87654) == (
        "car 0.00 0 0.00 1.000 2.500 30.250 40.000 0.00 0.00 0.00 0.00 0.00 0.00 0.00 0.877"
    )


def test_colours_by_name_and_hex_with_a_clear_error():
    assert parse_colour("red", "x") == (255, 0, 0)
    assert parse_colour("#00ff80", "x") == (0, 255, 128)
    assert parse_colour("#f80", "x") == (255, 136, 0)
    with pytest.raises(UserError, match=r"inference.color_map.car: unknown colour 'reddish'"):
        parse_colour("reddish", "inference.color_map.car")
    colours = class_colours(["a", "b", "c"], {"b": "white", "zebra": "black"})
    assert colours == [PALETTE[0], (255, 255, 255), PALETTE[2]]


def test_drawing_outlines_in_the_class_colour_with_optional_captions():
    image = Image.new("RGB", (100, 80), (10, 10, 10))
    kwargs = dict(boxes=[[20, 30, 60, 70]], labels=[1], scores=[0.9], class_names=["a", "b"],
                  colours=[(255, 0, 0), (0, 255, 0)], outline_width=2)  # fmt: skip
    plain = np.asarray(draw_detections(image, captions=False, **kwargs))
    assert tuple(plain[50, 20]) == (0, 255, 0) and tuple(plain[50, 21]) == (0, 255, 0)  # left edge, 2 px
    assert tuple(plain[50, 22]) == (10, 10, 10) and tuple(plain[50, 40]) == (10, 10, 10)
    changed = (plain != 10).any(-1).sum()
    captioned = np.asarray(draw_detections(image, captions=True, **kwargs))
    assert (captioned != 10).any(-1).sum() > changed + 100  # the caption's filled background
    assert np.asarray(image).max() == 10  # the input is left as it was
