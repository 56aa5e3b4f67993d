"""Test-session setup: the method registry is filled once, as the CLI and the workflow do at their top; and the
fixtures several test modules share."""

import pytest
import torch

from mpqbench.plugins import discover

discover()


@pytest.fixture
def one_thread():
    """One intra-op thread: bitwise-repeatable tiny runs, and no oversubscription of the shared cores.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
