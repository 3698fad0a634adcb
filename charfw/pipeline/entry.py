"""`load_tasks`: what dodo.py calls. An entry point: it sets up the process, then hands doit the tasks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from charfw import lock, process
from charfw.check import masked_loss_warnings
from charfw.errors import CharfwError, os_error_message
from charfw.layout import Layout
from charfw.pipeline.tasks import task_names
from charfw.workspace import load_project

# doit commands that only read: they run while a build holds the workspace lock
READ_ONLY = {"list", "info", "help", "dumpdb", "tabcompletion"}
DOIT_COMMANDS = READ_ONLY | {"run", "clean", "forget", "ignore", "reset-dep", "strace", "auto"}


def doit_command(argv: list[str]) -> str:
    """doit's subcommand in its argument list ('run' when none is named)."""
    return next((a for a in argv if a in DOIT_COMMANDS), "run")


def _quiet_interrupt(exc_type, exc, tb) -> None:
    """Ctrl-C: each training has said where it stopped; no traceback of doit's own loop."""
    if issubclass(exc_type, KeyboardInterrupt):
        print("charfw: interrupted; rerun doit to continue", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def load_tasks(root: str | Path) -> dict:
    """The names a dodo.py exposes to doit, for the workspace at `root`."""

    process.setup(process.doit_workers(sys.argv[1:]))
    sys.excepthook = _quiet_interrupt
    try:
        layout = Layout(load_project(Path(root)))
        layout.build_dir.mkdir(parents=True, exist_ok=True)
    except CharfwError as exc:
        print(f"charfw: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        print(f"charfw: error: {os_error_message(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    for name, skipped in layout.project.skipped.items():
        print(f"charfw: warning: {name} is left out until it has images ({skipped.reason})", file=sys.stderr)
    for warning in masked_loss_warnings(layout):
        print(f"charfw: warning: {warning}", file=sys.stderr)
    command = doit_command(sys.argv[1:])
    if command not in READ_ONLY:

        try:
            lock.acquire(layout.build_dir, wait=os.environ.get("CHARFW_WAIT") == "1",
                         command="doit " + " ".join(sys.argv[1:]))
        except CharfwError as exc:
            print(f"charfw: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return task_names(layout)
