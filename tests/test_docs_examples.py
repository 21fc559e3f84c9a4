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


def test_the_train_example_runs(cli, tmp_path):
    """A dry run (one step, one validation batch) with the example's settings (bf16 with gradient
    clipping, EMA, ...), on the BCCD sample shipped in the package and at a small size."""
    sample = Path(rtdetr.__file__).parent / "assets" / "bccd_sample"
    sources = {"image_dir": str(sample / "images")}
    result = cli(
        "train", "-e", EXAMPLES / "train_bccd.yaml", f"results_dir={tmp_path}", "train.is_dry_run=true",
        f"dataset.train_data_sources=[{{image_dir: {sources['image_dir']}, json_file: {sample / 'train.json'}}}]",
        f"dataset.val_data_sources={{image_dir: {sources['image_dir']}, json_file: {sample / 'val.json'}}}",
        "dataset.workers=0", "dataset.batch_size=2", "dataset.augmentation.train_spatial_size=[160,160]",
        "dataset.augmentation.eval_spatial_size=[160,160]", "dataset.augmentation.multi_scales=[]",
    )  # fmt: skip
    assert result.code == 0, result.err
