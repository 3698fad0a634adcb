"""Fixtures for the trainer tests: a tiny drawn dataset and the builtin tiny SD1.5 model, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from train_data import make_dataset

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def offline_cache(tmp_path_factory):
    """Tiny model cache for the session (written once), nothing downloaded, one thread (CPU may be shared)."""
    old_cache, old_threads = os.environ.get("CHARFW_CACHE"), torch.get_num_threads()
    os.environ["CHARFW_CACHE"] = str(tmp_path_factory.mktemp("charfw-cache"))
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_cache is None:
        os.environ.pop("CHARFW_CACHE", None)
    else:
        os.environ["CHARFW_CACHE"] = old_cache


@pytest.fixture(scope="session")
def dataset_toml(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny():
    """builtin:tiny-sd15, shared: tests that inject adapters must restore() them."""
    from modelutil import load_sd15
    return load_sd15("builtin:tiny-sd15")
