"""Shared fixtures: tiny models and small synthetic inputs, CPU only."""

from __future__ import annotations

import pytest
import torch

# One thread per test process: `make test` runs two processes (pytest -n 2) on two cores,
# and oversubscribed threads make tiny convolutions many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for every test module, restored after it: a test that changes
    the count (or code under test that does) cannot slow the modules after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
