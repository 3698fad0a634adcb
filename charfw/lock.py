"""One build per workspace: a lock on `build/.lock`, held by the process that runs tasks.

The lock is an OS file lock (flock; msvcrt.locking on Windows), so it ends with its process
however that ends: a lock left by a dead process is simply taken over. The file says who holds it, for the
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
        side = path.with_name(LOCK_FILE + ".info")
        info = json.loads((side if side.exists() else path).read_text(encoding="utf-8"))
        since = datetime.datetime.fromtimestamp(info["since"]).strftime("%Y-%m-%d %H:%M:%S")
        return f"PID {info['pid']} ({info['command']}) since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(build_dir: Path, *, wait: bool = False, command: str = "doit") -> None:
    """Take the workspace lock for this process, or raise (wait=False) saying who holds it."""
    if _held:
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if not _lock(fd, block=False):
        who = holder(path)
        if not wait:
            os.close(fd)
            raise CharfwError(f"this workspace is being built by {who}; wait for it to finish, or start this "
                              "one with --wait (doit: CHARFW_WAIT=1 doit)", file=path)
        print(f"charfw: waiting for {who} to finish", file=sys.stderr, flush=True)
        _lock(fd, block=True)
    info = json.dumps({"pid": os.getpid(), "since": datetime.datetime.now().timestamp(), "command": command})
    if os.name == "posix":  # (Windows locks the file's first byte: the holder's info goes in a side file)
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
    else:
        (build_dir / (LOCK_FILE + ".info")).write_text(info, encoding="utf-8")
    _held.append(fd)


def _lock(fd: int, block: bool) -> bool:
    """An exclusive OS lock on the open file: flock on POSIX, msvcrt.locking on Windows."""
    if os.name == "posix":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False
    import msvcrt

    while True:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            if not block:
                return False
            import time

            time.sleep(1)
