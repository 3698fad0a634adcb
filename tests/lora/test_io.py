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


@pytest.mark.parametrize("comment", ["ascii only", "非ASCII: ことば"])
@pytest.mark.parametrize("hashing", ["in order", "read back", "adopted", "adopted out of order"])
def test_streamed_file_is_what_write_safetensors_writes(tmp_path, comment, hashing):
    """Tensors put one by one in any order, the hashes fed as they come, fed before the header was known
    (adopted), or read back from the file: the same bytes as the in-memory writer with sd-scripts'
    hashes, mixed dtypes and a 1 MiB+ file (so the legacy hash's window is in the data)."""
    import random

    from charfw.lora.io import StreamedLora
    from charfw.lora.metadata import HashStream, layout_order, tensor_bytes, with_hashes

    gen = torch.Generator().manual_seed(3)
    tensors = {"b.lora_up.weight": torch.randn(300, 600, generator=gen).half(), "a.alpha": torch.tensor(2.0),
               "c.idx": torch.arange(5), "a.lora_down.weight": torch.randn(400, 3, 1, 1, generator=gen).bfloat16(),
               "d.lora_down.weight": torch.randn(700, 500, generator=gen).half()}
    metadata = {"ss_training_comment": comment, "z": "1", "a": "2"}
    write_safetensors(tmp_path / "ref.safetensors", tensors, with_hashes(tensors, metadata))
    entries = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    early = layout_order(entries) if hashing == "adopted" else list(tensors)
    stream = HashStream()
    for name in early:
        stream.update(tensor_bytes(tensors[name]))
    out = StreamedLora(tmp_path / "s.safetensors", entries, metadata)
    names = list(tensors)
    random.Random(0).shuffle(names)
    for name in names:
        out.put(name, tensors[name])
    if hashing.startswith("adopted"):
        out.adopt(stream, early)
    else:
        for name in (out.order if hashing == "in order" else names):
            out.hash_in_order(name, tensors[name])
    assert out.hashed_all == (hashing in ("in order", "adopted"))
    out.finish(metadata)
    assert (tmp_path / "s.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


@pytest.mark.parametrize("error", ["ENOSPC", "EOPNOTSUPP"])
def test_streamed_file_reserves_its_blocks_first(tmp_path, monkeypatch, error):
    """The file's blocks are reserved before anything is written: a full disk fails there, as the OS error
    naming the file asked for, with nothing left behind; a filesystem that cannot reserve gets the same
    file through ftruncate."""
    import errno
    import os

    from charfw.fsutil import atomic_path
    from charfw.lora.io import StreamedLora
    from charfw.lora.metadata import with_hashes

    code = getattr(errno, error)

    def refuse(fd, offset, size):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    tensors = {"a.lora_down.weight": torch.ones(4, 8).half(), "a.lora_up.weight": torch.ones(8, 4).half()}
    target = tmp_path / "out.safetensors"
    write_safetensors(tmp_path / "ref.safetensors", tensors, with_hashes(tensors, {}))

    def stream():
        with atomic_path(target) as tmp:
            out = StreamedLora(tmp, {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, {})
            for k, t in tensors.items():
                out.put(k, t)
            out.finish({})

    if error == "ENOSPC":
        with pytest.raises(OSError) as exc:
            stream()
        assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
        assert list(tmp_path.iterdir()) == [tmp_path / "ref.safetensors"]
    else:
        stream()
        assert target.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
