"""Build this workspace's characters with charfw: `doit` builds, `doit list` shows the stages."""

from pathlib import Path

from charfw.pipeline import load_tasks

globals().update(load_tasks(Path(__file__).parent))
