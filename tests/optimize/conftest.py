"""Per-test random data for the optimizer tests: each test draws from its own generators, seeded
from its node id, so its data do not depend on which tests were collected or ran before it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from optimize_helpers import _TEST_RNG, seed_for


@pytest.fixture(autouse=True)
def _rng_per_test(request):
    seed = seed_for(request.node.nodeid)
    _TEST_RNG.append(np.random.default_rng(seed))  # optimize_helpers.rng()
    # torch's global generator too: module initialisers and torch.randn in these tests draw from it
    torch.manual_seed(seed)
    yield
    _TEST_RNG.pop()
