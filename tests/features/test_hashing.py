"""Seeded key hashes: a pure-Python oracle, pinned values, layout independence."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.hashing import key_hash

M = (1 << 64) - 1


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def oracle(key: tuple[str, ...], seed: int) -> int:
    h = 0xCBF29CE484222325 ^ mix(seed)
    for b in "\x1f".join(key).encode():
        h = ((h ^ b) * 0x100000001B3) & M
    return mix(h)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), min_size=1,
                max_size=30),
       st.integers(0, 2**32))
def test_matches_the_oracle(keys: list[tuple[str, str]], seed: int) -> None:
    users = pa.array([u for u, _ in keys])
    items = pa.array([i for _, i in keys])
    got = key_hash([users, items], seed)
    assert got.tolist() == [oracle(k, seed) for k in keys]


def test_pinned_values() -> None:
    # Fixed forever: training samples (and so the recommendations) depend on them.
    got = key_hash([pa.array(["u1", "42"]), pa.array(["i2", "7"])], 0).tolist()
    assert got == [oracle(("u1", "i2"), 0), oracle(("42", "7"), 0)]
    assert got == [10242395585295615521, 8914346340846591703]


def test_layout_does_not_matter() -> None:
    users = ["a", "bb", "ccc", "dddd", "é"] * 3
    items = [str(i) for i in range(15)]
    base = key_hash([pa.array(users), pa.array(items)], 5)
    sliced = pa.array(["x"] + users)[1:]
    chunked = pa.chunked_array([pa.array(items[:4]), pa.array(items[4:])])
    series = pl.Series(users)  # polars' own (string view) layout
    assert key_hash([sliced, chunked], 5).tolist() == base.tolist()
    assert key_hash([series, pl.Series(items)], 5).tolist() == base.tolist()
    assert key_hash([pa.array(users, pa.large_string()), pa.array(items)], 5).tolist() \
        == base.tolist()
    assert key_hash([pa.array(users), pa.array(items)], 6).tolist() != base.tolist()
    # Column boundaries are part of the key.
    assert key_hash([pa.array(["ab"]), pa.array(["c"])], 0)[0] \
        != key_hash([pa.array(["a"]), pa.array(["bc"])], 0)[0]


def test_rejects_nulls_and_ragged_columns() -> None:
    with pytest.raises(ValueError, match="nulls"):
        key_hash([pa.array(["a", None])], 0)
    with pytest.raises(ValueError, match="length"):
        key_hash([pa.array(["a", "b"]), pa.array(["c"])], 0)
