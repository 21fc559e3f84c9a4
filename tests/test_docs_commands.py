"""Every `rtdetr` command in the README and the task pages of docs/ runs as written.

The commands are taken from the ```bash and ```text blocks (backslash-continued lines joined,
comments and output lines left out), in page order, and run through the CLI in one fresh folder
that holds a copy of docs/, as a clone would (`rtdetr quickstart` in a folder of its own; nothing
else reads what it writes). Overrides appended to each command make the runs small (a smaller
model at 64x64, one epoch, fp32; ``quickstart --epochs 1 --size 160``); the commands, paths and files stay as
the docs give them. Usage lines with placeholders (``rtdetr train -e SPEC [KEY=VALUE ...]``) are
parsed but not run. A ``$ rtdetr ...`` line is a transcript: the ``error:`` lines after it are what
it must print, with exit status 2.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from rtdetr.cli import build_parser, main
from rtdetr.common.status import read_status

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/train.md",
    "docs/evaluate.md",
    "docs/inference.md",
    "docs/export.md",
    "docs/distill.md",
    "docs/automl.md",
]

# a placeholder: <task>, or an upper-case metavar such as SPEC, TASK, KEY=VALUE, DIR (not a value
# after "=" or a path part)
PLACEHOLDER = re.compile(r"<\w+>|(?<![\w.=/-])[A-Z][A-Z_]{2,}\b")

SIZE = 64
SMALL_MODEL = [
    "model.hidden_dim=64", "model.feat_channels=[64,64,64]", "model.nheads=4", "model.dim_feedforward=128",
    "model.dec_dim_feedforward=128", "model.num_queries=30", "model.num_select=30", "model.dn_number=10",
]  # fmt: skip
LOADING = ["dataset.batch_size=8", "dataset.workers=0"]
TRAINING = [
    *LOADING, "train.num_epochs=1", "train.checkpoint_interval=1",
    "train.validation_interval=1", f"dataset.augmentation.train_spatial_size=[{SIZE},{SIZE}]",
    f"dataset.augmentation.eval_spatial_size=[{SIZE},{SIZE}]", "dataset.augmentation.multi_scales=[]",
    "dataset.augmentation.distortion_prob=0.0", "train.precision=fp32",  # bf16: 2x slower on CPUs without it
]  # fmt: skip
SMALL = {
    "train": [*SMALL_MODEL, *TRAINING],
    # the student small, and the teacher as the small train run made it
    "distill": [*SMALL_MODEL, *(o.replace("model.", "distill.teacher.", 1) for o in SMALL_MODEL), *TRAINING],
    "evaluate": [*LOADING, f"dataset.augmentation.eval_spatial_size=[{SIZE},{SIZE}]"],
    "inference": [*LOADING, f"inference.input_width={SIZE}", f"inference.input_height={SIZE}"],
    "export": [f"export.input_width={SIZE}", f"export.input_height={SIZE}"],
    "quantize": ["quantize.cal_images=8"],
    "quickstart": ["--epochs", "1", "--size", "160"],
    # two trials of one epoch at 128 px, side by side
    "automl": [*SMALL_MODEL, *TRAINING, "dataset.augmentation.train_spatial_size=[128,128]",
               "dataset.augmentation.eval_spatial_size=[128,128]", "automl.max_trials=2", "automl.max_epochs=1",
               "automl.max_concurrent=2"],
}  # fmt: skip
NO_TENSORRT = "needs TensorRT and a CUDA GPU"


@dataclass
class Command:
    page: str
    line: int
    text: str
    argv: list[str]  # the arguments after `rtdetr`
    stdout_file: str | None = None  # `> FILE`
    expected_errors: list[str] | None = None  # a transcript's error lines
    usage: bool = False  # a usage line with placeholders

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


@dataclass
class _Block:
    lang: str
    lines: list[tuple[int, str]] = field(default_factory=list)


def _blocks(text: str) -> list[_Block]:
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current = _Block(line.strip()[3:].strip())
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.lines.append((number, line))
    return blocks


def _logical_lines(block: _Block) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first line."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in block.lines:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1].rstrip())
            continue
        pending = None
        out.append((number, line))
    if pending is not None:
        out.append(pending)
    return out


def doc_commands(page: str) -> list[Command]:
    """The `rtdetr` commands of the ```bash and ```text blocks of a page, in order."""
    commands: list[Command] = []
    for block in _blocks((ROOT / page).read_text()):
        if block.lang not in ("bash", "text"):
            continue
        transcript: Command | None = None
        for number, line in _logical_lines(block):
            stripped = line.strip()
            is_transcript = stripped.startswith("$ ")
            if is_transcript:
                stripped = stripped[2:].strip()
            if not stripped.startswith("rtdetr "):
                if transcript is not None and stripped.startswith("error:"):
                    transcript.expected_errors.append(stripped)
                continue
            tokens = shlex.split(stripped, comments=True)
            command = Command(page, number, " ".join(tokens), tokens[1:])
            command.usage = bool(PLACEHOLDER.search(command.text))
            if ">" in command.argv:
                at = command.argv.index(">")
                command.stdout_file = command.argv[at + 1]
                command.argv = command.argv[:at]
            command.expected_errors = [] if is_transcript else None
            transcript = command if is_transcript else None
            commands.append(command)
    return commands


ALL = [command for page in PAGES for command in doc_commands(page)]
RUNNABLE = [command for command in ALL if not command.usage]


def test_every_page_shows_commands_that_run_as_written():
    pages = {command.page for command in RUNNABLE}
    assert pages == set(PAGES), f"pages without a runnable rtdetr command: {set(PAGES) - pages}"
    texts = [command.text for command in RUNNABLE]
    assert "rtdetr sample-data data/bccd" in texts
    assert texts.index("rtdetr sample-data data/bccd") < texts.index(
        "rtdetr train -e docs/examples/train_bccd.yaml"
    )


@pytest.mark.parametrize("command", ALL, ids=str)
def test_every_documented_command_parses(command):
    """Usage lines name a real command (`<task>` stands for the tasks); runnable ones parse as written
    (nothing is run)."""
    if command.usage:
        if command.argv[0] != "<task>":
            with pytest.raises(SystemExit) as exit_:  # `client --help` is the client's own parser's
                main([command.argv[0], "--help"])
            assert exit_.value.code == 0, command
    else:
        build_parser().parse_args(command.argv)


def test_the_parser_reads_continuations_transcripts_and_redirections():
    readme = doc_commands("README.md")
    onnx = next(c for c in readme if "inference.trt_engine=results/bccd/export/rtdetr_bccd.onnx" in c.argv)
    assert onnx.argv[-1] == "inference.results_dir=results/bccd/inference_onnx"
    spec = next(c for c in readme if c.stdout_file)
    assert spec.argv == ["get-spec", "--action", "train"] and spec.stdout_file == "spec.yaml"
    transcript = next(c for c in readme if c.expected_errors)
    assert transcript.argv[0] == "validate" and len(transcript.expected_errors) == 2
    assert any(c.usage and c.argv[:2] == ["sample-data", "DIR"] for c in readme)


def _run(cli, commands: list[Command]):
    """Runs ``commands`` in order; returns the last one's result."""
    result = None
    for command in commands:
        argv = [*command.argv, *SMALL.get(command.argv[0], [])]
        result = cli(*argv)
        context = f"{command}\n{result.err[-3000:]}"
        if command.expected_errors is not None:
            assert result.code == 2, context
            assert result.error_lines == command.expected_errors, context
        elif command.argv[0] == "gen_trt_engine" and result.code != 0:
            assert result.code == 2 and len(result.error_lines) == 1, context
            assert NO_TENSORRT in result.error_lines[0], context
        else:
            assert result.code == 0, context
        if command.stdout_file:
            Path(command.stdout_file).write_text(result.out)
    return result


@pytest.fixture
def clone(tmp_path, monkeypatch) -> Path:
    """A fresh working folder with the repository's docs/ in it, as the current directory."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_documented_commands_run_in_order(cli, clone):
    """Sample data, train, evaluate, inference, export, quantize, the ONNX and INT8 files evaluated
    and run, spec commands; gen_trt_engine checks its spec and the ONNX file, then stops with its
    one line where TensorRT or a GPU is missing."""
    _run(cli, [command for command in RUNNABLE if command.argv[0] != "quickstart"])
    results = clone / "results" / "bccd"
    assert (results / "train" / "rtdetr_model_latest.pth").is_file()
    assert (results / "evaluate" / "results.json").is_file()
    assert (results / "evaluate_int8" / "results.json").is_file()
    assert list((results / "inference_onnx" / "labels").glob("*.txt"))
    assert (results / "export" / "rtdetr_bccd_int8.onnx").is_file()
    assert "train_data_sources" in yaml.safe_load((clone / "spec.yaml").read_text())["dataset"]
    automl = results / "automl"
    assert len((automl / "trials.csv").read_text().splitlines()) == 3  # a header and two trials
    assert (automl / "best" / "train" / "model_epoch_000.pth").is_file()  # best_spec.yaml trained


@pytest.mark.slow
def test_the_documented_quickstart_runs(cli, clone):
    """`rtdetr quickstart` as the docs show it (one epoch; it reads nothing the other commands write):
    it trains, evaluates, infers, exports and runs the ONNX file on the shipped sample, and says
    where each result is."""
    quickstart = [command for command in RUNNABLE if command.argv[0] == "quickstart"]
    assert quickstart
    out = _run(cli, quickstart).out
    root = clone / "rtdetr_quickstart"
    assert "started from: random weights" in out  # offline, without the COCO weights in the cache
    assert f"trained: {root / 'train'}" in out and "validation: mAP" in out
    assert f"evaluated: {root / 'evaluate'}" in out and f"inference: {root / 'inference'}" in out
    assert "exported: " in out and "run by ONNX Runtime: mAP" in out
    assert (root / "train" / "model_epoch_000.pth").is_file() and (root / "quickstart_spec.yaml").is_file()
    assert (root / "evaluate" / "results.json").is_file() and (
        root / "evaluate_onnx" / "results.json"
    ).is_file()
    assert len(list((root / "inference" / "labels").glob("*.txt"))) == 64
    assert (root / "export" / "rtdetr_quickstart.onnx").is_file()
    for task in ("train", "evaluate", "inference", "export", "evaluate_onnx"):
        assert read_status(root / task)[-1]["status"] == "SUCCESS"
