"""The package's parts import downwards only, without circles, and running a trained model (the
evaluate and inference tasks, the Detector) never needs the training engine."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Each part and its level: a module may import its own part and parts of a lower level only.
LEVELS = {
    "errors": 0, "log": 0,
    "common": 1,
    "config": 2,
    "data": 3,
    "model": 4,
    "loss": 5, "cpu": 5,
    "deploy": 6,
    "evaluation": 7, "predict": 7,
    "engine": 8, "automl": 8,
    "tasks": 9,
    "service": 10,
    "cli": 11, "": 11,  # "" is the package face, rtdetr/__init__.py
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "rtdetr").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    rest = module.split(".")[1:]
    return rest[0] if rest else ""


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported rtdetr module, line) of every import in a file, TYPE_CHECKING blocks left out."""
    found: list[tuple[str, int]] = []

    def visit(nodes, top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                found.extend((a.name, node.lineno) for a in node.names if a.name.startswith("rtdetr"))
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("rtdetr")
            ):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.append((sub if sub in MODULES else node.module, node.lineno))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not module_level_only:
                    visit(node.body, False)
            elif hasattr(node, "body") and isinstance(node.body, list):
                visit(node.body, top)
                for extra in ("orelse", "finalbody", "handlers"):
                    visit(getattr(node, extra, []) or [], top)
                for handler in getattr(node, "handlers", []) or []:
                    visit(handler.body, top)

    visit(ast.parse(path.read_text()).body, True)
    return found


def test_every_module_belongs_to_a_known_part():
    assert {_part(m) for m in MODULES} <= set(LEVELS), {_part(m) for m in MODULES} - set(LEVELS)


def test_parts_import_downwards_only():
    wrong = []
    for module, path in MODULES.items():
        own = _part(module)
        for target, line in _imports(path, module_level_only=False):
            if target == "rtdetr" and module != "rtdetr":  # the package itself: only its __version__
                source = path.read_text().splitlines()[line - 1]
                if "__version__" in source:
                    continue
            other = _part(target)
            if other == own:
                continue
            if LEVELS[other] >= LEVELS[own]:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {own or 'rtdetr'} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {
        m: {t for t, _ in _imports(p, module_level_only=True) if t in MODULES} for m, p in MODULES.items()
    }
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []
    circles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "\n".join(circles)


def test_few_imports_inside_functions():
    """Imports sit at the top of a file; inside a function only where there is a start-up or an
    optional-dependency reason: the CLI and the package face defer torch, and optional or rarely
    needed packages (transformers, tensorrt, openvino, nncf, onnx on a rare path) load where they are used."""
    allowed = {
        "rtdetr.cli",
        "rtdetr",
        "rtdetr.model.testing",
        "rtdetr.model.convert",
        "rtdetr.deploy.tensorrt_common",
        "rtdetr.deploy.openvino_backend",
        "rtdetr.deploy.quantize_openvino",
        "rtdetr.model.weights",
        "rtdetr.tasks.runner",
    }  # fmt: skip  (runner: on the CLI's start-up path; openvino and nncf: the optional extra)
    inside = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and module not in allowed:
                        inside.append(f"{path.relative_to(SRC)}:{sub.lineno}")
    assert not inside, "\n".join(inside)


BLOCKED_RUN = """
import sys, importlib.abc

class BlockEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "rtdetr.engine" or name.startswith("rtdetr.engine."):
            raise ImportError(f"{{name}} is blocked")
        return None

sys.meta_path.insert(0, BlockEngine())
sys.path.insert(0, {tests!r})

import torch
import rtdetr
from rtdetr import Detector
from rtdetr.model import build_model
from rtdetr.model.checkpoint import ModelMetadata, save_checkpoint
from rtdetr.tasks.runner import run_task
from synthetic import make_dataset
from pathlib import Path

root = Path({root!r})
make_dataset(root / "data", "test", 4, seed=0)
tiny = dict(backbone="resnet_18vd", num_queries=10, hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
            dim_feedforward=64, dec_dim_feedforward=64, dec_layers=1, dn_number=0, expansion=0.5)
torch.manual_seed(0)
meta = ModelMetadata(model={{**tiny, "num_select": 10}}, num_classes=3, class_names=["bg", "red", "green"],
                     input_size=[64, 64])
ckpt = save_checkpoint(root / "m.pth", build_model(num_classes=3, **tiny), meta)
images = sorted((root / "data" / "images").glob("*.png"))
dets = Detector.from_checkpoint(ckpt, device="cpu").predict(images[:2], conf=0.0)
assert len(dets) == 2
source = {{"image_dir": str(root / "data" / "images"), "json_file": str(root / "data" / "test.json")}}
spec = {{"results_dir": str(root / "results"), "model": {{**tiny, "num_select": 10}},
        "dataset": {{"num_classes": 3, "batch_size": 2, "workers": 0, "test_data_sources": source,
                    "infer_data_sources": {{"image_dir": [str(root / "data" / "images")]}},
                    "augmentation": {{"eval_spatial_size": [64, 64]}}}},
        "evaluate": {{"checkpoint": str(ckpt)}}, "inference": {{"checkpoint": str(ckpt)}}}}
for task in ("evaluate", "inference"):
    run_task(task, rtdetr.load_spec(spec, action=task))
assert not any(m == "rtdetr.engine" or m.startswith("rtdetr.engine.") for m in sys.modules)
print("ran without the engine")
"""


@pytest.mark.slow
def test_evaluate_inference_and_the_detector_run_without_the_training_engine(tmp_path):
    code = BLOCKED_RUN.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran without the engine" in result.stdout
    assert (tmp_path / "results" / "evaluate" / "results.json").is_file()
    assert list((tmp_path / "results" / "inference" / "labels").glob("*.txt"))


def test_the_top_level_holds_only_the_package_face():
    loose = sorted(p.stem for p in (SRC / "rtdetr").glob("*.py") if p.stem != "__init__")
    assert loose == ["cli", "errors", "log"]
