"""Errors that reach the user as one line and exit status 2."""

from __future__ import annotations


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
