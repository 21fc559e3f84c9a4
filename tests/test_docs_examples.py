"""Every example spec shipped in docs/ validates for its task, reads the folder that `rtdetr
sample-data data/bccd` writes, and the YAML quoted in the docs pages agrees with the example files."""

import re
from pathlib import Path

import pytest
import yaml

import rtdetr
from rtdetr.data.sample import write_sample

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
TASK_OF = {
    "train_bccd.yaml": "train",
    "evaluate_bccd.yaml": "evaluate",
    "inference_bccd.yaml": "inference",
    "export_bccd.yaml": "export",
    "gen_trt_engine_bccd.yaml": "gen_trt_engine",
    "distill_bccd.yaml": "distill",
    "automl_bccd.yaml": "automl",
}
HEADER = "run from the folder where you ran `rtdetr sample-data data/bccd`"


def test_every_example_has_a_task():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(TASK_OF)


@pytest.mark.parametrize("name", sorted(TASK_OF))
def test_example_spec_validates(name):
    cfg = rtdetr.load_spec(EXAMPLES / name, action=TASK_OF[name])
    assert cfg.dataset.num_classes >= 1
    if name == "export_bccd.yaml":  # the same file also drives the quantize task
        rtdetr.load_spec(EXAMPLES / name, action="quantize")


def _paths(node, key=""):
    """(key, value) of every string in a spec that looks like a path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _paths(v, key)
    elif isinstance(node, str) and "/" in node:
        yield key, node


@pytest.mark.parametrize("name", sorted(TASK_OF))
def test_example_paths_are_the_sample_folder_and_earlier_outputs(name, tmp_path):
    """Data paths name files that `rtdetr sample-data data/bccd` writes; model paths name files
    that the earlier examples write whatever the number of epochs; the header says where to run."""
    text = (EXAMPLES / name).read_text()
    assert HEADER in " ".join(line.lstrip("# ") for line in text.splitlines()).lower()
    write_sample(tmp_path / "data" / "bccd")
    writes = {"results/bccd/train/rtdetr_model_latest.pth", "results/bccd/export/rtdetr_bccd.onnx"}
    for key, value in _paths(yaml.safe_load(text)):
        if value.startswith("data/bccd/"):
            found = list(tmp_path.glob(value)) if "*" in value else [tmp_path / value]
            assert found and all(p.exists() for p in found), (key, value)
        elif key in ("checkpoint", "onnx_file"):
            assert value in writes, (key, value)
        else:
            assert value == "results/bccd" or value.startswith("results/bccd/"), (key, value)


def test_the_train_example_runs(cli, tmp_path, monkeypatch):
    """A dry run (one step, one validation batch) of the example as written (bf16 with gradient
    clipping, EMA, ...) on the folder `rtdetr sample-data data/bccd` writes, at a small size."""
    monkeypatch.chdir(tmp_path)
    assert cli("sample-data", "data/bccd").code == 0
    result = cli(
        "train", "-e", EXAMPLES / "train_bccd.yaml", "train.is_dry_run=true",
        "dataset.workers=0", "dataset.batch_size=2", "dataset.augmentation.train_spatial_size=[160,160]",
        "dataset.augmentation.eval_spatial_size=[160,160]", "dataset.augmentation.multi_scales=[]",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert (tmp_path / "results" / "bccd" / "train" / "dry_run" / "status.json").is_file()


def _quoted_examples(page: Path):
    """(example file name, YAML text) for each ```yaml block: the example its section links first."""
    text = page.read_text()
    for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        section = text[: match.start()].rsplit("\n## ", 1)[-1]
        links = re.findall(r"\(examples/(\w+\.yaml)\)", section)
        if links:
            yield links[0], match.group(1)


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), node


@pytest.mark.parametrize("page", ["train.md", "evaluate.md", "inference.md", "export.md", "distill.md"])
def test_the_yaml_quoted_in_the_docs_is_the_example_file(page):
    """Each value a page quotes is the example file's value (a page may leave fields out)."""
    quoted = list(_quoted_examples(ROOT / "docs" / page))
    assert quoted, f"docs/{page} quotes no example spec"
    for name, block in quoted:
        example = dict(_leaves(yaml.safe_load((EXAMPLES / name).read_text())))
        for key, value in _leaves(yaml.safe_load(block)):
            assert key in example and example[key] == value, f"docs/{page}: {name}: {key}: {value!r}"
