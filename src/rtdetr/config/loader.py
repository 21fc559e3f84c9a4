"""Read a spec file, apply dotted overrides, validate once: the edge of the toolkit."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rtdetr.config.rules import TASKS, required_problems, rule_problems
from rtdetr.config.schema import ExperimentConfig
from rtdetr.config.validate import SpecBuilder
from rtdetr.errors import SpecError, UserError, abbreviate

MAX_DEPTH = 32  # lists and mappings nested in each other, the root mapping included (a real spec: ~5)
MAX_ALIAS_NODES = 5000  # nodes that aliases (*name) add to a spec in total (`teacher: *model`: ~50)
MAX_INT_DIGITS = 4300  # Python's default limit for converting between int and decimal text
MAX_INTERPOLATED_CHARS = 100_000  # text of the strings holding ${...}, expanded (a real spec: ~1,000)
MAX_INTERPOLATED_NODES = 2_000  # values that references copy in, nested ones too (`teacher: ${model}`: ~50)
MAX_REFERENCE_DEPTH = 100  # lists, mappings and references expanded inside each other (a real spec: ~10)

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
    return where, f"malformed YAML: {_pyyaml_problem(exc)}"


def _pyyaml_problem(exc: yaml.YAMLError) -> str:
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
            else f"value is not valid YAML: {_pyyaml_problem(exc)}"
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


_KEY = r"[A-Za-z0-9_\-]+"
# A plain reference as OmegaConf reads it: ${a.b}, ${.a}, ${..a.b}, ${a[0]}, ${a.0.b}, ${ a.b }
_REFERENCE = re.compile(rf"\$\{{[ \t]*(\.*)((?:{_KEY}|\[{_KEY}\])(?:\.{_KEY}|\[{_KEY}\])*)[ \t]*\}}")
_KEY_TEXT = re.compile(_KEY)


def _interpolations(text: str) -> Iterator[tuple[int, re.Match | None]]:
    """(start, match of _REFERENCE or None) for each ``${`` that OmegaConf reads as an interpolation.

    As in OmegaConf's grammar, a ``${`` after an odd number of backslashes is literal text. The
    scan stops after the first interpolation that is not a plain reference (None).
    """
    pos = 0
    while (start := text.find("${", pos)) >= 0:
        slashes = 0
        while start - slashes > pos and text[start - slashes - 1] == "\\":
            slashes += 1
        if slashes % 2:
            pos = start + 2
            continue
        match = _REFERENCE.match(text, start)
        yield start, match
        if match is None:
            return
        pos = match.end()


def _interpolation_text(text: str, start: int) -> str:
    """The interpolation that starts at ``start``, up to its closing brace (at most 200 characters)."""
    depth = 0
    for end in range(start + 1, min(len(text), start + 200)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start : end + 1]
    return text[start : start + 200]


def _text_size(value: Any) -> int:
    """About how many characters ``value`` (a key or a plain value) takes as text."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() * 3 // 10 + 2
    return 24


def _dotted(path: tuple) -> str:
    """A path of keys and list indexes as dotted text to quote in a message."""
    parts = []
    for key in path:
        try:
            parts.append(str(key))
        except ValueError:  # an int too long to write in decimal
            parts.append("<int>")
    return abbreviate(".".join(parts))


class _InterpolationProblem(Exception):
    """Why interpolation_problem refuses some data."""


def interpolation_problem(data: Any) -> str | None:
    """What makes the ``${...}`` interpolations in a spec's data unfit to resolve, or None.

    Only references to other values are allowed: absolute (``${a.b}``) or relative (``${.x}``,
    ``${..y}``), with list indexes written ``.0`` or ``[0]``; escaped ``\\${...}`` is literal text.
    Refuses resolver calls (``${oc.env:HOME}``) and any other interpolation, references that lead
    back to the value holding them, references nested deeper than MAX_REFERENCE_DEPTH, and
    references that expand the strings holding them to more than MAX_INTERPOLATED_CHARS characters
    in total or copy in more than MAX_INTERPOLATED_NODES values. A reference to a value that does not
    exist counts as empty here: OmegaConf reports it.
    """
    sizes: dict[tuple, tuple[int, int]] = {}  # path -> (characters, values) once expanded
    redirects: dict[tuple, tuple[tuple, Any] | None] = {}  # path of a `${x}` string -> (path, value) of x
    expanding: list[tuple] = []  # paths being expanded, each inside the one before
    redirecting: list[tuple] = []  # paths of `${x}` strings whose x is being looked up
    int_keys: dict[int, set[int]] = {}  # id of a mapping -> its keys that are ints
    chars = nodes = 0

    def charge(path: tuple, more_chars: int, more_nodes: int) -> None:
        nonlocal chars, nodes
        chars += more_chars
        nodes += more_nodes
        if chars > MAX_INTERPOLATED_CHARS:
            raise _InterpolationProblem(
                f"{_dotted(path)}: interpolations expand to more than {MAX_INTERPOLATED_CHARS} characters"
            )
        if nodes > MAX_INTERPOLATED_NODES:
            raise _InterpolationProblem(
                f"{_dotted(path)}: interpolations expand to more than {MAX_INTERPOLATED_NODES} values"
            )

    def enter(stack: list[tuple], path: tuple) -> None:
        if len(expanding) + len(redirecting) >= MAX_REFERENCE_DEPTH:
            raise _InterpolationProblem(
                f"{_dotted(path)}: references nested more than {MAX_REFERENCE_DEPTH} levels deep"
            )
        stack.append(path)

    def circular(path: tuple, reference: str) -> _InterpolationProblem:
        return _InterpolationProblem(
            f"{_dotted(path)}: interpolation '{abbreviate(reference, 40)}' is circular: "
            "its value would contain itself"
        )

    def redirect(path: tuple, value: Any) -> tuple[tuple, Any] | None:
        """(path, value) that a string holding one whole reference stands for (one step), or None."""
        if path not in redirects:
            match = _REFERENCE.fullmatch(value)
            if match is None:
                return None
            if path in redirecting:
                raise circular(path, value)
            enter(redirecting, path)
            redirects[path] = target(path, match)
            redirecting.pop()
        return redirects[path]

    def child(path: tuple, value: Any, key: str) -> tuple[tuple, Any] | None:
        """(path, value) of item ``key`` of ``value`` as OmegaConf finds it, or None.

        A string that is one whole reference (``teacher: ${model}``) stands for what it refers to.
        """
        seen: set[tuple] = set()
        while isinstance(value, str):
            if path in seen:
                raise circular(path, value)
            seen.add(path)
            if len(seen) > MAX_REFERENCE_DEPTH:
                raise _InterpolationProblem(
                    f"{_dotted(path)}: references nested more than {MAX_REFERENCE_DEPTH} levels deep"
                )
            found = redirect(path, value)
            if found is None:
                return None
            path, value = found
        if isinstance(value, dict):
            if key in value:
                return (*path, key), value[key]
            if id(value) not in int_keys:  # as OmegaConf: "1" (or "01") also names a key that is the int 1
                int_keys[id(value)] = {k for k in value if type(k) is int}
            if not int_keys[id(value)]:
                return None
            try:
                number = int(key)
            except ValueError:
                return None
            return ((*path, number), value[number]) if number in int_keys[id(value)] else None
        if isinstance(value, (list, tuple)):
            try:
                index = int(key)  # as OmegaConf: "01", "-1" and "1_0" index a list too
            except ValueError:
                return None
            if -len(value) <= index < len(value):
                index %= len(value)
                return (*path, index), value[index]
        return None

    def target(path: tuple, match: re.Match) -> tuple[tuple, Any] | None:
        """(path, value) that the reference ``match``, written at ``path``, refers to, or None."""
        dots = len(match.group(1))
        if dots > len(path):
            return None
        found: tuple[tuple, Any] | None = ((), data)
        base = path[: len(path) - dots] if dots else ()
        for key in base:  # a path already found: no references on the way
            found = (*found[0], key), found[1][key]
        for key in _KEY_TEXT.findall(match.group(2)):
            found = child(*found, key)
            if found is None:
                return None
        return found

    def expand_string(path: tuple, text: str) -> tuple[int, int]:
        size, count = len(text), 1
        charge(path, len(text), 0)
        for start, match in _interpolations(text):
            if match is None:
                written = _interpolation_text(text, start)
                what = "uses a resolver" if ":" in written else "is not a plain reference"
                raise _InterpolationProblem(
                    f"{_dotted(path)}: interpolation '{abbreviate(written, 40)}' {what}; "
                    "only references to other spec values (${section.key}) are allowed"
                )
            found = target(path, match)
            if found is None:
                continue
            found_path = found[0]
            if any(p[: len(found_path)] == found_path for p in expanding):
                raise circular(path, match.group(0))
            more_chars, more_nodes = expand(*found)
            size += more_chars
            count += more_nodes
            charge(path, more_chars, more_nodes)
        return size, count

    def expand(path: tuple, value: Any) -> tuple[int, int]:
        """(characters, values) of ``value`` at ``path`` with every reference in it expanded."""
        if path in sizes:
            return sizes[path]
        enter(expanding, path)
        if isinstance(value, dict):
            size, count = 2, 1
            for key, item in value.items():
                more_chars, more_nodes = expand((*path, key), item)
                size += _text_size(key) + more_chars + 4
                count += more_nodes
        elif isinstance(value, (list, tuple)):
            size, count = 2, 1
            for index, item in enumerate(value):
                more_chars, more_nodes = expand((*path, index), item)
                size += more_chars + 2
                count += more_nodes
        elif isinstance(value, str) and "${" in value:
            size, count = expand_string(path, value)
        else:
            size, count = _text_size(value), 1
        expanding.pop()
        sizes[path] = size, count
        return size, count

    def visit(path: tuple, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit((*path, key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit((*path, index), item)
        elif isinstance(value, str) and "${" in value:
            expand(path, value)

    try:
        visit((), data)
    except _InterpolationProblem as exc:
        return str(exc)
    return None


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
