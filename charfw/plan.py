"""`charfw plan`: what the build would do next, and the exact command line of each training.

doit itself decides what is out of date (`doit list --all --status`), so the plan can never
disagree with what `doit` then does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from charfw.build.tasks import STAGES, Build
from charfw.build.training import command_line
from charfw.config.workspace import load_project
from charfw.errors import CharfwError
from charfw.sdscripts.command import format_bat, format_shell


def pending_tasks(root: Path) -> list[str]:
    """Subtasks doit would run now (doit lists them by name)."""
    proc = subprocess.run([sys.executable, "-m", "doit", "list", "--all", "--status", "--quiet"],
                          cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CharfwError(f"doit could not list the tasks:\n{proc.stderr.strip() or proc.stdout.strip()}")
    tasks = []
    for line in proc.stdout.splitlines():
        status, _, name = line.partition(" ")
        if status == "R" and ":" in name:
            tasks.append(name.strip())
    return tasks


def plan(root: Path, target: str | None = None) -> str:
    build = Build(load_project(root))
    if target is not None and target not in build.project.targets:
        raise CharfwError(f"unknown target {target!r}; targets: {', '.join(build.project.targets)}")
    tasks = [t for t in pending_tasks(root) if target is None or t.split(":", 1)[1] in (target, *_sets_of(build, target))]
    tasks.sort(key=lambda t: STAGES.index(t.split(":", 1)[0]))  # stable: doit's order within a stage
    if not tasks:
        return "nothing to do: everything is up to date"
    lines = ["would run:"] + [f"  {t}" for t in tasks]
    for t in tasks:
        stage, name = t.split(":", 1)
        if stage != "train":
            continue
        cmd = command_line(build.train_job(build.project.targets[name]))
        lines += ["", f"train:{name} ({build.project.targets[name].train.trainer})",
                  "  Linux / macOS:", "    " + format_shell(cmd), "  Windows (.bat):"]
        lines += ["    " + ln for ln in format_bat(cmd).splitlines()]
    return "\n".join(lines)


def _sets_of(build: Build, target: str) -> list[str]:
    return [sub.set.id for sub in build.project.targets[target].subsets]
