"""`load_tasks`: what dodo.py calls. An entry point: it sets up the process, then hands doit the tasks."""

from __future__ import annotations

import sys
from pathlib import Path

from charfw.errors import CharfwError


def load_tasks(root: str | Path) -> dict:
    """The names a dodo.py exposes to doit, for the workspace at `root`."""
    from charfw import process
    from charfw.config.workspace import load_project
    from charfw.layout import Layout
    from charfw.pipeline.tasks import task_names

    process.setup(process.doit_workers(sys.argv[1:]))
    try:
        layout = Layout(load_project(Path(root)))
    except CharfwError as exc:
        print(f"charfw: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    layout.build_dir.mkdir(parents=True, exist_ok=True)
    return task_names(layout)
