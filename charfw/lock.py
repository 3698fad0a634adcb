"""One build per workspace: a lock on `build/.lock`, held by the process that runs tasks.

The lock is an OS file lock (flock), so it ends with its process however that ends: a
lock left by a dead process is simply taken over. The file says who holds it, for the
message the second build prints.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

from charfw.errors import CharfwError

LOCK_FILE = ".lock"
_held: list[int] = []  # open descriptors: the lock lasts as long as the process


def holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = datetime.datetime.fromtimestamp(info["since"]).strftime("%Y-%m-%d %H:%M:%S")
        return f"PID {info['pid']} ({info['command']}) since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(build_dir: Path, *, wait: bool = False, command: str = "doit") -> None:
    """Take the workspace lock for this process, or raise (wait=False) saying who holds it."""
    import fcntl

    if _held:
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = holder(path)
        if not wait:
            os.close(fd)
            raise CharfwError(f"this workspace is being built by {who}; wait for it to finish, or start this "
                              "one with --wait (doit: CHARFW_WAIT=1 doit)", file=path) from None
        print(f"charfw: waiting for {who} to finish", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "since": datetime.datetime.now().timestamp(),
                             "command": command}).encode())
    _held.append(fd)
