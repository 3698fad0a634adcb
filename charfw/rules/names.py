"""Which manifest values may become part of a file or folder name (docs/rules.md §12).

Keywords name the LoRA files, outfit and group names name folders and files, the class
word goes into the prepared-image folder name (`krnk girl_f0512`), a character's folder
name into its set ids and report page. Each is refused here, by the schema, unless it is
one harmless path component on every system users build on (Linux, macOS, Windows):
an allow-list of Unicode letters, marks and digits plus a few separators, so traversal
(`..`, `/`, `\\`), drive letters, control and bidi characters, and look-alikes of `/` and
`.` (U+2215, U+FF0F, U+FF0E) never reach a path. Caption tags are not path parts but
end up one per comma in a caption line: no commas, no line breaks, no control characters.
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import AfterValidator

MAX_NAME_BYTES = 96     # well under every filesystem's 255-byte component, with room for suffixes and temp names
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$",
                    *(f"{p}{d}" for p in ("com", "lpt") for d in "0123456789¹²³")}
_WORD_CATEGORIES = ("L", "M", "N")   # letters, combining marks, digits: never separators in any filesystem
_NAME_EXTRA = "_-"                   # keywords, outfit and group names: krnksf, krnksf_tyankps
_WORDS_EXTRA = " -'"                 # the class word(s): "girl", "1girl", "cat girl", "o'neill"
_INVISIBLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _odd_char(value: str, extra: str) -> str | None:
    for ch in value:
        if ch in extra or unicodedata.category(ch)[0] in _WORD_CATEGORIES:
            continue
        return ch
    return None


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, None)
    shown = repr(ch) if unicodedata.category(ch) not in _INVISIBLE else f"U+{ord(ch):04X}"
    return f"{shown} ({name.lower()})" if name else shown


def _common(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return f"too long ({len(value.encode('utf-8'))} bytes; at most {MAX_NAME_BYTES})"
    if value != value.strip():
        return "must not begin or end with a space"
    if value.casefold() in WINDOWS_RESERVED:
        return f"{value!r} is a reserved device name on Windows"
    return None


def _path_part_problem(value: str, extra: str, allowed: str) -> str | None:
    """What every name that becomes one path component must be; `extra`: separators allowed besides
    letters, marks and digits, which `allowed` describes."""
    problem = _common(value)
    if problem:
        return problem
    odd = _odd_char(value, extra)
    return f"contains {_describe(odd)}: {allowed}" if odd is not None else None


def name_problem(value: str) -> str | None:
    """Why `value` cannot be a keyword, outfit, group, preset or character name; None when it can."""
    problem = _path_part_problem(value, _NAME_EXTRA, "use letters, digits, '_' and '-' only")
    if problem is None and value[0] in _NAME_EXTRA:
        return "must begin with a letter or digit"
    return problem


def words_problem(value: str) -> str | None:
    """Why `value` cannot be the class word(s) (they go into folder names); None when it can."""
    problem = _path_part_problem(value, _WORDS_EXTRA,
                                 "use words of letters and digits, separated by single spaces or '-'")
    if problem is None and "  " in value:
        return "words must be separated by single spaces"
    return problem


_TAG_FORBIDDEN = re.compile(r"[,\n\r]")


def tag_problem(value: str) -> str | None:
    """Why `value` cannot be one caption tag; None when it can."""
    if not value.strip():
        return "must not be empty"
    if value != value.strip():
        return "must not begin or end with a space"
    bad = _TAG_FORBIDDEN.search(value)
    if bad:
        return f"contains {_describe(bad.group())}: one tag per list item (a comma would split it in the caption)"
    for ch in value:
        if unicodedata.category(ch) in _INVISIBLE:
            return f"contains the invisible character {_describe(ch)}"
    return None


def relative_dir_problem(value: str) -> str | None:
    """Why `value` cannot be a folder the build writes to (`build:`, `dist:`): it must stay inside the workspace."""
    if not value or "\x00" in value:
        return "must be a folder name"
    if any(unicodedata.category(ch) in _INVISIBLE for ch in value):
        return "contains an invisible character"
    parts = re.split(r"[/\\]", value)
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value) or value.startswith("~"):
        return "must be a folder inside the workspace (a relative path)"
    if ".." in parts:
        return "must be a folder inside the workspace (no '..')"
    if all(p in ("", ".") for p in parts):
        return "must be a folder inside the workspace, not the workspace itself"
    return None


def checked(problem) -> AfterValidator:
    """A pydantic check from one of the `*_problem` rules: its reason becomes the field's error message."""
    def check(value: str) -> str:
        reason = problem(value)
        if reason:
            raise ValueError(reason)
        return value
    return AfterValidator(check)


def read_path_problem(value: str) -> str | None:
    """Why `value` cannot be a path charfw reads from (image folders, LoRA and model files); None when it can.
    Reading may leave the workspace (a shared image folder), so only characters no path holds are refused."""
    if "\x00" in value:
        return "contains a NUL character"
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return f"contains the control character {_describe(ch)}"
    return None
