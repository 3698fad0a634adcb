import pytest
from wsutil import copy_example


@pytest.fixture
def workspace(tmp_path):
    """A private copy of the example workspace."""
    return copy_example(tmp_path)
