"""Read a spec file, apply dotted overrides, validate once: the edge of the toolkit."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtdetr.config.interpolation import interpolation_problem
from rtdetr.config.rules import TASKS, required_problems, rule_problems
from rtdetr.config.safe_yaml import (
    MAX_DEPTH,
    SpecYAMLError,
    load_json,
    load_yaml,
    pyyaml_problem,
    tree_problem,
    yaml_problem,
)
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import SpecBuilder
from rtdetr.errors import SpecError, UserError, abbreviate


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
        data = load_json(text, path)
    else:
        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            where, problem = yaml_problem(exc)
            raise UserError(f"{path}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise UserError(f"{path}: the spec must be a mapping of sections, got {kind}")
    return dict(data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML by SpecLoader)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError([f"override '{abbreviate(text)}': expected key=value, e.g. train.num_epochs=20"])
    keys = key.split(".")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = (
            exc.problem
            if isinstance(exc, SpecYAMLError)
            else f"value is not valid YAML: {pyyaml_problem(exc)}"
        )
        raise SpecError([f"override '{abbreviate(text)}': {problem}"]) from exc
    if len(keys) + _height(value) > MAX_DEPTH:
        raise SpecError(
            [f"override '{abbreviate(text)}': lists and mappings nested deeper than {MAX_DEPTH} levels"]
        )
    return keys, value


def _height(value: Any) -> int:
    """Levels of lists and mappings in ``value`` (at most MAX_DEPTH: SpecLoader's data)."""
    if isinstance(value, dict):
        return 1 + max(map(_height, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_height, value), default=0)
    return 0


def _list_index(key: str, length: int) -> int | None:
    """``key`` as an index into a list of ``length`` items: ASCII digits only; None when it is not one."""
    if not (key.isascii() and key.isdigit()) or len(key) > 18:
        return None
    index = int(key)
    return index if index < length else None


def _copy_tree(value: Any) -> Any:
    """A copy of nested dicts and lists that shares no dict or list, neither with ``value`` nor
    inside itself (a YAML alias gives the same object twice)."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return copy.deepcopy(value)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set each ``a.b.c=value`` in a copy of ``data``; segments of ASCII digits index lists."""
    data = _copy_tree(data)
    problems = []
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                index = _list_index(key, len(node))
                if index is None:
                    problems.append(
                        f"override '{abbreviate(text)}': no item {abbreviate(key, 20)} in the list "
                        f"{abbreviate('.'.join(keys[:depth]))}"
                    )
                    break
                key = index
            elif not isinstance(node, dict):
                problems.append(
                    f"override '{abbreviate(text)}': {abbreviate('.'.join(keys[:depth]))} is not a section"
                )
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
    """Resolve OmegaConf ``${a.b}`` interpolations; ``???`` stays as the required-value marker.

    interpolation_problem is checked first: only plain references, within its limits.
    """
    problem = interpolation_problem(data)
    if problem:
        raise SpecError([f"{source}: {problem}"])
    try:
        conf = OmegaConf.create(data)
        return OmegaConf.to_container(conf, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        message = abbreviate(next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__, 120)
        key = getattr(exc, "full_key", None)
        key = f"{abbreviate(key)}: " if key else ""
        raise SpecError([f"{source}: {key}cannot resolve interpolation: {message}"]) from exc
    except RecursionError as exc:
        raise SpecError([f"{source}: cannot resolve interpolation: references nested too deeply"]) from exc


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
        raise UserError(f"unknown action '{abbreviate(action)}'; choose one of: {', '.join(TASKS)}")
    if source is None:
        data, name = {}, "spec"
    elif isinstance(source, Mapping):
        data, name = dict(source), "spec"
        problem = tree_problem(data)
        if problem:
            raise SpecError([f"{name}: {problem}"])
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
