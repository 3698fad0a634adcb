"""Regional compilation of the U-Net's transformer blocks, optionally replayed as CUDA graphs.

Each repeated transformer block is compiled on its own, not the whole U-Net: one compile per
block shape (seconds) instead of minutes for the graph, and the adapters' hooks are traced
with the block. Shapes are automatic-dynamic: a block that meets a second bucket size
recompiles once with symbolic sizes instead of once per size (and, past torch's recompile
limit, falling back to eager).

With CUDA graphs (torch.compile's "reduce-overhead" mode, CUDA graph trees) each block's
forward and backward are recorded once per input shape, so once per bucket, and replayed as
one launch each. A step marks its beginning (the trees may then reuse the previous step's
memory); sampling between steps runs the blocks eagerly (the trees' inference heuristics
refuse blocks that feed each other, pytorch/pytorch#152887). Anything that goes wrong inside
the graphs is recoverable: `drop_graphs` forgets them and the blocks run compiled without.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("charfw.train")

GRAPHS_MODE = "reduce-overhead"


class CompiledBlocks:
    def __init__(self, unet: torch.nn.Module):
        from diffusers.models.attention import BasicTransformerBlock

        self.blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
        self.graphs = False
        self._compile()
        log.info("compiled %d transformer blocks (torch.compile)", len(self.blocks))

    def _compile(self, **options) -> None:
        for block in self.blocks:
            block.compile(**options)   # replaces an earlier compile of the block

    def use_graphs(self) -> None:
        """Replay the blocks as CUDA graphs from the next call on (recorded at each shape's first use)."""
        self._compile(mode=GRAPHS_MODE)
        self.graphs = True
        log.info("CUDA graphs: the transformer blocks are recorded once per bucket shape and replayed")

    def drop_graphs(self, error: BaseException) -> None:
        """After a failure inside the graphs: forget them (and everything compiled), compile plainly."""
        log.warning("CUDA graphs failed (%s: %s); the step is retried with compiled blocks without graphs",
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        self._forget_graphs()
        self._compile()

    def _forget_graphs(self) -> None:
        torch._dynamo.reset()   # also frees the CUDA graph trees and their memory pool
        self.graphs = False

    def step_begin(self) -> None:
        """Under graphs, a training step begins: the previous step's graph outputs are no longer used."""
        torch.compiler.cudagraph_mark_step_begin()

    def eager(self):
        """A context in which the blocks run uncompiled (sampling between steps, under graphs)."""
        return torch.compiler.set_stance("force_eager") if self.graphs else contextlib.nullcontext()

    def undo(self) -> None:
        """The base model may be trained again (tests, benchmarks) with other adapters; a graphs' memory
        pool is freed for whatever this process trains next."""
        for block in self.blocks:
            block._compiled_call_impl = None
        if self.graphs:
            self._forget_graphs()
