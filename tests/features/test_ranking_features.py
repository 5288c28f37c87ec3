"""Ranking features against oracles: popularity at user time, ALS dots, factor rows."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from features.ranking import FactorIndex, als_dot, history_stats, popularity_at_user_time
from pipelines.embeddings import factors_schema


def test_popularity_at_user_time_matches_direct_count() -> None:
    t0 = datetime(2020, 1, 1)
    events = [("a", "x", 0), ("b", "x", 10), ("c", "x", 40), ("a", "y", 5), ("b", "z", 39),
              ("c", "y", 60)]
    hist = pl.DataFrame({"user_id": [e[0] for e in events], "item_id": [e[1] for e in events],
                         "ts": [t0 + timedelta(days=e[2]) for e in events]})
    pairs = pl.DataFrame({"user_id": ["a", "b", "c", "a"], "item_id": ["z", "y", "z", "w"]})
    table = hist.with_columns(pl.lit(1.0).alias("weight")).to_arrow()
    items = pa.table({"item_id": ["w", "x", "y", "z"], "author_id": ["a"] * 4})
    stats = history_stats(table, items, factors_schema("user_id", 1).empty_table(),
                          factors_schema("item_id", 1).empty_table(), recent_days=30)
    out = popularity_at_user_time(pairs, hist, stats)
    # user a's last day 5: z has none by then; b's last day 39: y has 1 (day 5), 0 in 30 days
    # before; c's last day 60: z has 1 (day 39, within 30 days); w is unknown.
    assert out["item_pop_at_user_time"].to_list() == [0.0, 1.0, 1.0, 0.0]
    assert out["item_pop_recent_at_user_time"].to_list() == [0.0, 0.0, 1.0, 0.0]
    assert out["item_age_at_user_time"].to_list()[1:3] == [34.0, 21.0]


def test_als_dot_equals_a_numpy_oracle_and_is_nan_without_factors() -> None:
    rng = np.random.default_rng(3)
    p, q = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(6, 7)).astype(np.float32)
    users = FactorIndex.of(pa.table({"user_id": [f"u{i}" for i in range(5)],
                                     "factors": pa.array(list(p), pa.list_(pa.float32()))}),
                           "user_id")
    items = FactorIndex.of(pa.table({"item_id": [f"i{j}" for j in range(6)],
                                     "factors": pa.array(list(q), pa.list_(pa.float32()))}),
                           "item_id")
    u = rng.integers(0, 5, size=200)
    i = rng.integers(0, 6, size=200)
    pairs = pl.DataFrame({"user_id": [f"u{x}" for x in u] + ["nobody", "u1"],
                          "item_id": [f"i{x}" for x in i] + ["i0", "gone"]})
    got = als_dot(pairs, users, items)
    want = np.einsum("ij,ij->i", p[u].astype(np.float64), q[i].astype(np.float64))
    np.testing.assert_allclose(got[:200], want, rtol=1e-12, atol=1e-12)
    assert np.isnan(got[200:]).all()


@settings(max_examples=60, deadline=None)
@given(known=st.lists(st.text(min_size=0, max_size=4), unique=True, max_size=30),
       asked=st.lists(st.text(min_size=0, max_size=4), max_size=40))
def test_factor_rows_equal_a_join_with_the_index(known: list[str], asked: list[str]) -> None:
    # Rows by binary search in the sorted ids are the rows a left join finds, nulls included.
    rng = np.random.default_rng(len(known))
    table = pa.table({"user_id": pa.array(known, pa.string()),
                      "factors": pa.array(list(rng.normal(size=(len(known), 3)).astype(
                          np.float32)), pa.list_(pa.float32(), 3))})
    index = FactorIndex.of(table, "user_id")
    ids = pl.Series("user_id", asked, dtype=pl.String)
    want = ids.to_frame().join(index.index, on="user_id", how="left", maintain_order="left")
    got = index.rows(ids)
    assert got.dtype == pl.Int64
    assert got.to_list() == want["_row"].to_list()
