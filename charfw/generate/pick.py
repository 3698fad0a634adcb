"""`charfw pick`: a chosen candidate becomes the set's image of its view code.

The candidate's file is copied as it is (its alpha and its parameters chunk included) into the set's
folder as `<code>.png`, written atomically. An image of that code already there is left alone unless
it is the same file (then nothing happens) or `--force` is given (then it is replaced); the normal
build then takes the set from there. Candidates live in build/ and never touch the sets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from charfw.errors import CharfwError
from charfw.fsutil import write_bytes
from charfw.generate.views import candidate_dir, candidate_name
from charfw.project import Generation
from charfw.rules.viewcode import parse_view_code
from charfw.workspace import IMAGE_SUFFIXES


def existing(gen: Generation, code: str) -> list[Path]:
    """The set's images of exactly this view code (any image suffix, no free suffix)."""
    if not gen.folder.is_dir():
        return []
    return sorted(p for p in gen.folder.iterdir() if p.stem == code and p.suffix.lower() in IMAGE_SUFFIXES)


def picked(gen: Generation, build_dir: Path, code: str, count: int) -> int | None:
    """Which candidate of a view is the set's image now (None: none of them)."""
    have = existing(gen, code)
    if not have:
        return None
    digest = hashlib.sha256(have[0].read_bytes()).digest()
    folder = candidate_dir(build_dir, gen)
    view = parse_view_code(code)
    for n in range(count):
        path = folder / candidate_name(view, n)
        if path.is_file() and hashlib.sha256(path.read_bytes()).digest() == digest:
            return n
    return None


def pick(gen: Generation, build_dir: Path, code: str, n: int, force: bool = False) -> tuple[Path, bool]:
    """Copy candidate `n` of `code` into the set; returns (the image, whether it was written)."""
    view = parse_view_code(code)
    if view is None or view.suffix or view.set not in gen.kind:
        raise CharfwError(f"{code!r} is not a view code of {gen.set_id} (its codes begin with "
                          f"{' or '.join(gen.kind)})", field="code")
    source = candidate_dir(build_dir, gen) / candidate_name(view, n)
    if not source.is_file():
        made = sorted(p.name for p in candidate_dir(build_dir, gen).glob(f"{code}-*.png") if "control" not in p.name)
        raise CharfwError(f"no candidate {n} of {code} (made: {', '.join(made) or 'none yet: run doit generate'})",
                          file=source)
    data = source.read_bytes()
    dest = gen.folder / f"{code}.png"
    for other in existing(gen, code):
        if other == dest and other.read_bytes() == data:
            return dest, False
        if not force:
            raise CharfwError(f"the set already has an image of {code}; use --force to replace it with candidate {n}",
                              file=other)
        other.unlink()
    gen.folder.mkdir(parents=True, exist_ok=True)
    write_bytes(dest, data)
    return dest, True


def picks_from(path: Path) -> dict[str, dict[str, int]]:
    """A picks file: {set id: {view code: candidate}} (YAML), e.g. `mira/face: {f00: 1, f02: 0}`."""
    from charfw.config.yamlfile import load_yaml

    data, lines = load_yaml(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CharfwError("a picks file maps each set (mira/face) to {view code: candidate number}", file=path)
    for set_id, codes in data.items():
        for code, n in codes.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise CharfwError(f"candidate number must be 0 or more, not {n!r}", file=path,
                                  line=lines.get((set_id, code)), field=f"{set_id}.{code}")
    return data
