"""Outputs appear whole or not at all."""

import os

import pytest

from charfw.fsutil import FILE_MODE, atomic_path, write_text


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but partial")
            raise RuntimeError
    assert target.read_text() == "old"


def test_mode_follows_umask(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == FILE_MODE


def test_a_library_error_that_is_a_full_disk_becomes_one_os_error(tmp_path):
    """safetensors reports ENOSPC as its own SafetensorError: it reaches the user as the OS error, on the
    file asked for, with nothing partial left."""
    import errno

    import safetensors

    from charfw.errors import os_error_message

    target = tmp_path / "out.safetensors"
    with pytest.raises(OSError) as exc:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
    assert os_error_message(exc.value) == f"{target}: No space left on device (the disk is full: free some space and rerun)"
    assert list(tmp_path.iterdir()) == []


