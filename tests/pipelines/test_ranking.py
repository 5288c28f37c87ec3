"""Ranker training rows: one labelled query per user and cut-off, no leakage, bounded sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.evaluate import split_last
from pipelines.ingest import ingest
from pipelines.nightly import RunConfig
from pipelines.ranking import SamplingConfig, draw_users, sample_rows
from pipelines.recommend.runner import execute
from pipelines.recommend.stages import plan
from pipelines.recommend.tables import read_table
from tests.conftest import tiny_config_dict


def run_stages(cfg: RunConfig, folder: Path) -> None:
    """Every planned stage over `folder` (no publish, so the cut-off tables stay readable)."""
    p = plan(cfg)
    for stage in p.stages:
        execute(p, stage, folder, cfg)


def test_two_cutoffs_label_successive_history_tails(tmp_path: Path) -> None:
    raw = tiny_config_dict(tmp_path)
    raw["output"] = {"root": str(tmp_path / "out"), "cache": False}
    cfg = RunConfig.from_dict(raw)
    run_stages(cfg, tmp_path / "run")
    data = ingest(cfg.source)
    first = split_last(data.interactions, cfg.ranker.label_split)
    second = split_last(first.train, cfg.ranker.label_split)
    for name, split in (("h1", first), ("h2", second)):
        rows = pl.from_arrow(read_table(tmp_path / "run", f"{name}/train_rows"))
        assert isinstance(rows, pl.DataFrame)
        target = pl.from_arrow(split.test.select(["user_id", "item_id"]))
        positives = rows.filter(pl.col("label") == 1).select(["user_id", "item_id"])
        assert positives.height > 0
        assert positives.join(target, on=["user_id", "item_id"], how="anti").height == 0
        # Candidates never include what the features' history already has.
        seen = pl.from_arrow(split.train.select(["user_id", "item_id"]))
        assert rows.join(seen, on=["user_id", "item_id"], how="semi").height == 0


def planted(n_users: int = 40, n_items: int = 300, seed: int = 0) -> pl.DataFrame:
    """Candidates per user with 0-3 planted positives and a best rank per source."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pos = set(rng.choice(n_items, size=u % 4, replace=False).tolist())
        for i in range(n_items):
            rows.append((f"u{u:03d}", f"i{i:04d}", int(i in pos), int(rng.integers(1, 200)),
                         None if i % 3 else int(rng.integers(1, 100))))
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String,
                                      "label": pl.Int8, "als_rank": pl.Int32,
                                      "popular_rank": pl.Int32}, orient="row")


def test_sampling_keeps_every_positive_and_bounded_negatives() -> None:
    frame = planted()
    cfg = SamplingConfig(hard_negatives=10, random_negatives=15)
    out = sample_rows(frame, cfg, seed=0)
    with_pos = frame.group_by("user_id").agg(pl.col("label").sum().alias("p")).filter(
        pl.col("p") > 0)
    # Queries without a positive are gone; every positive is kept.
    assert set(out["user_id"].unique()) == set(with_pos["user_id"])
    assert out["label"].sum() == frame["label"].sum()
    per_query = out.group_by("user_id").agg((pl.col("label") == 0).sum().alias("neg"))
    assert per_query["neg"].max() == 25
    # The hard negatives are each query's best-ranked ones by any source.
    best = frame.with_columns(pl.min_horizontal("als_rank", "popular_rank").alias("b"))
    for user in with_pos["user_id"].head(5):
        neg = best.filter((pl.col("user_id") == user) & (pl.col("label") == 0)).sort(
            ["b", "item_id"])
        kept = set(out.filter(pl.col("user_id") == user)["item_id"])
        assert set(neg["item_id"].head(10)) <= kept


def test_sampling_does_not_depend_on_row_order_or_sharding() -> None:
    frame = planted(seed=3)
    cfg = SamplingConfig(hard_negatives=5, random_negatives=20)
    whole = sample_rows(frame, cfg, seed=7).sort(["user_id", "item_id"])
    shuffled = sample_rows(frame.sample(fraction=1.0, shuffle=True, seed=1), cfg, seed=7)
    users = frame["user_id"].unique().sort()
    shards = [sample_rows(frame.filter(pl.col("user_id").is_in(part.implode())), cfg, seed=7)
              for part in (users.head(13), users.slice(13))]
    assert shuffled.sort(["user_id", "item_id"]).equals(whole)
    assert pl.concat(shards).sort(["user_id", "item_id"]).equals(whole)
    other = sample_rows(frame, cfg, seed=8).sort(["user_id", "item_id"])
    assert not other.equals(whole)  # the seed matters


@pytest.mark.parametrize("enabled", [True, False])
def test_sampling_off_keeps_every_row_of_queries_with_a_positive(enabled: bool) -> None:
    frame = planted(n_users=8, n_items=50)
    out = sample_rows(frame, SamplingConfig(enabled=enabled, hard_negatives=1,
                                            random_negatives=1), seed=0)
    n_pos_users = frame.filter(pl.col("label") == 1)["user_id"].n_unique()
    assert out.height == (n_pos_users * 50 if not enabled else out.height)
    if enabled:
        assert out.height < n_pos_users * 50


def test_drawn_training_users_are_seeded_and_order_free() -> None:
    users = pl.Series("user_id", [f"u{i}" for i in range(200)] * 2)
    picked = draw_users(users, 30, seed=3)
    assert picked.len() == 30 and picked.n_unique() == 30
    assert set(picked) <= set(users)
    assert draw_users(users.reverse(), 30, seed=3).equals(picked)
    assert not draw_users(users, 30, seed=4).equals(picked)
    assert draw_users(users, 500, seed=3).len() == 200
