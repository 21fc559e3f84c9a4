"""YAML and JSON reading that a hostile spec cannot turn against the machine: alias expansion within
a budget, bounded nesting, no recursive anchors, duplicate keys reported with both lines, dates as
strings, and no Python object types."""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from rtdetr.errors import UserError, abbreviate

MAX_DEPTH = 32  # lists and mappings nested in each other, the root mapping included (a real spec: ~5)
MAX_ALIAS_NODES = 5000  # nodes that aliases (*name) add to a spec in total (`teacher: *model`: ~50)
MAX_INT_DIGITS = 4300  # Python's default limit for converting between int and decimal text

_YAML_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _YAML_TAG + "merge"


class SpecYAMLError(yaml.MarkedYAMLError):
    """A YAML document that SpecLoader refuses although it is well formed."""


class SpecLoader(yaml.SafeLoader):
    """SafeLoader for spec files and override values, with limits for hostile input.

    Refuses lists and mappings nested deeper than MAX_DEPTH (also through aliases), an alias
    inside the node it names, aliases that add more than MAX_ALIAS_NODES nodes, duplicate keys,
    and value types other than string, number, bool, null, list and mapping. Dates stay strings;
    every key is the text of the scalar that wrote it (``null:`` -> "null", ``1:`` -> "1").
    """

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0  # lists and mappings open around the node being composed
        self._reach = 0  # the deepest expanded level reached inside the current anchored node
        self._expanded = 0  # nodes composed so far, an alias counting as all the nodes it names
        self._alias_nodes = 0  # of those, the nodes that aliases added
        self._open_anchors: set[str] = set()
        self._anchor_sizes: dict[str, tuple[int, int]] = {}  # anchor -> (height, expanded nodes)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            name = event.anchor
            if name in self._open_anchors:
                raise SpecYAMLError(
                    None,
                    None,
                    f"alias *{abbreviate(name, 40)} refers to a node that contains it",
                    event.start_mark,
                )
            height, size = self._anchor_sizes.get(name, (0, 1))  # undefined: PyYAML reports it
            self._check_depth(self._depth + height, event.start_mark)
            self._expanded += size
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise SpecYAMLError(
                    None,
                    None,
                    f"aliases expand to more than {MAX_ALIAS_NODES} nodes (at *{abbreviate(name, 40)})",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        event = self.peek_event()
        collection = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if collection:
            self._check_depth(self._depth + 1, event.start_mark)
        name = event.anchor
        if name is not None:
            outer_reach, self._reach = self._reach, self._depth
            start = self._expanded
            self._open_anchors.add(name)
        self._expanded += 1
        self._depth += collection
        self._reach = max(self._reach, self._depth)
        node = super().compose_node(parent, index)
        self._depth -= collection
        if name is not None:
            self._open_anchors.discard(name)
            self._anchor_sizes[name] = (self._reach - self._depth, self._expanded - start)
            self._reach = max(outer_reach, self._reach)
        return node

    def _check_depth(self, depth: int, mark: yaml.Mark) -> None:
        self._reach = max(self._reach, depth)
        if depth > MAX_DEPTH:
            raise SpecYAMLError(None, None, f"lists and mappings nested deeper than {MAX_DEPTH} levels", mark)

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecYAMLError(
                    None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
                )
            if key_node.tag == _MERGE_TAG:
                continue
            earlier = first.setdefault(key_node.value, key_node)
            if earlier is not key_node:
                a, b = earlier.start_mark, key_node.start_mark
                where = f"line {a.line + 1}" if a.line != b.line else f"column {a.column + 1}"
                raise SpecYAMLError(
                    None, None, f"duplicate key '{abbreviate(key_node.value)}' (first at {where})", b
                )
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:  # e.g. `!!bool maybe`, `!!int x`
            tag = node.tag.replace(_YAML_TAG, "!!")
            text = node.value if isinstance(node, yaml.ScalarNode) else node.id
            raise SpecYAMLError(
                None, None, f"cannot read '{abbreviate(text, 40)}' as {tag}", node.start_mark
            ) from exc

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # PyYAML's error
        self.flatten_mapping(node)
        # compose_mapping_node let only scalar keys through; each key stays the text it was written as
        return {key.value: self.construct_object(value, deep=deep) for key, value in node.value}

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_DIGITS:
            raise SpecYAMLError(
                None, None, f"integer {abbreviate(node.value, 20)} is too long", node.start_mark
            )
        value = super().construct_yaml_int(node)
        if value.bit_length() > MAX_INT_DIGITS * 3:  # 3 bits < 1 digit: str(value) stays in the limit
            raise SpecYAMLError(
                None, None, f"integer {abbreviate(node.value, 20)} is too large", node.start_mark
            )
        return value

    def construct_unsupported(self, node: yaml.Node) -> Any:
        tag = node.tag.replace(_YAML_TAG, "!!")
        raise SpecYAMLError(
            None,
            None,
            f"unsupported YAML type {abbreviate(tag, 40)} (use a string, number, list or mapping)",
            node.start_mark,
        )


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _YAML_TAG + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_constructor(_YAML_TAG + "int", SpecLoader.construct_yaml_int)
SpecLoader.add_constructor(_YAML_TAG + "timestamp", SpecLoader.construct_yaml_str)
for _kind in ("binary", "omap", "pairs", "set"):
    SpecLoader.add_constructor(_YAML_TAG + _kind, SpecLoader.construct_unsupported)
SpecLoader.add_constructor(None, SpecLoader.construct_unsupported)


def load_yaml(text: str) -> Any:
    """The data in a YAML document, read by SpecLoader."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(":LINE" or "", one line saying what is wrong) for a YAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f":{mark.line + 1}" if mark is not None else ""
    if isinstance(exc, SpecYAMLError):
        return where, exc.problem
    return where, f"malformed YAML: {pyyaml_problem(exc)}"


def pyyaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's description of a syntax error, on one short line."""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    problem = ", ".join(p for p in parts if p) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return abbreviate(problem, 160)


class _JSONProblem(ValueError):
    """Something json.loads read that a spec may not hold."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict; a key given twice is a problem."""
    data: dict = {}
    for key, value in pairs:
        if key in data:
            raise _JSONProblem(f"duplicate key '{abbreviate(key)}'")
        data[key] = value
    return data


def _json_int(text: str) -> int:
    """A JSON integer; one too long for Python to convert is a problem."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _JSONProblem(f"integer {abbreviate(text, 20)} is too long")
    return int(text)


def load_json(text: str, path: str | os.PathLike) -> Any:
    """The data in a JSON spec file; UserError for malformed JSON, duplicate keys or deep nesting."""
    try:
        data = json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from exc
    except _JSONProblem as exc:
        raise UserError(f"{path}: {exc}") from exc
    except RecursionError as exc:
        raise UserError(f"{path}: lists and mappings nested deeper than {MAX_DEPTH} levels") from exc
    problem = tree_problem(data)
    if problem:
        raise UserError(f"{path}: {problem}")
    return data


class _TreeProblem(Exception):
    """Why tree_problem refuses some data."""


def tree_problem(data: Any) -> str | None:
    """What makes nested data unfit for a spec, or None.

    Refuses nesting deeper than MAX_DEPTH, a list or mapping inside itself, and lists and mappings
    used in several places that add more than MAX_ALIAS_NODES nodes when expanded.
    """
    measured: dict[int, tuple[int, int]] = {}  # id -> (height, expanded nodes)
    inside: set[int] = set()
    unique = 0

    def measure(value: Any, depth: int) -> tuple[int, int]:
        nonlocal unique
        if not isinstance(value, (dict, list, tuple)):
            return 0, 1
        key = id(value)
        if key in inside:
            raise _TreeProblem("a list or mapping contains itself")
        if key not in measured:
            if depth + 1 > MAX_DEPTH:
                raise _TreeProblem(f"lists and mappings nested deeper than {MAX_DEPTH} levels")
            inside.add(key)
            children = [measure(v, depth + 1) for v in (value.values() if isinstance(value, dict) else value)]
            inside.discard(key)
            unique += 1 + sum(1 for v in children if v == (0, 1))
            measured[key] = (1 + max((h for h, _ in children), default=0), 1 + sum(n for _, n in children))
        height, size = measured[key]
        if depth + height > MAX_DEPTH:
            raise _TreeProblem(f"lists and mappings nested deeper than {MAX_DEPTH} levels")
        return height, size

    try:
        _, size = measure(data, 0)
    except _TreeProblem as exc:
        return str(exc)
    if size - unique > MAX_ALIAS_NODES:
        return f"shared lists and mappings expand to more than {MAX_ALIAS_NODES} nodes"
    return None
