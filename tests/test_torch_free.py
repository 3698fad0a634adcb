"""Commands that only read the workspace never import torch (it costs seconds and gigabytes):
`charfw check`, `charfw plan`, `doit list` and the report stage run with torch made unimportable.
`charfw lora compress` never imports pydantic (its imports are a tenth of the I/O floor it is held to)."""

import subprocess
import sys

import pytest
from wsutil import copy_example

BLOCKER = """
import os, runpy, sys

BLOCKED = os.environ.get("BLOCKED", "torch")

class NoTorch:                       # any `import torch` (or BLOCKED) now raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ImportError(f"{BLOCKED} imported by a {BLOCKED}-free command")

sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
os.chdir(os.environ["WS"])
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_torch(ws, *argv, blocked="torch"):
    return subprocess.run([sys.executable, "-c", BLOCKER, *argv], capture_output=True, text=True,
                          env={**__import__("os").environ, "WS": str(ws), "BLOCKED": blocked})


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


def test_lora_compress_does_not_import_pydantic(tmp_path):
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    save_file({"lora_unet_x.lora_down.weight": torch.randn(8, 64, generator=gen).half(),
               "lora_unet_x.lora_up.weight": torch.randn(32, 8, generator=gen).half()}, str(tmp_path / "a.safetensors"))
    proc = run_without_torch(tmp_path, "charfw.cli", "lora", "compress", "a.safetensors", "--rank", "4",
                             blocked="pydantic")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "a-R4.safetensors").is_file()
    proc = run_without_torch(tmp_path, "charfw.cli", "check", blocked="pydantic")   # the harness can fail
    assert "pydantic imported by a pydantic-free command" in proc.stderr
