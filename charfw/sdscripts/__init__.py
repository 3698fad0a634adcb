"""The kohya sd-scripts training backend (`train.trainer: sd-scripts`).

`command` builds the exact `train_network.py` invocation of the original LoRA.bat (docs/rules.md §6)
as pure functions; `runner` checks the sd-scripts install, runs it and collects the LoRA.
"""

from charfw.sdscripts.command import format_bat, format_shell, launch_command, logic_name, output_name, train_args
from charfw.sdscripts.runner import resolve_python, run_sd_scripts

__all__ = [
    "format_bat",
    "format_shell",
    "launch_command",
    "logic_name",
    "output_name",
    "resolve_python",
    "run_sd_scripts",
    "train_args",
]
