"""Fixtures for charfw.models tests: offline by construction, one tiny model per session."""

from __future__ import annotations

import os
import socket

# Before anything imports huggingface_hub: any hub call would fail instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail loudly if anything in these tests opens a network connection."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("charfw-cache")


@pytest.fixture(scope="session")
def tiny_path(cache_dir):
    from charfw.models import builtin_path
    return builtin_path("tiny-sd15", cache_dir)


@pytest.fixture(scope="session")
def tiny_tensors(tiny_path):
    from safetensors.torch import load_file
    return load_file(str(tiny_path))


@pytest.fixture(scope="session")
def tiny(cache_dir, tiny_path):
    from modelutil import load_sd15
    return load_sd15("builtin:tiny-sd15", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_xl_path(cache_dir):
    from charfw.models import builtin_path
    return builtin_path("tiny-sdxl", cache_dir)


@pytest.fixture(scope="session")
def tiny_xl_tensors(tiny_xl_path):
    from safetensors.torch import load_file
    return load_file(str(tiny_xl_path))


@pytest.fixture(scope="session")
def tiny_xl(tiny_xl_path):
    from modelutil import load_sdxl
    return load_sdxl(tiny_xl_path)
