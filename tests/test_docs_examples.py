"""Every example spec shipped in docs/ validates for its task."""

from pathlib import Path

import pytest

import rtdetr

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TASK_OF = {
    "train_bccd.yaml": "train",
    "evaluate_bccd.yaml": "evaluate",
    "inference_bccd.yaml": "inference",
    "export_bccd.yaml": "export",
    "gen_trt_engine_bccd.yaml": "gen_trt_engine",
}


def test_every_example_has_a_task():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(TASK_OF)


@pytest.mark.parametrize("name", sorted(TASK_OF))
def test_example_spec_validates(name):
    cfg = rtdetr.load_spec(EXAMPLES / name, action=TASK_OF[name])
    assert cfg.dataset.num_classes >= 1
    if name == "export_bccd.yaml":  # the same file also drives the quantize task
        rtdetr.load_spec(EXAMPLES / name, action="quantize")
