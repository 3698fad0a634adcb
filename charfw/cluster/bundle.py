"""The files that travel with a remote training, and the files that come back.

A bundle is `{relative path: bytes}`: plain data, whatever the transport (Ray's object store
here). Paths inside the workspace keep their relative path; a file outside it (a declared LoRA
elsewhere) gets one under `_outside/`, so nothing is written outside a node's scratch folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from charfw.errors import CharfwError
from charfw.fsutil import write_bytes

OUTSIDE = "_outside"


def relative(path: Path | str, root: Path) -> str:
    """`path` as a bundle path: relative to `root`, or a stable name under `_outside/`."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return f"{OUTSIDE}/{tag}/{path.name}"
    return rel.as_posix()


def safe(rel: str) -> str:
    """A bundle path that stays inside the folder it is unpacked into (a node trusts no path it is sent)."""
    if "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise CharfwError(f"refusing a bundle path that leaves its folder: {rel!r}")
    return rel


def pack(paths, root: Path) -> dict[str, bytes]:
    """The files at `paths` (folders: every file under them) as a bundle."""
    files: dict[str, bytes] = {}
    for path in map(Path, paths):
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                files[relative(file, root)] = file.read_bytes()
    return files


def unpack(files: dict[str, bytes], root: Path) -> None:
    """Write a bundle under `root`, each file atomically, in the bundle's order."""
    for rel, data in files.items():
        write_bytes(root / safe(rel), data)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time (to see what a run wrote)."""
    return {p.relative_to(root).as_posix(): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and (st := p.stat())}


def written(root: Path, before: dict[str, tuple[int, int]], skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The files under `root` that are new or changed since `before`, except under the `skip` folders."""
    out = {}
    for rel, stamp in snapshot(root).items():
        if before.get(rel) != stamp and not any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in skip):
            out[rel] = (root / rel).read_bytes()
    return out


def replace_folder(folder: Path, files: dict[str, bytes], root: Path, keep: tuple[str, ...] = ()) -> None:
    """Make `folder` hold exactly the bundle's files under it (written first, then the others removed);
    files whose names start with one of `keep` stay."""
    rel_folder = relative(folder, root)
    mine = {rel: data for rel, data in files.items() if rel.startswith(rel_folder + "/")}
    unpack({rel: mine[rel] for rel in sorted(mine, key=lambda r: r.endswith(".json"))}, root)   # state.json last
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and relative(path, root) not in mine and not path.name.startswith(keep):
                path.unlink()
