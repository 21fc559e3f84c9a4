"""Checks of OmegaConf ``${...}`` interpolations before they are resolved: plain references to other
spec values only (no resolvers), and an expanded size within a budget."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from rtdetr.errors import abbreviate

MAX_INTERPOLATED_CHARS = 100_000  # text of the strings holding ${...}, expanded (a real spec: ~1,000)
MAX_INTERPOLATED_NODES = 2_000  # values that references copy in, nested ones too (`teacher: ${model}`: ~50)
MAX_REFERENCE_DEPTH = 100  # lists, mappings and references expanded inside each other (a real spec: ~10)

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
