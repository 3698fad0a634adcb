"""The LoRA file toolkit: read/write kohya LoRA files, bake block weights, SVD-compress.

Functions the build calls (all write their output atomically, raise CharfwError on bad input):

    merge_file(src, dst, weights, presets=None, family=None) -> dict
        weights: preset name | "v,v,..." (26/17 or SDXL 20/12) | "NAME=v,..." | list | {block: w}
        presets: {name: weights}, user presets shadowing built-ins;
        family: a charfw.families.Family or its name, None = detected from the module names
    compress_file(src, dst, options=CompressOptions(), *, device="cpu", progress=False, family=None) -> dict
        options: charfw.lora.options.CompressOptions (method, value, max_rank, dtype, ...);
        CompressOptions.of(method="sv_fro", value=0.9) raises CharfwError on bad values
    inspect_file(src, family=None) -> dict          (JSON-ready per-block summary)
    load_lora(path) -> LoraFile; save_lora(path, lora_or_modules, metadata=None)

Module names for trainers: keys.lora_module_specs(family, conv3x3) -> {name: ModuleSpec}.
"""

import importlib

# Lazy, so `charfw` commands that never touch LoRA files do not pay for importing torch.
_EXPORTS = {"compress_file": "compress", "compress_suffix": "compress", "inspect_file": "inspect",
            "LoraFile": "io", "LoraReader": "io", "load_lora": "io", "save_lora": "io",
            "merge_file": "merge", "merge_suffix": "merge"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"charfw.lora.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
