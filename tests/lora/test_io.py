"""The safetensors writer: canonical (sorted) headers, streamed data, safetensors-readable."""

import pytest
import torch
from safetensors.torch import load_file

from charfw.lora.io import canonical_safetensors, write_safetensors


@pytest.mark.parametrize("comment", ["ascii only", "非ASCII: ことば"])
def test_written_file_is_the_canonical_bytes(tmp_path, comment):
    tensors = {"b.lora_up.weight": torch.randn(3, 4).half(), "a.alpha": torch.tensor(2.0),
               "c.idx": torch.arange(5), "a.lora_down.weight": torch.randn(4, 3, 1, 1).bfloat16()}
    metadata = {"ss_training_comment": comment, "z": "1", "a": "2"}
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors, metadata)
    data = path.read_bytes()
    assert data == canonical_safetensors(tensors, metadata)
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].decode().rstrip(" ")
    assert header.index('"__metadata__"') < header.index('"a.alpha"') < header.index('"c.idx"')  # sorted keys
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    reordered = dict(reversed(list(tensors.items())))
    write_safetensors(tmp_path / "y.safetensors", reordered, dict(reversed(list(metadata.items()))))
    assert (tmp_path / "y.safetensors").read_bytes() == data   # same content, same bytes
