"""`charfw check`: validate the whole workspace without building anything."""

from __future__ import annotations

from pathlib import Path

from charfw.config.workspace import Project, load_project
from charfw.dataset.images import flatten
from charfw.dataset.plan import plan_set
from charfw.rules.viewcode import ALL_YAWS, SYMMETRIC_YAWS


def check_project(root: Path, *, decode: bool = True) -> tuple[Project, list[str]]:
    """Load and plan everything (raising CharfwError on the first problem); return warnings."""
    project = load_project(root)
    warnings: list[str] = []
    for s in project.sets.values():
        plan_set(s)
        if decode:
            for src in s.sources:
                flatten(src.path, s.background)  # a truncated file fails here, not mid-build
        wanted = SYMMETRIC_YAWS if s.symmetric else ALL_YAWS
        missing = sorted(set(wanted) - {src.view.yaw for src in s.sources})
        if missing:
            warnings.append(f"{s.folder}: no image for yaw {', '.join(map(str, missing))} "
                            f"({'symmetric' if s.symmetric else 'asymmetric'} characters need "
                            f"{min(wanted)}-{max(wanted)})")
    return project, warnings
