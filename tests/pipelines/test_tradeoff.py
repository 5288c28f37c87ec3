"""The trade-off curve: uncapped equals plain top-k, the cap bounds every list, costs are known."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines.evaluate import evaluate_lists, top_k_from_scores
from pipelines.tradeoff import tradeoff_curve, tradeoff_markdown


def case(fillers: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    # User u: the four best items are by author x and items 1 and 3 are relevant; user v has
    # distinct authors only. Item ids are numeric, so ties go to the lower number. `fillers`
    # adds low-scored items of distinct authors for u, so every cap can be met.
    scored_rows = [("u", str(i), 10.0 - i) for i in range(1, 9)] + [
        ("v", str(i), float(i)) for i in range(9, 13)] + [
        ("u", str(i), -1.0) for i in range(13, 13 + fillers)]
    scored = pa.table({"user_id": [r[0] for r in scored_rows],
                       "item_id": [r[1] for r in scored_rows],
                       "score": pa.array([r[2] for r in scored_rows], pa.float64()),
                       "sources": [["als"]] * len(scored_rows)})
    authors = ["x", "x", "x", "x", "y", "z", "w", "q"] + ["a", "b", "c", "d"] + [
        f"f{i}" for i in range(fillers)]
    items = pa.table({"item_id": [str(i) for i in range(1, 13 + fillers)],
                      "title": ["t"] * (12 + fillers),
                      "author_id": authors})
    test = pa.table({"user_id": ["u", "u", "v"], "item_id": ["1", "3", "12"]})
    return scored, items, test


def test_uncapped_row_is_plain_top_k_and_caps_bound_lists() -> None:
    scored, items, test = case(fillers=20)
    table = tradeoff_curve(scored, test, items, n_items=32)
    rows = {r["max_per_author"]: r for r in table.to_pylist()}
    assert list(rows) == [1, 2, 3, None]
    plain = evaluate_lists(top_k_from_scores(scored, 20), test, items, 32)
    assert rows[None]["ndcg_at_10"] == pytest.approx(plain.ndcg_at_10)
    assert rows[None]["worst_max_per_author_at_10"] == 4 and rows[None]["ndcg_change"] == 0.0
    for cap in (1, 2, 3):
        assert rows[cap]["worst_max_per_author_at_10"] <= cap


def test_known_costs() -> None:
    scored, items, test = case()
    rows = {r["max_per_author"]: r for r in tradeoff_curve(scored, test, items, 12).to_pylist()}
    ideal2 = 1 + 1 / 1.584962500721156  # two relevant items: 1/log2(2) + 1/log2(3)
    # Uncapped: u hits ranks 1 and 3; v's item 12 has the best score, rank 1.
    ndcg_u = (1 + 0.5) / ideal2
    assert rows[None]["ndcg_at_10"] == pytest.approx((ndcg_u + 1.0) / 2)
    # Cap 2: u keeps items 1, 2, then 5, 6, ...; item 3 is deferred past the other authors.
    # u's list: 1, 2, 5, 6, 7, 8, 3, 4 (rank 7 for item 3).
    ndcg_u2 = (1 + 1 / 3.0) / ideal2  # log2(8) = 3
    assert rows[2]["ndcg_at_10"] == pytest.approx((ndcg_u2 + 1.0) / 2)
    assert rows[3]["ndcg_at_10"] == pytest.approx(rows[None]["ndcg_at_10"])
    assert rows[2]["ndcg_change"] == pytest.approx(rows[2]["ndcg_at_10"]
                                                   / rows[None]["ndcg_at_10"] - 1)


def test_penalties_add_rows_and_markdown_lists_them() -> None:
    scored, items, test = case()
    table = tradeoff_curve(scored, test, items, 12, caps=(2, None), penalties=[0.0, 2.0])
    assert [(r["max_per_author"], r["author_penalty"]) for r in table.to_pylist()] == [
        (2, 0.0), (2, 2.0), (None, 0.0)]
    text = tradeoff_markdown(table)
    assert "| uncapped | 0 |" in text and "| 2 | 2 |" in text
