"""`charfw plan` and `charfw status`: what the build will do, in order, and why.

doit decides what is out of date now (its own status of every task, computed in-process over
the same task dictionaries `doit` loads). The plan adds what follows: a task whose input is
rebuilt by a task that runs will run too (a caption edit retrains the LoRAs trained on it),
so a user sees the full cost of an edit, trainings and their steps included, before starting.
"""

from __future__ import annotations

import contextlib
import io
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from charfw.backends import command_line
from charfw.errors import CharfwError
from charfw.layout import Layout
from charfw.pipeline.tasks import STAGES, task_names
from charfw.report.numbers import target_numbers
from charfw.sdscripts.command import format_bat, format_shell
from charfw.workspace import load_project


@dataclass
class TaskState:
    name: str
    stage: str
    runs: bool = False
    reasons: list[str] = field(default_factory=list)   # doit's, in words
    rebuilt_by: list[str] = field(default_factory=list)  # tasks that will rebuild its inputs
    inputs: set[str] = field(default_factory=set)    # relative paths it reads
    outputs: set[str] = field(default_factory=set)   # relative paths it writes


def _doit_status(layout: Layout) -> dict[str, TaskState]:
    """Every subtask with doit's own verdict and reasons, plus its inputs and outputs."""
    from doit.cmd_base import DoitCmdBase, ModuleTaskLoader
    from doit.doit_cmd import DoitMain

    found: dict[str, TaskState] = {}

    class Status(DoitCmdBase):
        name = "charfw-status"
        doc_purpose = "status of every task with reasons"
        doc_usage = ""
        doc_description = None
        cmd_options = ()

        def _execute(self):
            tasks = {t.name: t for t in self.task_list}
            for task in self.task_list:
                if task.name.split(":", 1)[0] not in STAGES or ":" not in task.name:
                    continue  # the stage groups, and `blocked:` tasks that doit never runs by default
                st = self.dep_manager.get_status(task, tasks, get_log=True)
                found[task.name] = TaskState(task.name, task.name.split(":", 1)[0], runs=st.status != "up-to-date",
                                             reasons=_reasons(st.reasons), inputs=set(task.file_dep),
                                             outputs=set(task.targets))
            self.dep_manager.close()
            return 0

    class Main(DoitMain):
        def get_cmds(self):
            cmds = super().get_cmds()
            cmds[Status.name] = Status
            return cmds

    layout.build_dir.mkdir(parents=True, exist_ok=True)  # doit's database lives there
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(layout.root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = Main(ModuleTaskLoader(task_names(layout))).run([Status.name])
    if code != 0:
        raise CharfwError(f"doit could not read the tasks:\n{err.getvalue().strip() or out.getvalue().strip()}")
    for target in layout.project.trained_targets():  # a training reads every image, caption and init LoRA
        state = found[f"train:{target.name}"]
        state.inputs |= {layout.rel(p) for p in layout.train_request(target).inputs}
    return found


def _reasons(reasons: dict) -> list[str]:
    """doit's reasons in words."""
    out = []
    for utd, _args, _kwargs in reasons.get("uptodate_false", []):
        out.append(str(getattr(utd, "__self__", utd)))
    for key, what in (("changed_file_dep", "input changed"), ("missing_target", "output missing"),
                      ("added_file_dep", "input added"), ("removed_file_dep", "input removed"),
                      ("missing_file_dep", "input not built yet")):
        paths = reasons.get(key)
        if paths:
            paths = sorted(paths)
            out.append(f"{what}: {paths[0]}" + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else ""))
    if reasons.get("has_no_dependencies"):
        out.append("runs every time")
    if reasons.get("checker_changed"):
        out.append("file checker changed")
    return out


def consequences(layout: Layout) -> list[TaskState]:
    """Every task in pipeline order, `runs` set for each the next `doit` will run, with why."""
    states = _doit_status(layout)
    readers: dict[str, list[str]] = {}
    for name, st in states.items():
        for path in st.inputs:
            readers.setdefault(path, []).append(name)
    todo = deque(name for name, st in states.items() if st.runs)
    while todo:
        name = todo.popleft()
        for path in states[name].outputs:
            for reader in readers.get(path, []):
                st = states[reader]
                if name not in st.rebuilt_by:
                    st.rebuilt_by.append(name)
                if not st.runs:
                    st.runs = True
                    todo.append(reader)
    order = {stage: i for i, stage in enumerate(STAGES)}
    position = {name: i for i, name in enumerate(states)}  # doit's order within a stage
    return sorted(states.values(), key=lambda s: (order[s.stage], position[s.name]))


def why(st: TaskState) -> str:
    """One line: doit's first reasons, then which tasks rebuild the inputs."""
    parts = st.reasons[:2]
    if st.rebuilt_by:
        shown = ", ".join(st.rebuilt_by[:3]) + (f" (+{len(st.rebuilt_by) - 3} more)" if len(st.rebuilt_by) > 3 else "")
        parts.append(f"inputs rebuilt by {shown}")
    return "; ".join(parts)


def _related(layout: Layout, target: str) -> set[str]:
    t = layout.project.targets[target]
    return {target, *(sub.set.id for sub in (*t.subsets, *t.reg_subsets))}


def plan(root: Path, target: str | None = None) -> str:
    layout = Layout(load_project(root))
    targets = layout.project.targets
    if target is not None and target not in targets:
        raise CharfwError(f"unknown target {target!r}; targets: {', '.join(targets)}")
    related = None if target is None else _related(layout, target)
    steps = [st for st in consequences(layout) if st.runs and (related is None or st.name.split(":", 1)[1] in related)]
    if not steps:
        return "nothing to do: everything is up to date"
    width = max(len(st.name) for st in steps)
    lines = ["would run, in order:"]
    trainings = []
    for st in steps:
        lines.append(f"  {st.name:<{width}}  {why(st)}")
        if st.stage == "train":
            trainings.append(layout.train_request(targets[st.name.split(':', 1)[1]]))
    if trainings:
        numbers = {r.name: target_numbers(layout, targets[r.name]) for r in trainings}
        total = sum(n.steps for n in numbers.values())
        where = f" on the Ray cluster at {layout.cluster.address}" if layout.cluster is not None else ""
        lines += ["", f"{len(trainings)} training{'s' if len(trainings) > 1 else ''}, {total} steps in all{where}:"]
        lines += [f"  {r.name}: {numbers[r.name].steps} steps ({r.settings.trainer}, {r.settings.network} dim {r.recipe.network.dim}"
                  + (", batch_scale auto: fewer, bigger batches on a GPU with room" if numbers[r.name].batch_scale
                     == "auto" else "") + ")" + _from_cache(r) for r in trainings]
    for req in trainings:
        cmd = command_line(req)
        lines += ["", f"train:{req.name} ({req.settings.trainer})",
                  "  Linux / macOS:", "    " + format_shell(cmd), "  Windows (.bat):"]
        lines += ["    " + ln for ln in format_bat(cmd).splitlines()]
    return "\n".join(lines)


def _from_cache(req) -> str:
    """ ": served by the run cache" where the shared cache holds this LoRA (its inputs built already)."""
    if not req.run_cache:
        return ""
    from charfw.backends import cached_keys
    from charfw.runcache import RunCache

    runs = RunCache(req.run_cache)
    return ": served by the run cache, not trained" if any(runs.has(k) for k, _ in cached_keys(req)) else ""


def status(root: Path, target: str) -> str:
    """Every task of one target, up to date or what will make it run (like `dvc status`)."""
    layout = Layout(load_project(root))
    if target not in layout.project.targets:
        raise CharfwError(f"unknown target {target!r}; targets: {', '.join(layout.project.targets)}")
    related = _related(layout, target)
    states = [st for st in consequences(layout) if st.name.split(":", 1)[1] in related]
    width = max(len(st.name) for st in states)
    return "\n".join(f"{st.name:<{width}}  " + (why(st) if st.runs else "up to date") for st in states)
