"""YAML reading that remembers where every value came from, so errors can name the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from charfw.errors import CharfwError

Loc = tuple[Any, ...]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~5x faster at 100 manifests
_CONSTRUCTOR = yaml.SafeLoader("")                      # turns scalar nodes into values, reused


def load_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse `path`; return (data, {location tuple: line number})."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharfwError("file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CharfwError(f"cannot read: {exc}", file=path) from None
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        message, line = yaml_error(exc, text)
        raise CharfwError(message, file=path, line=line) from None
    lines: dict[Loc, int] = {}
    if node is None:
        return {}, lines
    return _build(node, (), lines, path), lines


def yaml_error(exc: yaml.YAMLError, text: str) -> tuple[str, int | None]:
    """(message, line) for a syntax error, on the line that has it: the parser notices an unclosed
    bracket or quote only where the next thing begins (a line or more later, or at the end of the
    file), so the line where that construct opened is named, and where it was noticed is said too."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    last = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    noticed = min(mark.line + 1, last) if mark else None
    what = getattr(exc, "context", None) or ""
    unclosed = any(w in what for w in ("flow sequence", "flow mapping", "quoted scalar"))
    if context is not None and unclosed and (noticed is None or context.line + 1 < noticed):
        what = what.removeprefix("while parsing ").removeprefix("while scanning ")
        return f"invalid YAML: {what} that begins here is not closed: {problem} (noticed at line {noticed})", \
            context.line + 1
    return f"invalid YAML: {problem}", noticed


def _build(node: yaml.Node, loc: Loc, lines: dict[Loc, int], file: Path) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise CharfwError(f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1)
            out[key] = _build(value_node, loc + (key,), lines, file)
            lines[loc + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, loc + (i,), lines, file) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    """A scalar with YAML's usual typing, plus `1e-4` as a number (PyYAML's YAML 1.1 reads it as text)."""
    value = _CONSTRUCTOR.construct_object(node, deep=True)
    if isinstance(value, str) and not node.style and any(c in value for c in "eE"):  # plain: None, or "" from libyaml
        try:
            return float(value)
        except ValueError:
            return value
    return value


def line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of the deepest known part of `loc` (a missing field points at its parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


_UNION_TAG = re.compile(r"^(literal\[|tuple\[|list\[|dict\[|function-|lax-or-strict|json-or-python|"
                        r"(str|int|float|bool|none)$)")
_TAG_WORDS = [("literal[", "one of {}"), ("tuple[", "a list [r, g, b]"), ("list[", "a list"), ("dict[", "a mapping"),
              ("str", "a name"), ("float", "a number"), ("int", "a whole number")]


def _describe(tag: str) -> str:
    for prefix, words in _TAG_WORDS:
        if tag.startswith(prefix):
            return words.format(tag[len("literal["):-1]) if prefix == "literal[" else words
    return tag


def _pick(errors: list[dict]) -> tuple[dict, tuple, list[str]]:
    """The error to show: union members' tags taken out of its location, the most specific one
    (the deepest location: a bad list item rather than "not a string"), and the union's options
    when every member failed only on the type."""
    def clean(err):
        return tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))

    best = max(errors, key=lambda e: len(clean(e)))
    loc = clean(best)
    tags = [p for e in errors if clean(e) == loc for p in e["loc"] if isinstance(p, str) and _UNION_TAG.match(p)]
    same_depth = [e for e in errors if clean(e) == loc]
    options = [_describe(t) for t in dict.fromkeys(tags)] if len(same_depth) > 1 else []
    return best, loc, options


def validate(model: type[BaseModel], data: Any, *, file: Path, lines: dict[Loc, int],
             prefix: Loc = (), context: dict | None = None):
    """Validate with pydantic; turn the most telling error into a CharfwError naming file, line and field."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors()
        err, err_loc, options = _pick(errors)
        loc = prefix + err_loc
        field = ".".join(_field_part(p) for p in loc if p != "[key]") or None
        msg = {"extra_forbidden": "unknown field", "missing": "required field is missing"}.get(err["type"], err["msg"])
        msg = msg.removeprefix("Value error, ")
        if options:
            msg = "expected " + " or ".join(options)
        hint = _missing_hint(model, err) if err["type"] == "missing" else None
        if hint:
            msg += f": {hint}"
        value = err.get("input")
        if err["type"] not in ("missing", "extra_forbidden") and not isinstance(value, (dict, list)):
            msg += f" (got {value!r})"
        others = len({tuple(e["loc"][:1]) for e in errors}) - 1  # problems in other fields
        if others > 0:
            msg += f" (and {others} more problem{'s' if others > 1 else ''})"
        raise CharfwError(msg, file=file, line=line_of(loc, lines), field=field) from None


def _field_part(part) -> str:
    """One step of a field path; a mapping key that is not plain text is quoted (a bad name stays one line)."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _missing_hint(model: type[BaseModel], err: dict) -> str | None:
    """What to put in a required top-level field (its schema's `missing` note)."""
    if len(err["loc"]) != 1:
        return None
    info = model.model_fields.get(err["loc"][0])
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    return extra.get("missing")
