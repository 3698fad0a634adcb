"""When the embedded trainer compiles the U-Net's transformer blocks, and when it replays them as
CUDA graphs: pure functions of the settings and the machine, so tests need no GPU.
"""

from __future__ import annotations

COMPILE_MIN_STEPS = 300   # below this, compiling (seconds per block shape) may cost more than it saves


def use_compile(setting: str, on_gpu: bool, steps: int) -> bool:
    """`compile: auto` compiles on a GPU for runs long enough to repay the compile time; never on a
    CPU, where compiling takes minutes and saves little."""
    if setting != "auto":
        return setting == "on"
    return on_gpu and steps >= COMPILE_MIN_STEPS


def cuda_graphs_blocker(compiled: bool, on_gpu: bool, checkpointing: bool) -> str | None:
    """Why this run cannot replay its compiled blocks as CUDA graphs; None when it can.

    The graphs are torch.compile's CUDA graph trees ("reduce-overhead"), recorded once per block
    and input shape (so once per bucket). Under gradient checkpointing the backward re-runs each
    block's forward, which the trees record and replay with other tensor lifetimes and refuse
    (pytorch/pytorch#154306); such runs keep plain compiled blocks.
    """
    if not on_gpu:
        return "CUDA graphs exist only on a GPU"
    if not compiled:
        return "the graphs are recorded by torch.compile, which this run does not use (compile: off, " \
               f"or auto on a run under {COMPILE_MIN_STEPS} steps)"
    if checkpointing:
        return "gradient checkpointing re-runs the blocks inside the backward, which CUDA graphs cannot " \
               "replay (set gradient_checkpointing: false where memory allows)"
    return None
