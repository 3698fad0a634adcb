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


_ADVICE = {13: "check the permissions of that folder", 1: "check the permissions of that folder",
           28: "the disk is full: free some space and rerun", 122: "the disk quota is full: free some space and rerun",
           2: "a file or folder is missing", 30: "the file system is read-only"}


def os_error_message(exc: OSError) -> str:
    """An operating-system failure as one line naming the path and what to do."""
    path = exc.filename if exc.filename is not None else "?"
    what = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or 0)
    return f"{path}: {what}" + (f" ({advice})" if advice else "")
