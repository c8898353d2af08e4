import sys
from pathlib import Path

import pytest

# Test helpers such as the independent spec reader live beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine are fastest (and steadiest) on one thread; for a module, with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``. torch is imported here only, so the core-install
    tests (no torch) can share this conftest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
