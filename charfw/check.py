"""`charfw check`: validate the whole workspace without building anything.

Every source image is decoded once: files that decoded cleanly are remembered by
(size, mtime_ns) in `build/.checked.json` (charfw.filecache), so a second check decodes
only what changed.
"""

from __future__ import annotations

from pathlib import Path

from charfw.config.workspace import load_project
from charfw.dataset.images import flatten
from charfw.filecache import file_cache
from charfw.layout import Layout
from charfw.project import Project
from charfw.rules.viewcode import required_yaws

CHECKED_FILE = ".checked.json"


def check_project(root: Path, *, decode: bool = True) -> tuple[Project, list[str]]:
    """Load and plan everything (raising CharfwError on the first problem); return warnings."""
    project = load_project(root)
    warnings: list[str] = []
    checked = file_cache(project.build_dir, CHECKED_FILE)
    Layout(project)  # plans every set: sizes, size classes
    for s in project.sets.values():
        if decode:
            for src in s.sources:  # a truncated file fails here, not mid-build
                checked.get(src.path, lambda p, bg=s.background: flatten(p, bg) is not None)
        wanted = required_yaws(s.symmetric)
        missing = sorted(set(wanted) - {src.view.yaw for src in s.sources})
        if missing:
            warnings.append(f"{s.folder}: no image for yaw {', '.join(map(str, missing))} "
                            f"({'symmetric' if s.symmetric else 'asymmetric'} characters need "
                            f"{min(wanted)}-{max(wanted)})")
    checked.save()
    return project, warnings
