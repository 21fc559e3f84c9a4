"""Read a spec file, apply dotted overrides, validate once: the edge of the toolkit."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtdetr.config.rules import TASKS, required_problems, rule_problems
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import SpecBuilder
from rtdetr.errors import SpecError, UserError


def read_spec_file(path: str | os.PathLike) -> dict:
    """The mapping in a YAML or JSON spec file; one clear error line for each way it can be bad."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: spec file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a YAML or JSON spec file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read spec file: {getattr(exc, 'strerror', None) or exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"{path}{where}: malformed YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise UserError(f"{path}: the spec must be a mapping of sections, got {kind}")
    return dict(data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError([f"override '{text}': expected key=value, e.g. train.num_epochs=20"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError([f"override '{text}': value is not valid YAML ({exc.__class__.__name__})"]) from exc
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set each ``a.b.c=value`` in a copy of ``data``; numeric segments index lists."""
    data = copy.deepcopy(data)
    problems = []
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    problems.append(f"override '{text}': no item {key} in the list {'.'.join(keys[:depth])}")
                    break
                key = int(key)
            elif not isinstance(node, dict):
                problems.append(f"override '{text}': {'.'.join(keys[:depth])} is not a section")
                break
            if last:
                node[key] = value
                break
            child = node[key] if isinstance(node, list) else node.get(key)
            if not isinstance(child, (dict, list)):
                child = node[key] = {}
            node = child
    if problems:
        raise SpecError(problems)
    return data


def resolve_interpolations(data: dict, source: str) -> dict:
    """Resolve OmegaConf ``${a.b}`` interpolations; ``???`` stays as the required-value marker."""
    try:
        conf = OmegaConf.create(data)
        return OmegaConf.to_container(conf, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        message = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise SpecError(
            [f"{source}: {key + ': ' if key else ''}cannot resolve interpolation: {message}"]
        ) from exc


def load_spec(
    source: str | os.PathLike | Mapping | None = None,
    overrides: Sequence[str] = (),
    action: str | None = None,
) -> ExperimentConfig:
    """The typed, validated spec.

    ``source`` is a YAML/JSON path, a mapping, or None for the defaults; ``overrides`` are dotted
    ``key=value`` strings applied on top; ``action`` (a task name) also checks the values that
    task requires. Raises SpecError listing every problem, one line each.
    """
    if action is not None and action not in TASKS:
        raise UserError(f"unknown action '{action}'; choose one of: {', '.join(TASKS)}")
    if source is None:
        data, name = {}, "spec"
    elif isinstance(source, Mapping):
        data, name = dict(source), "spec"
    else:
        data, name = read_spec_file(source), str(source)
    data = resolve_interpolations(apply_overrides(data, overrides), name)
    builder = SpecBuilder(ExperimentConfig)
    cfg = builder.build(data)
    problems = builder.problems + rule_problems(cfg, builder.bad_paths)
    if action is not None:
        problems += required_problems(cfg, action)
    if problems:
        raise SpecError([f"{name}: {p}" for p in problems])
    return cfg


def spec_to_dict(cfg: Any) -> dict:
    """A spec (or one section) as plain data."""
    return dataclasses.asdict(cfg)


def dump_yaml(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None, width=100)
