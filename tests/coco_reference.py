"""pycocotools, the reference COCO evaluation that our numbers are checked against."""

from __future__ import annotations

import contextlib
import io

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def pycocotools_stats(gt_json, predictions: list[dict], cat_ids=None) -> list[float]:
    """The 12 COCO bbox numbers of ``predictions`` (a results list) against the file ``gt_json``."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        evaluator = COCOeval(gt, gt.loadRes(predictions), "bbox")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]
