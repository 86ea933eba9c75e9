"""One torch thread in these tests: on a shared 2-core machine, two threads per process
oversubscribe the cores and a 0.07 s training step can take seconds."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
