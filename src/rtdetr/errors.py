"""Errors that reach the user as one line and exit status 2."""

from __future__ import annotations


def abbreviate(text: object, limit: int = 60) -> str:
    """``text`` fit to quote in a one-line message.

    Characters that are not printable (line breaks, tabs, control and zero-width characters) are
    escaped as in a Python string literal; past ``limit`` characters the rest is cut off and "..."
    appended.
    """
    text = str(text)
    out: list[str] = []
    length = 0
    for char in text:
        piece = char if char.isprintable() else repr(char)[1:-1]
        if length + len(piece) > limit:
            return "".join(out) + "..."
        out.append(piece)
        length += len(piece)
    return "".join(out)


class UserError(Exception):
    """A problem with the user's input (spec, files, data): reported in one line, exit status 2.

    ``kind`` starts the FAILURE message in status.json, e.g. "Configuration error".
    """

    kind = "Error"
    exit_code = 2

    def lines(self) -> list[str]:
        """The message, one problem per line."""
        return [str(self)]


class SpecError(UserError):
    """One or more problems found in an experiment spec; ``problems`` holds one line each."""

    kind = "Configuration error"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def lines(self) -> list[str]:
        return list(self.problems)


class NotImplementedTask(UserError):
    """A task the toolkit names but does not implement yet."""

    kind = "Not implemented"
