"""Helpers for tests that run the example workspace through doit and the charfw CLI."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ("charfw.yaml", "dodo.py", "characters")


def copy_example(parent: Path) -> Path:
    ws = parent / "ws"
    ws.mkdir()
    for name in EXAMPLE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, ws / name)
        else:
            shutil.copy2(src, ws / name)
    return ws




def run_doit(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ws, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def executed(proc: subprocess.CompletedProcess) -> set[str]:
    """Tasks doit ran, read from its own output ('.  name' = executed, '-- name' = up to date)."""
    return {line[3:].strip() for line in proc.stdout.splitlines() if line.startswith(".  ")}


def run_charfw(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """A workspace command (new, check, plan, train) on `ws`."""
    return subprocess.run([sys.executable, "-m", "charfw.cli", *args, "-C", str(ws)],
                          capture_output=True, text=True)


SPEC_SIZES = "[128, 192, 256, 384, 512, 768]"


def use_spec_sizes(ws: Path) -> None:
    """Put back the default sizes the example trims for speed (to see every size class)."""
    text = (ws / "charfw.yaml").read_text()
    text = text.replace("face: [128, 192]", f"face: {SPEC_SIZES}").replace("body: [128, 192]", f"body: {SPEC_SIZES}")
    (ws / "charfw.yaml").write_text(text)


def replace_example_training(ws: Path, train_block: str) -> None:
    """Swap the example's `train:` section (steps trimmed for speed) for `train_block`'s lines."""
    path = ws / "charfw.yaml"
    text = path.read_text()
    start = text.index("\ntrain:\n") + 1
    path.write_text(text[:start] + "train:\n" + "".join(f"  {line}\n" for line in train_block.splitlines()))
