"""`charfw check`: validate the whole workspace without building anything.

Every source image is decoded once: files that decoded cleanly are remembered by
(size, mtime_ns) in `build/.checked.json`, so a second check decodes only what changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from charfw.config.workspace import load_project
from charfw.dataset.images import flatten
from charfw.dataset.plan import plan_set
from charfw.fsutil import write_text
from charfw.project import Project
from charfw.rules.viewcode import required_yaws

CHECKED_FILE = ".checked.json"


def check_project(root: Path, *, decode: bool = True) -> tuple[Project, list[str]]:
    """Load and plan everything (raising CharfwError on the first problem); return warnings."""
    project = load_project(root)
    warnings: list[str] = []
    stamps_file = project.build_dir / CHECKED_FILE
    checked = _read_stamps(stamps_file) if decode else {}
    before = dict(checked)
    for s in project.sets.values():
        plan_set(s)
        if decode:
            for src in s.sources:
                stamp = _stamp(src.path)
                if checked.get(str(src.path)) != stamp:
                    flatten(src.path, s.background)  # a truncated file fails here, not mid-build
                    checked[str(src.path)] = stamp
        wanted = required_yaws(s.symmetric)
        missing = sorted(set(wanted) - {src.view.yaw for src in s.sources})
        if missing:
            warnings.append(f"{s.folder}: no image for yaw {', '.join(map(str, missing))} "
                            f"({'symmetric' if s.symmetric else 'asymmetric'} characters need "
                            f"{min(wanted)}-{max(wanted)})")
    if checked != before:
        try:
            write_text(stamps_file, json.dumps(checked, separators=(",", ":")))
        except OSError:
            pass  # only a cache
    return project, warnings


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_stamps(path: Path) -> dict[str, list[int]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
