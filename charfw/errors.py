"""One error type for everything a user can get wrong.

The message always says *where*: file, then line/field/image when known, so a
user with fifty characters can go straight to the culprit.
"""

from __future__ import annotations

from pathlib import Path


class CharfwError(Exception):
    """A problem with the user's input, reported as `file:line: field: message`."""

    def __init__(self, message: str, *, file: str | Path | None = None,
                 line: int | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        if self.field:
            where += f"{self.field}: "
        return where + self.message
