"""Every built-in method gives the table it gave before the state refactor (issue [20]), bit for bit.

``tests/golden/golden.parquet`` holds the tables of every built-in method (and variants that
thread optimizer state: AdamW, Nesterov with weight decay, backup workers) on SimPy and
stacked in float32 and float64, ``finals.json`` digests of the final parameters. Regenerate them with
``python tests/golden/make_golden.py`` only for a change meant to change numbers.
"""
import json
from pathlib import Path

import pandas as pd
import pytest

from harness.experiment import simulate
from tests.golden.make_golden import cases, digest, frame

HERE = Path(__file__).resolve().parent / "golden"
CASES = dict(cases())
# the runs pinned before the refactor; methods added since have their own tests (and join the
# golden file when it is regenerated for a change meant to change numbers)
PINNED = sorted(json.loads((HERE / "finals.json").read_text()))


@pytest.fixture(scope="module")
def golden():
    return pd.read_parquet(HERE / "golden.parquet"), json.loads((HERE / "finals.json").read_text())


@pytest.mark.parametrize("name", PINNED)
def test_table_and_parameters_unchanged(name, golden):
    tables, finals = golden
    assert name in CASES, f"golden run {name} is no longer produced by make_golden.cases()"
    df, x = simulate(CASES[name])
    got = frame(df)
    want = tables[tables["case"] == name].drop(columns=["case"]).reset_index(drop=True)
    want = want.dropna(axis=1, how="all")  # columns other methods have
    assert set(want.columns) <= set(got.columns), f"columns lost: {set(want.columns) - set(got.columns)}"
    pd.testing.assert_frame_equal(got[want.columns], want, check_exact=True, check_dtype=False)
    assert digest(x) == finals[name]
