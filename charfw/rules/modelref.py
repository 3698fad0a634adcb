"""How a workspace names its base model: a built-in test model or a checkpoint file.

Kept free of torch so loading a workspace, `doit list` and `charfw check` stay fast.
"""

from __future__ import annotations

from pathlib import Path

from charfw.families import FAMILIES

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = tuple(f.builtin_model for f in FAMILIES.values())  # charfw.models.tiny writes them


def is_builtin(ref: str | Path | None) -> bool:
    return isinstance(ref, str) and ref.startswith(BUILTIN_PREFIX)


def builtin_name(ref: str) -> str:
    """'builtin:tiny-sd15' -> 'tiny-sd15'."""
    return ref[len(BUILTIN_PREFIX):]


def resolve_model_ref(value: str, root: Path) -> str:
    """A built-in name as it is; a file path made absolute against the workspace root."""
    return value if is_builtin(value) else str((root / Path(value).expanduser()).resolve())
