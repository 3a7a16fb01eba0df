"""The tests' named strict bounds (tests/strict_tolerances.py) stay stricter than the tolerance table
entry they replace: a bound that became looser than the table would be a loosened check."""

from __future__ import annotations

import pytest
from strict_tolerances import STRICTER_THAN

from normonnx.verify import tolerance


@pytest.mark.parametrize("name, value, dtype, field", STRICTER_THAN, ids=[s[0] for s in STRICTER_THAN])
def test_named_bound_is_stricter_than_the_table(name, value, dtype, field):
    assert 0 < value < getattr(tolerance(dtype), field), (name, value, tolerance(dtype))
