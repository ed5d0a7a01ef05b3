import pandas as pd
import pytest

from harness.experiment import simulate
from tests.helpers import small


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_same_seed_same_table_different_seed_differs(backend):
    a, _ = simulate(small("dpsgd", backend=backend, steps=12))
    b, _ = simulate(small("dpsgd", backend=backend, steps=12))
    pd.testing.assert_frame_equal(a, b)
    c, _ = simulate(small("dpsgd", backend=backend, steps=12, seed=4))
    assert not a.time_s.equals(c.time_s)
    assert not a.train_loss.equals(c.train_loss)
