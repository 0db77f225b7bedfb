"""Shared fixtures: tiny models and small synthetic inputs, CPU only."""

from __future__ import annotations

import pytest
import torch

# One thread per test process: `make test` runs two processes (pytest -n 2) on two cores,
# and oversubscribed threads make tiny convolutions many times slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
