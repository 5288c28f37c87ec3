"""Candidate sources on hand-made examples: the p_i definitions, exclusions and ranks."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.candidates import CandidatesConfig, generate
from pipelines.embeddings import factors_schema
from pipelines.neighbours import neighbours_schema

HISTORY = {"u1": ["i1", "i2"], "u2": ["i1", "i3", "i4"], "u3": ["i2", "i3"], "u4": ["i5"]}


def interactions() -> pa.Table:
    pairs = [(u, i) for u, items in HISTORY.items() for i in items]
    return pa.table({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                     "weight": [1.0] * len(pairs),
                     "ts": pa.array([None] * len(pairs), pa.timestamp("us"))})


def items(authors: dict[str, str] | None = None) -> pa.Table:
    ids = ["i1", "i2", "i3", "i4", "i5"]
    authors = authors or {i: f"a_{i}" for i in ids}
    return pa.table({"item_id": ids, "title": ids, "author_id": [authors[i] for i in ids]})


def nbrs(key: str, rows: list[tuple[str, str, float]]) -> pa.Table:
    return pa.table({key: [r[0] for r in rows], "neighbour_id": [r[1] for r in rows],
                     "weight": [r[2] for r in rows], "support": [3] * len(rows)},
                    schema=neighbours_schema(key))


def no_factors(key: str) -> pa.Table:
    return factors_schema(key, 1).empty_table()


def only(source: str, n: int = 10) -> CandidatesConfig:
    sizes = {s: 0 for s in ("user_pearson", "item_pearson", "als", "popular", "author", "ease")}
    return CandidatesConfig(**{**sizes, source: n})


def rows_for(table: pa.Table, user: str, source: str) -> dict[str, tuple[float, int]]:
    out = {}
    for r in table.to_pylist():
        if r["user_id"] == user and r[f"{source}_rank"] is not None:
            out[r["item_id"]] = (r[f"{source}_score"], r[f"{source}_rank"])
    return out


def test_user_pearson_share_of_neighbours_who_rated_the_item() -> None:
    un = nbrs("user_id", [("u1", "u2", 0.5), ("u1", "u3", 0.9)])
    out = generate(interactions(), items(), un, nbrs("item_id", []), no_factors("user_id"),
                   no_factors("item_id"), only("user_pearson"))
    got = rows_for(out, "u1", "user_pearson")
    # i3: rated by both neighbours -> 2/2; i4: by u2 only -> 1/2; i1, i2 are u1's own.
    assert got == {"i3": (1.0, 1), "i4": (0.5, 2)}


def test_item_pearson_max_weight_over_the_users_items() -> None:
    inb = nbrs("item_id", [("i1", "i3", 0.4), ("i1", "i5", 0.7), ("i2", "i3", 0.8),
                           ("i2", "i1", 0.9)])
    out = generate(interactions(), items(), nbrs("user_id", []), inb, no_factors("user_id"),
                   no_factors("item_id"), only("item_pearson"))
    got = rows_for(out, "u1", "item_pearson")
    assert got == {"i3": (0.8, 1), "i5": (0.7, 2)}  # i1 is u1's own: excluded


def test_popular_excludes_own_items_and_breaks_ties_by_id() -> None:
    out = generate(interactions(), items(), nbrs("user_id", []), nbrs("item_id", []),
                   no_factors("user_id"), no_factors("item_id"), only("popular"))
    got = rows_for(out, "u4", "popular")
    # counts: i1 2, i2 2, i3 2, i4 1 -> ties among i1..i3 go to the lower id.
    assert [k for k, _ in sorted(got.items(), key=lambda kv: kv[1][1])] == ["i1", "i2", "i3",
                                                                            "i4"]


def test_same_author_scores_by_share_of_history() -> None:
    authors = {"i1": "x", "i2": "y", "i3": "x", "i4": "z", "i5": "y"}
    out = generate(interactions(), items(authors), nbrs("user_id", []), nbrs("item_id", []),
                   no_factors("user_id"), no_factors("item_id"), only("author"))
    got = rows_for(out, "u1", "author")
    assert got == {"i3": (0.5, 1), "i5": (0.5, 2)}  # ties: both 1/2, by popularity then id


@pytest.mark.parametrize("block", [1, 7, 1000])
def test_union_counts_sources_and_block_size_does_not_matter(block: int) -> None:
    un = nbrs("user_id", [("u1", "u2", 0.5), ("u1", "u3", 0.9)])
    inb = nbrs("item_id", [("i1", "i3", 0.4), ("i1", "i5", 0.7)])
    cfg = CandidatesConfig(als=0, author=0, ease=0, popular=2, block_elements=block)
    out = generate(interactions(), items(), un, inb, no_factors("user_id"),
                   no_factors("item_id"), cfg)
    u1 = {r["item_id"]: r["n_sources"] for r in out.to_pylist() if r["user_id"] == "u1"}
    assert u1 == {"i3": 3, "i4": 2, "i5": 1}  # popular top-2 of unseen: i3, then i4 (id tie)
    seen = {(u, i) for u, its in HISTORY.items() for i in its}
    assert not seen & set(zip(out["user_id"].to_pylist(), out["item_id"].to_pylist(),
                              strict=True))
