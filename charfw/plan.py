"""`charfw plan`: what the build would do next, and the exact command line of each training.

doit itself decides what is out of date (its `list --all --status`, run in-process over the
same task dictionaries `doit` loads), so the plan can never disagree with what `doit` does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from charfw.backends import command_line
from charfw.config.workspace import load_project
from charfw.errors import CharfwError
from charfw.layout import Layout
from charfw.pipeline.tasks import STAGES, task_names
from charfw.sdscripts.command import format_bat, format_shell


def pending_tasks(layout: Layout) -> list[str]:
    """Subtasks doit would run now, in stage order (doit's order within a stage)."""
    from doit.cmd_base import ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    layout.build_dir.mkdir(parents=True, exist_ok=True)  # doit's database lives there
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(layout.root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = DoitMain(ModuleTaskLoader(task_names(layout))).run(["list", "--all", "--status", "--quiet"])
    if code != 0:
        raise CharfwError(f"doit could not list the tasks:\n{err.getvalue().strip() or out.getvalue().strip()}")
    tasks = []
    for line in out.getvalue().splitlines():
        status, _, name = line.partition(" ")
        if status == "R" and ":" in name:
            tasks.append(name.strip())
    tasks.sort(key=lambda t: STAGES.index(t.split(":", 1)[0]))
    return tasks


def plan(root: Path, target: str | None = None) -> str:
    layout = Layout(load_project(root))
    targets = layout.project.targets
    if target is not None and target not in targets:
        raise CharfwError(f"unknown target {target!r}; targets: {', '.join(targets)}")
    names = None if target is None else {target, *(sub.set.id for sub in targets[target].subsets)}
    tasks = [t for t in pending_tasks(layout) if names is None or t.split(":", 1)[1] in names]
    if not tasks:
        return "nothing to do: everything is up to date"
    lines = ["would run:"] + [f"  {t}" for t in tasks]
    for t in tasks:
        stage, name = t.split(":", 1)
        if stage != "train":
            continue
        cmd = command_line(layout.train_request(targets[name]))
        lines += ["", f"train:{name} ({targets[name].train.trainer})",
                  "  Linux / macOS:", "    " + format_shell(cmd), "  Windows (.bat):"]
        lines += ["    " + ln for ln in format_bat(cmd).splitlines()]
    return "\n".join(lines)
