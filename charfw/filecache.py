"""Values derived from a file's content, remembered by (size, mtime_ns) as doit's MD5 checker does.

One JSON file per kind under `build/` (`.digests.json`: md5 of run-key inputs, `.images.json`:
each source's size and alpha from its header), so a no-op
`doit`, `charfw plan` or `charfw check` reads no file twice across runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from charfw.fsutil import write_text


class FileCache:
    """path -> value, valid while the file's size and mtime_ns are unchanged (None path: in memory only)."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.entries = {}

    def get(self, path: str | Path, compute: Callable[[str | Path], Any]) -> Any:
        """The cached value for `path`, or compute(path) remembered; None when the file is missing."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = str(path)
        known = self.entries.get(key)
        if isinstance(known, list) and len(known) == 3 and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            return known[2]
        value = compute(path)
        if value is not None:
            self.entries[key] = [st.st_size, st.st_mtime_ns, value]
            self.dirty = True
        return value

    def save(self) -> None:
        if self.dirty and self.path is not None:
            try:
                write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
            except OSError:
                pass  # only a cache: the next run computes again
            self.dirty = False


_open: dict[Path, FileCache] = {}


def file_cache(build_dir: Path, name: str) -> FileCache:
    """The process's cache `name` for one workspace's build folder."""
    path = build_dir / name
    if path not in _open:
        _open[path] = FileCache(path)
    return _open[path]
