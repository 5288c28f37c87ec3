"""The run report's before-diversity figure: per-shard top-n and counts equal a global sort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from pipelines.nightly import RunConfig, run_nightly
from pipelines.recommend.report import CONCENTRATION, add_counts, author_concentration, top_by_score
from tests.conftest import tiny_config_dict


def oracle_top(frame: pl.DataFrame, n: int) -> pl.DataFrame:
    return (frame.sort(["user_id", "score", "item_id"], descending=[False, True, False])
            .group_by("user_id", maintain_order=True).head(n).select("user_id", "item_id"))


def test_top_by_score_equals_a_global_sort() -> None:
    rng = np.random.default_rng(0)
    n = 600
    frame = pl.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, 21, n)],
        "item_id": [f"i{j}" for j in rng.permutation(n)],
        "score": rng.integers(0, 5, n).astype(float)})  # ties, broken by item id
    want = oracle_top(frame, 4).sort(["user_id", "item_id"])
    for rows in (frame, frame.sort(["user_id", "item_id"])):  # any order
        assert top_by_score(rows, 4).sort(["user_id", "item_id"]).equals(want)
    # The score stage's order (users together, items in id order), rows as the tie order.
    staged = frame.sort(["user_id", "item_id"])
    assert top_by_score(staged, 4, in_item_order=True).sort(["user_id", "item_id"]).equals(
        want)
    one = frame.filter(pl.col("user_id") == "u3").sort("item_id")
    assert top_by_score(one, 4).sort(["user_id", "item_id"]).equals(
        oracle_top(one, 4).sort(["user_id", "item_id"]))


def test_top_by_score_orders_numeric_ids_numerically() -> None:
    frame = pl.DataFrame({"user_id": ["u"] * 3, "item_id": ["10", "9", "100"],
                          "score": [1.0, 1.0, 1.0]})
    assert top_by_score(frame, 2)["item_id"].to_list() == ["9", "10"]
    in_order = frame.sort(pl.col("item_id").cast(pl.Int64))
    assert top_by_score(in_order, 2, in_item_order=True)["item_id"].to_list() == ["9", "10"]
    assert top_by_score(frame.clear(), 4).height == 0


def test_shard_counts_add_up_to_the_whole_table() -> None:
    lists = pl.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c"],
                          "item_id": ["1", "2", "3", "1", "4", "5"]})
    authors = pl.DataFrame({"item_id": ["1", "2", "3", "4", "5"],
                            "author_id": ["x", "x", "y", "z", None]})
    assert author_concentration(lists, authors) == {2: 1, 1: 2}
    halves = [author_concentration(lists.filter(pl.col("user_id") == u), authors)
              for u in ("a", "b", "c")]
    assert add_counts(halves) == {1: 2, 2: 1}


def test_a_nightly_publishes_the_before_diversity_counts_of_its_scored_table(
        tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    raw["shards"] = {"users": 7}  # several shards
    res = run_nightly(RunConfig.from_dict(raw))
    scored = pl.read_parquet(res.path / "scored.parquet")
    authors = pl.read_parquet(res.path / "items.parquet", columns=["item_id", "author_id"])
    n = RunConfig.from_dict(raw).diversify.n
    want = author_concentration(oracle_top(scored, n), authors)
    got = {int(k): v for k, v in json.loads((res.path / CONCENTRATION).read_text())[
        "before"].items()}
    assert got == want and sum(got.values()) == scored["user_id"].n_unique()
    assert (res.path / "report.html").stat().st_size > 0
    assert not list(res.path.rglob(".*.before.json"))
