"""Running the build's stages in this process (the way `charfw report` does), for callers that are not
doit: `build_report` brings build/report/ up to date."""

from __future__ import annotations

from pathlib import Path

from charfw import lock
from charfw.errors import CharfwError
from charfw.layout import Layout
from charfw.pipeline.tasks import task_names
from charfw.report.pages import report_dir
from charfw.workspace import load_project


def build_report(root: Path, target: str | None = None, *, wait: bool = False) -> Path:
    """Run the report stage (and, for finished targets, nothing more: charts come with the build);
    return the page to look at: the target's, or the overview."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain


    layout = Layout(load_project(root))
    if target is not None and target not in layout.project.targets:
        raise CharfwError(f"no target {target!r}; targets: {', '.join(layout.project.targets)}")
    layout.build_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire(layout.build_dir, wait=wait, command="charfw report")
    code = DoitMain(ModuleTaskLoader(task_names(layout))).run(["run", "--reporter=executed-only", "report"])
    if code:
        raise CharfwError("the report stage failed (see above)")
    out = report_dir(layout)
    return out / "targets" / f"{target}.html" if target else out / "index.html"
