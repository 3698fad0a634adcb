"""Commands that only read the workspace never import torch (it costs seconds and gigabytes):
`charfw check`, `charfw plan`, `doit list` and the report stage run with torch made unimportable."""

import subprocess
import sys

import pytest
from wsutil import copy_example

BLOCKER = """
import os, runpy, sys

class NoTorch:                       # any `import torch` now raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported by a torch-free command")

sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
os.chdir(os.environ["WS"])
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_torch(ws, *argv):
    return subprocess.run([sys.executable, "-c", BLOCKER, *argv], capture_output=True, text=True,
                          env={**__import__("os").environ, "WS": str(ws)})


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return copy_example(tmp_path_factory.mktemp("torch-free"))


@pytest.mark.parametrize("argv", [("charfw.cli", "check"), ("charfw.cli", "plan"), ("doit", "list", "--all"),
                                  ("doit", "report")], ids=["check", "plan", "doit list", "report stage"])
def test_read_only_commands_do_not_import_torch(ws, argv):
    proc = run_without_torch(ws, *argv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "torch imported" not in proc.stderr, proc.stderr[-2000:]


def test_the_blocker_blocks(ws):
    """The same harness fails a command that needs torch, so the test above can fail."""
    proc = run_without_torch(ws, "charfw.cli", "model", "random", "tiny-sd15", str(ws / "x.safetensors"))
    assert proc.returncode != 0
