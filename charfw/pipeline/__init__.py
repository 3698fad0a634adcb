"""The doit wiring: task dictionaries over charfw.layout, their actions, and the dodo.py entry.

    # dodo.py
    from charfw.pipeline import load_tasks
    globals().update(load_tasks(Path(__file__).parent))
"""

from charfw.pipeline.entry import load_tasks

__all__ = ["load_tasks"]
