"""The confusion matrix of the evaluate task, against counts worked out by hand."""

from __future__ import annotations

import numpy as np

from rtdetr.evaluation.report import confusion_matrix, metrics_table


def test_confusion_matrix_counts_matches_confusions_misses_and_false_alarms():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10]},
            {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "iscrowd": 1},  # left out
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # red as red
        {"image_id": 1, "category_id": 1, "bbox": [21, 21, 10, 10], "score": 0.8},  # green as red
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.7},  # duplicate: false alarm
        {"image_id": 1, "category_id": 2, "bbox": [80, 80, 5, 5], "score": 0.1},  # below the score threshold
        {
            "image_id": 2,
            "category_id": 1,
            "bbox": [60, 60, 10, 10],
            "score": 0.9,
        },  # false alarm; green missed
    ]
    matrix = confusion_matrix(gt, results, [1, 2], iou=0.5, conf=0.25)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [1, 0, 1], [1, 1, 0]])


def test_metrics_table_lists_the_twelve_numbers_and_each_class():
    stats = dict.fromkeys(["mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR1", "AR10",
                           "AR100", "AR_small", "AR_medium", "AR_large"], 0.5)  # fmt: skip
    table = metrics_table(stats, [{"name": "cell", "category_id": 3, "AP": 0.25, "AP50": 0.5, "AR100": -1.0}])
    assert table.count("= 0.5000") == 12
    assert table.splitlines()[-1].split() == ["cell", "3", "0.2500", "0.5000", "-1.0000"]
