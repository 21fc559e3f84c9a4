"""Hostile spec files and overrides: refused quickly, in one short line naming the file and line."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

import rtdetr
from rtdetr.config.interpolation import (
    MAX_INTERPOLATED_CHARS,
    MAX_INTERPOLATED_NODES,
    MAX_REFERENCE_DEPTH,
    interpolation_problem,
)
from rtdetr.config.loader import read_spec_file
from rtdetr.config.safe_yaml import MAX_ALIAS_NODES, MAX_DEPTH
from rtdetr.errors import SpecError, UserError, abbreviate


def refuse(source, overrides=(), *, error=UserError) -> str:
    """The one error line that loading ``source`` ends in, checked to be short and quick."""
    start = time.perf_counter()
    with pytest.raises(error) as info:
        rtdetr.load_spec(source, overrides)
    assert time.perf_counter() - start < 2, "hostile input must be refused quickly"
    lines = info.value.lines()
    assert len(lines) == 1, lines
    named = len(str(source)) if isinstance(source, Path) else 0
    assert "\n" not in lines[0] and len(lines[0]) < 250 + named, lines[0]
    return lines[0]


def write(tmp_path, text: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level an anchored list of nine aliases of the level above."""
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    names = "abcdefghijklmnop"
    for prev, name in zip(names, names[1 : levels + 1]):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ aliases
def test_alias_bomb_is_refused(tmp_path):
    path = write(tmp_path, alias_bomb())
    assert len(path.read_bytes()) < 400
    line = refuse(path)
    assert line.startswith(f"{path}:4: aliases expand to more than {MAX_ALIAS_NODES} nodes")


def test_alias_bomb_in_an_override_is_refused(write_spec):
    bomb = "{" + alias_bomb().replace("\n", ", ").rstrip(", ") + "}"
    line = refuse(write_spec({}), [f"model.backbone={bomb}"], error=SpecError)
    assert line.startswith("override 'model.backbone={a: &a") and "aliases expand to more than" in line


def test_modest_aliases_and_merge_keys_still_work(tmp_path):
    path = write(
        tmp_path,
        "model: &model\n  backbone: resnet_18\n  dec_layers: 3\n"
        "distill:\n  teacher: *model\n"
        "dataset:\n  augmentation: &aug\n    train_spatial_size: [320, 320]\n    eval_spatial_size: [320, 320]\n"
        "evaluate:\n  input_width: &width 640\ninference:\n  input_width: *width\n",
    )
    cfg = rtdetr.load_spec(path)
    assert cfg.distill.teacher.backbone == "resnet_18" and cfg.distill.teacher.dec_layers == 3
    assert cfg.inference.input_width == 640
    merged = write(
        tmp_path,
        "model: &m {backbone: resnet_18, dec_layers: 3, hidden_dim: 128}\n"
        "distill:\n  teacher:\n    <<: *m\n    backbone: resnet_34\n",
        "merged.yaml",
    )
    raw = read_spec_file(merged)
    assert raw["distill"]["teacher"] == {"backbone": "resnet_34", "dec_layers": 3, "hidden_dim": 128}
    both = write(
        tmp_path, "a: &a {x: 1, y: 2}\nb: &b {y: 3, z: 4}\nc:\n  <<: [*a, *b]\n  z: 5\n", "list.yaml"
    )
    assert read_spec_file(both)["c"] == {"x": 1, "y": 2, "z": 5}


def test_an_override_does_not_reach_through_an_alias(tmp_path):
    path = write(tmp_path, "model: &model\n  backbone: resnet_18\ndistill:\n  teacher: *model\n")
    cfg = rtdetr.load_spec(path, ["model.backbone=resnet_34"])
    assert cfg.model.backbone == "resnet_34"
    assert cfg.distill.teacher.backbone == "resnet_18"


@pytest.mark.parametrize(
    "text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "a: &a {<<: *a}\n", "a:\n  - &a [1, [*a]]\n"]
)
def test_recursive_alias_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    line = refuse(path)
    assert line.startswith(f"{path}:") and line.endswith(": alias *a refers to a node that contains it")


# ------------------------------------------------------------------------------------------ nesting
@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 1000 + "]" * 1000 + "\n",
        "a: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n",
        "a:\n" + "".join(" " * i + "- \n" for i in range(1, 1000)),
        "a:\n" + "".join(" " * i + "a:\n" for i in range(1, 1000)),
    ],
    ids=["flow lists", "flow mappings", "block lists", "block mappings"],
)
def test_deep_yaml_nesting_is_refused(tmp_path, text):
    path = write(tmp_path, text)
    line = refuse(path)
    assert line.startswith(f"{path}:") and f"nested deeper than {MAX_DEPTH} levels" in line


def test_nesting_through_aliases_counts(tmp_path):
    deep = "[" * 20 + "1" + "]" * 20
    ok = write(tmp_path, f"a: &a {deep}\nb: [*a]\n", "ok.yaml")
    assert read_spec_file(ok)["b"][0] == read_spec_file(ok)["a"]
    path = write(tmp_path, f"a: &a {deep}\nb: &b {deep.replace('1', '*a')}\n")
    assert refuse(path) == f"{path}:2: lists and mappings nested deeper than {MAX_DEPTH} levels"


def test_nesting_as_deep_as_allowed_loads(tmp_path):
    path = write(tmp_path, "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    assert read_spec_file(path)["a"] is not None


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_json_nesting_is_refused(tmp_path, depth):
    path = write(tmp_path, '{"a": ' + "[" * depth + "]" * depth + "}", "spec.json")
    assert refuse(path) == f"{path}: lists and mappings nested deeper than {MAX_DEPTH} levels"


def test_huge_integers_are_refused(tmp_path):
    json_path = write(tmp_path, '{"train": {"seed": ' + "1" * 5000 + "}}", "spec.json")
    assert refuse(json_path).startswith(f"{json_path}: integer 1111")
    yaml_path = write(tmp_path, "train:\n  seed: " + "1" * 5000 + "\n")
    assert refuse(yaml_path).startswith(f"{yaml_path}:2: integer 1111")
    hex_path = write(tmp_path, "train:\n  seed: 0x" + "f" * 4000 + "\n", "hex.yaml")
    assert refuse(hex_path).startswith(f"{hex_path}:2: integer 0xfff")


def test_deep_overrides_are_refused(write_spec):
    spec = write_spec({})
    line = refuse(spec, ["model.backbone=" + "[" * 1000 + "]" * 1000], error=SpecError)
    assert line.startswith("override 'model.backbone=[[[") and f"nested deeper than {MAX_DEPTH}" in line
    line = refuse(spec, [".".join(["a"] * 2000) + "=1"], error=SpecError)
    assert line.startswith("override 'a.a.a") and f"nested deeper than {MAX_DEPTH}" in line
    line = refuse(spec, ["model.backbone=&a [*a]"], error=SpecError)
    assert line == "override 'model.backbone=&a [*a]': alias *a refers to a node that contains it"


def test_deep_mapping_from_python_is_refused():
    data: dict = {}
    node = data
    for _ in range(2000):
        node["a"] = {}
        node = node["a"]
    assert refuse(data, error=SpecError) == f"spec: lists and mappings nested deeper than {MAX_DEPTH} levels"
    looped: dict = {"model": {}}
    looped["model"]["self"] = looped
    assert refuse(looped, error=SpecError) == "spec: a list or mapping contains itself"
    shared: list = ["x"] * 9
    for _ in range(8):
        shared = [shared] * 9
    line = refuse({"model": {"backbone": shared}}, error=SpecError)
    assert line == f"spec: shared lists and mappings expand to more than {MAX_ALIAS_NODES} nodes"


# ------------------------------------------------------------------------------------ list indexes
@pytest.mark.parametrize("index", ["²", "٣", "１", "0" * 5000 + "1"])
def test_only_ascii_digits_index_lists(write_spec, index):
    sources = [{"image_dir": f"d{i}", "json_file": f"{i}.json"} for i in range(4)]
    spec = write_spec({"dataset": {"train_data_sources": sources}})
    line = refuse(spec, [f"dataset.train_data_sources.{index}.image_dir=x"], error=SpecError)
    assert line.startswith("override 'dataset.train_data_sources.")
    assert line.endswith(f": no item {abbreviate(index, 20)} in the list dataset.train_data_sources")


# ---------------------------------------------------------------------------------- duplicate keys
def test_duplicate_yaml_key_names_both_lines(tmp_path):
    path = write(
        tmp_path,
        "model:\n  backbone: resnet_18\n  dec_layers: 3\ntrain:\n  num_epochs: 2\nmodel:\n  backbone: resnet_50\n",
    )
    assert refuse(path) == f"{path}:6: duplicate key 'model' (first at line 1)"
    nested = write(tmp_path, "train:\n  num_epochs: 2\n  seed: 1\n  num_epochs: 3\n", "nested.yaml")
    assert refuse(nested) == f"{nested}:4: duplicate key 'num_epochs' (first at line 2)"


def test_duplicate_key_in_an_override_value(write_spec):
    line = refuse(write_spec({}), ["inference.color_map={a: red, a: blue}"], error=SpecError)
    assert line == "override 'inference.color_map={a: red, a: blue}': duplicate key 'a' (first at column 2)"


def test_duplicate_json_key_is_named(tmp_path):
    path = write(tmp_path, '{"model": {"backbone": "resnet_18"}, "train": {}, "model": {}}', "spec.json")
    assert refuse(path) == f"{path}: duplicate key 'model'"


# ---------------------------------------------------------------------------- keys and value types
def test_non_string_keys_are_reported_about_the_field(tmp_path):
    path = write(tmp_path, "model:\n  null: 1\n  1: x\n  true: y\n")
    with pytest.raises(SpecError) as info:
        rtdetr.load_spec(path)
    lines = info.value.lines()
    assert f"{path}: model.null: unknown key" in lines
    assert any(line.startswith(f"{path}: model.1: unknown key") for line in lines)
    assert any(line.startswith(f"{path}: model.true: unknown key") for line in lines)


def test_dates_stay_strings(tmp_path):
    path = write(tmp_path, "model:\n  backbone: 2020-01-01\n")
    assert refuse(path, error=SpecError).startswith(
        f"{path}: model.backbone: value '2020-01-01' is not one of the valid_options"
    )
    cfg = rtdetr.load_spec(
        write(tmp_path, "results_dir: 2020-01-01\ntrain:\n  results_dir: 2020-01-01 10:00:00\n", "ok.yaml"),
        ["evaluate.results_dir=2021-02-03"],
    )
    assert (cfg.results_dir, cfg.train.results_dir) == ("2020-01-01", "2020-01-01 10:00:00")
    assert cfg.evaluate.results_dir == "2021-02-03"


@pytest.mark.parametrize(
    "value, tag",
    [
        ("!!set {a, b}", "!!set"),
        ("!!binary aGVsbG8=", "!!binary"),
        ("!!omap [a: 1]", "!!omap"),
        ("!!python/object/apply:os.system [ls]", "!!python/object/apply:os.system"),
        ("!custom x", "!custom"),
    ],
)
def test_other_value_types_are_refused(tmp_path, write_spec, value, tag):
    path = write(tmp_path, f"model:\n  backbone: {value}\n")
    assert refuse(path).startswith(f"{path}:2: unsupported YAML type {tag} (use a string")
    line = refuse(write_spec({}, "other.yaml"), [f"model.backbone={value}"], error=SpecError)
    assert line.startswith(f"override 'model.backbone={value}': unsupported YAML type {tag}")


def test_mistyped_explicit_tags_are_refused(tmp_path):
    path = write(tmp_path, "train:\n  enable_ema: !!bool maybe\n  seed: !!int x\n")
    assert refuse(path) == f"{path}:2: cannot read 'maybe' as !!bool"


# -------------------------------------------------------------------------------- short messages
def test_abbreviate():
    assert abbreviate("short") == "short"
    assert abbreviate("a\nb\tc\x00\u2028") == "a\\nb\\tc\\x00\\u2028"
    long = abbreviate("x" * 100_000)
    assert long == "x" * 60 + "..."
    assert abbreviate("x" * 60) == "x" * 60
    assert abbreviate(12, 40) == "12"


def test_user_text_in_messages_is_abbreviated(tmp_path, write_spec):
    key = "k\\n" * 50_000  # YAML's escape: the key holds 50,000 newlines
    path = write(tmp_path, f'model:\n  ? "{key}"\n  : 1\n  ? "{key}"\n  : 2\n')
    shown = "k\\n" * 20
    assert refuse(path) == f"{path}:4: duplicate key '{shown}...' (first at line 2)"
    line = refuse(write_spec({}), ["model.backbone=" + "x" * 100_000 + "\n: [1"], error=SpecError)
    assert line.startswith(f"override 'model.backbone={'x' * 45}...': value is not valid YAML: ")


def test_cli_reports_a_hostile_spec_in_one_line(cli, tmp_path):
    for text in (alias_bomb(), "a: &a [*a]\n", "a: " + "[" * 1000 + "]" * 1000 + "\n"):
        path = write(tmp_path, text)
        result = cli("train", "-e", path)
        assert result.code == 2 and "Traceback" not in result.err
        assert len(result.error_lines) == 1 and result.error_lines[0].startswith(f"error: {path}:")


# ---------------------------------------------------------------------------------- interpolations
ONLY_REFERENCES = "only references to other spec values (${section.key}) are allowed"


def interpolation_bomb(levels: int = 9, base: str = "x" * 9) -> dict:
    """Each level a string of nine references to the level above: 9**levels copies of ``base``."""
    names = "abcdefghijklmnop"
    data = {"a": base}
    for prev, name in zip(names, names[1 : levels + 1]):
        data[name] = f"${{{prev}}}" * 9
    return data


def test_interpolation_bomb_through_strings_is_refused(write_spec):
    path = write_spec(interpolation_bomb())
    assert len(path.read_bytes()) < 500
    line = refuse(path, error=SpecError)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: [b-j]: interpolations expand to more than {MAX_INTERPOLATED_NODES} values",
        line,
    )
    long_base = refuse(interpolation_bomb(base="x" * 1000), error=SpecError)
    assert long_base == f"spec: d: interpolations expand to more than {MAX_INTERPOLATED_CHARS} characters"


def test_interpolation_bomb_in_overrides_is_refused(write_spec):
    path = write_spec({})
    line = refuse(path, [f"{k}={v}" for k, v in interpolation_bomb().items()], error=SpecError)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: [b-j]: interpolations expand to more than \d+ values", line
    )


def test_interpolation_bomb_through_lists_and_mappings_is_refused():
    names = "abcdefghij"
    data: dict = {"a": {"x": ["x"] * 9}}
    for prev, name in zip(names, names[1:]):
        data[name] = [f"${{{prev}}}"] * 9  # nine copies of the level above, each a whole list
    line = refuse(data, error=SpecError)
    assert re.fullmatch(r"spec: [b-j]\.\d: interpolations expand to more than \d+ values", line), line


def test_many_references_are_refused():
    fan_out = {
        "results_dir": "/r",
        "x": {f"k{i}": "${results_dir}" for i in range(3 * MAX_INTERPOLATED_NODES)},
    }
    line = refuse(fan_out, error=SpecError)
    assert re.fullmatch(
        rf"spec: x\.k\d+: interpolations expand to more than {MAX_INTERPOLATED_NODES} values", line
    )
    one_string = {"results_dir": "", "x": "${results_dir}" * 100_000}
    assert refuse(one_string, error=SpecError).startswith("spec: x: interpolations expand to more than")
    long_text = {"results_dir": "/r", "x": "y" * 1_000_000 + "${results_dir}"}
    assert refuse(long_text, error=SpecError).startswith("spec: x: interpolations expand to more than")
    chain = {f"a{i}": f"${{a{i - 1}}}" for i in range(1, 500)} | {"a0": "x"}
    line = refuse(chain, error=SpecError)
    assert re.fullmatch(
        rf"spec: a\d+: interpolations expand to more than {MAX_INTERPOLATED_NODES} values", line
    )


def test_plain_references_keep_working(tmp_path):
    path = write(
        tmp_path,
        "results_dir: /r\n"
        "model:\n  backbone: resnet_18\n  hidden_dim: 256\n"
        "train:\n  results_dir: ${results_dir}/train\n  seed: ${model.hidden_dim}\n  num_epochs: ${.seed}\n"
        "evaluate:\n  results_dir: '${train.results_dir}/${..model.backbone}'\n"
        "  checkpoint: ${dataset.train_data_sources[1].json_file}\n"
        "dataset:\n  train_data_sources:\n    - {image_dir: /d0, json_file: /d0.json}\n"
        "    - {image_dir: '${..0.image_dir}', json_file: '${ dataset.train_data_sources.0.json_file }'}\n"
        "distill:\n  teacher: ${model}\n"
        "inference:\n  results_dir: ${distill.teacher.backbone}\n  checkpoint: '\\${oc.env:HOME}/\\${x}'\n",
    )
    cfg = rtdetr.load_spec(path, ["export.results_dir=${train.results_dir}/export"])
    assert (cfg.train.results_dir, cfg.train.seed, cfg.train.num_epochs) == ("/r/train", 256, 256)
    assert (cfg.evaluate.results_dir, cfg.evaluate.checkpoint) == ("/r/train/resnet_18", "/d0.json")
    assert [s.image_dir for s in cfg.dataset.train_data_sources] == ["/d0", "/d0"]
    assert cfg.dataset.train_data_sources[1].json_file == "/d0.json"
    assert (cfg.distill.teacher.backbone, cfg.distill.teacher.hidden_dim) == ("resnet_18", 256)
    assert cfg.inference.results_dir == "resnet_18"
    assert cfg.inference.checkpoint == "${oc.env:HOME}/${x}"  # escaped: the text itself
    assert cfg.export.results_dir == "/r/train/export"


@pytest.mark.parametrize(
    "value, written",
    [
        ("${oc.env:HOME}", "${oc.env:HOME}"),
        ("${oc.env:RTDETR_TEST_SECRET}", "${oc.env:RTDETR_TEST_SECRET}"),
        ("/data/${oc.env:RTDETR_TEST_SECRET,x}/y", "${oc.env:RTDETR_TEST_SECRET,x}"),
        ("${ oc.env : HOME }", "${ oc.env : HOME }"),
        ("${oc.decode:'{a: 1}'}", "${oc.decode:'{a: 1}'}"),
        ("${oc.create:{a: 1}}", "${oc.create:{a: 1}}"),
        ("${oc.select:model.hidden_dim,1}", "${oc.select:model.hidden_dim,1}"),
        ("${custom:}", "${custom:}"),
        ("${results_dir}/${oc.env:HOME}", "${oc.env:HOME}"),
        ("\\\\${oc.env:HOME}", "${oc.env:HOME}"),  # an escaped backslash, then a real interpolation
        ("${oc.env:${results_dir}}", "${oc.env:${results_dir}}"),
        ("${" + "x" * 50 + ":y}", "${" + "x" * 38 + "..."),
    ],
)
def test_resolvers_are_refused(write_spec, monkeypatch, value, written):
    monkeypatch.setenv("RTDETR_TEST_SECRET", "hunter2")
    expected = f"model.backbone: interpolation '{written}' uses a resolver; {ONLY_REFERENCES}"
    path = write_spec({"results_dir": "/r", "model": {"backbone": value}})
    assert refuse(path, error=SpecError) == f"{path}: {expected}"
    quoted = "'" + value.replace("'", "''") + "'"
    other = write_spec({"results_dir": "/r"}, "other.yaml")
    assert refuse(other, [f"model.backbone={quoted}"], error=SpecError) == f"{other}: {expected}"


@pytest.mark.parametrize(
    "value, written",
    [
        ("${model.${key}}", "${model.${key}}"),
        ("a ${", "${"),
        ("${}", "${}"),
        ("${model hidden_dim}", "${model hidden_dim}"),
        ("${model.}", "${model.}"),
        ("${.}", "${.}"),
        ("${model.hidden_dim", "${model.hidden_dim"),
        ("${'quoted'}", "${'quoted'}"),
        ("${\nmodel}", "${\\nmodel}"),
    ],
)
def test_other_interpolations_are_refused(write_spec, value, written):
    path = write_spec({"key": "x", "model": {"backbone": value}})
    line = refuse(path, error=SpecError)
    assert (
        line
        == f"{path}: model.backbone: interpolation '{written}' is not a plain reference; {ONLY_REFERENCES}"
    )


def test_escaped_interpolations_stay_literal(write_spec):
    spec = {
        "results_dir": "/r",
        "train": {"results_dir": "\\${oc.env:HOME}"},
        "evaluate": {"results_dir": "\\${results_dir}/\\\\${results_dir}"},
    }
    cfg = rtdetr.load_spec(write_spec(spec))
    assert cfg.train.results_dir == "${oc.env:HOME}"
    assert cfg.evaluate.results_dir == "${results_dir}/\\/r"


@pytest.mark.parametrize(
    "spec, line",
    [
        ({"results_dir": "${results_dir}"}, "results_dir: interpolation '${results_dir}' is circular"),
        ({"a": "${b}", "b": "x${a}"}, "b: interpolation '${a}' is circular"),
        ({"distill": {"teacher": "${distill}"}}, "distill.teacher: interpolation '${distill}' is circular"),
        ({"model": {"backbone": "${..model}"}}, "model.backbone: interpolation '${..model}' is circular"),
        ({"t": "${t.x}"}, "t: interpolation '${t.x}' is circular"),
        ({"u": "${t.x}", "t": "${t}"}, "t: interpolation '${t}' is circular"),
        ({"l": ["${l[1]}", "${l.0}"]}, "l.1: interpolation '${l.0}' is circular"),
    ],
)
def test_circular_references_are_refused(spec, line):
    assert refuse(spec, error=SpecError) == f"spec: {line}: its value would contain itself"


def test_long_reference_chains_are_refused():
    chain: dict = {"use": f"${{x{MAX_REFERENCE_DEPTH + 20}.k}}", "x0": {"k": 1}}
    chain |= {f"x{i}": f"${{x{i - 1}}}" for i in range(1, MAX_REFERENCE_DEPTH + 21)}
    line = refuse(chain, error=SpecError)
    assert re.fullmatch(rf"spec: x\d+: references nested more than {MAX_REFERENCE_DEPTH} levels deep", line)


def test_interpolation_problem_reads_interpolations_as_omegaconf_does():
    """Each ``${`` the scan allows is a node reference for OmegaConf's own parser, and no resolver
    call or other interpolation gets past it, escapes included."""
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
    from omegaconf.grammar_parser import parse

    pieces = [*"\\\\$ {}a0.:[]-',", "${", "${a}", "\\${"]
    rng = random.Random(20260601)
    checked = 0
    while checked < 2000:
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(2, 9)))
        if "${" not in text:
            continue
        checked += 1
        if interpolation_problem({"a": "x", "b": {"a": "x"}, "k": text}) is not None:
            continue
        try:
            tree = parse(text).text()
        except GrammarParseError:
            continue  # OmegaConf refuses the string itself: nothing is resolved
        kinds = [
            type(c.getChild(0)).__name__
            for c in (tree.getChildren() if tree is not None else [])
            if isinstance(c, OmegaConfGrammarParser.InterpolationContext)
        ]
        assert set(kinds) <= {"InterpolationNodeContext"}, (text, kinds)


def test_cli_reports_an_interpolation_problem_in_one_line(cli, write_spec):
    for spec in (interpolation_bomb(), {"model": {"backbone": "${oc.env:HOME}"}}, {"a": "${a}"}):
        path = write_spec(spec)
        result = cli("train", "-e", path)
        assert result.code == 2 and "Traceback" not in result.err
        assert len(result.error_lines) == 1 and result.error_lines[0].startswith(f"error: {path}: ")
