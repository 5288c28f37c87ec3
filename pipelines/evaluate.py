"""Offline evaluation protocol: per-user temporal split, top-k metrics, side-by-side comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from features.columns import AUTHOR_ID, ITEM_ID, RANK, TS, USER_ID
from features.vocab import IdVocab


class SplitConfig(BaseModel):
    """The fixed hold-out rule, so figures compare across versions and libraries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_interactions: int = Field(10, ge=2)
    """Users with fewer interactions stay wholly in train."""
    test_fraction: float = Field(0.1, gt=0, lt=1)
    """The last max(1, floor(test_fraction * n)) interactions of a user are held out."""
    seed: int = 0
    """Seed of the random per-user hold-out used when the data has no time stamps."""


@dataclass(frozen=True)
class Split:
    """Train and test interactions, and how the split was made."""

    train: pa.Table
    test: pa.Table
    temporal: bool


def split_last(interactions: pa.Table, config: SplitConfig) -> Split:
    """Hold out each eligible user's last interactions by (timestamp, item id).

    Ties in time are common (bulk rating sessions), so the order is (ts, item id in natural id
    order). Without time stamps a seeded random 10% per user is held out instead. Test items
    never seen in train are dropped (no model can score them).
    """
    df = pl.from_arrow(interactions)
    assert isinstance(df, pl.DataFrame)
    vocab = IdVocab.from_ids(interactions.column(ITEM_ID))
    df = df.with_columns(pl.Series("_item_order", vocab.index(interactions.column(ITEM_ID))))
    temporal = df[TS].null_count() < df.height
    if temporal:
        df = df.sort([USER_ID, TS, "_item_order"])
    else:
        rng = np.random.default_rng(config.seed)
        df = df.sort([USER_ID, "_item_order"]).with_columns(
            pl.Series("_rand", rng.random(df.height))).sort([USER_ID, "_rand"])
    df = df.with_columns(
        pl.len().over(USER_ID).alias("_n"),
        pl.int_range(pl.len()).over(USER_ID).alias("_pos"),
    )
    n_test = pl.max_horizontal(pl.lit(1), (pl.col("_n") * config.test_fraction).floor())
    is_test = (pl.col("_n") >= config.min_interactions) & (
        pl.col("_pos") >= pl.col("_n") - n_test)
    df = df.with_columns(is_test.alias("_test"))
    cols = interactions.column_names
    train = df.filter(~pl.col("_test")).select(cols)
    test = df.filter(pl.col("_test")).select(cols)
    test = test.filter(pl.col(ITEM_ID).is_in(train[ITEM_ID].unique().implode()))
    return Split(train.to_arrow().cast(interactions.schema),
                 test.to_arrow().cast(interactions.schema), temporal)


@dataclass(frozen=True)
class Metrics:
    """Averages over evaluated users."""

    ndcg_at_10: float
    recall_at_20: float
    coverage_at_10: float
    distinct_authors_at_10: float
    max_per_author_at_10: float
    worst_max_per_author_at_10: int
    users: int

    def as_row(self, name: str) -> dict[str, object]:
        """One row of the evaluation table."""
        return {"model": name, **self.__dict__}


def evaluate_lists(recs: pa.Table, test: pa.Table, items: pa.Table, n_items: int) -> Metrics:
    """Metrics of top-k lists `recs(user_id, item_id, rank)` against held-out `test` pairs.

    NDCG@10: binary relevance, log2 discount, ideal over min(|test|, 10). Recall@20: hits /
    min(|test|, 20). A list shorter than k counts missing slots as misses. Coverage@10: distinct
    items in all top-10 lists / catalogue size. Author figures are per top-10 list, averaged.
    Users in `test` without any list still count (with zero hits).
    """
    rec = pl.from_arrow(recs.select([USER_ID, ITEM_ID, RANK]))
    tst = pl.from_arrow(test.select([USER_ID, ITEM_ID])).unique()
    auth = pl.from_arrow(items.select([ITEM_ID, AUTHOR_ID]))
    assert isinstance(rec, pl.DataFrame) and isinstance(tst, pl.DataFrame)
    assert isinstance(auth, pl.DataFrame)
    n_test = tst.group_by(USER_ID).agg(pl.len().alias("n_test"))
    rec = rec.filter(pl.col(RANK) <= 20).join(n_test.select(USER_ID), on=USER_ID, how="semi")
    hits = rec.join(tst.with_columns(pl.lit(1).alias("hit")), on=[USER_ID, ITEM_ID], how="left"
                    ).with_columns(pl.col("hit").fill_null(0))
    per_user = hits.group_by(USER_ID).agg(
        (pl.col("hit") / (pl.col(RANK) + 1).log(2)).filter(pl.col(RANK) <= 10).sum().alias("dcg"),
        pl.col("hit").sum().alias("hits20"),
    )
    # Sorted so the means sum in a fixed order (bit-stable across runs).
    users = n_test.join(per_user, on=USER_ID, how="left").fill_null(0).sort(USER_ID)
    # Ideal DCG over min(|test|, 10) relevant slots: sum_{r=1..m} 1/log2(r+1).
    ideal_table = np.concatenate([[0.0], np.cumsum(1 / np.log2(np.arange(2, 12)))])
    m = np.minimum(users["n_test"].to_numpy(), 10)
    ndcg = users["dcg"].to_numpy() / ideal_table[m]
    recall = users["hits20"].to_numpy() / np.minimum(users["n_test"].to_numpy(), 20)
    top10 = rec.filter(pl.col(RANK) <= 10).join(auth, on=ITEM_ID, how="left")
    per_list = top10.group_by(USER_ID).agg(
        pl.col(AUTHOR_ID).n_unique().alias("distinct"),
        pl.col(AUTHOR_ID).value_counts().struct.field("count").max().alias("max_author"),
    ).sort(USER_ID)
    return Metrics(
        ndcg_at_10=float(ndcg.mean()) if len(ndcg) else 0.0,
        recall_at_20=float(recall.mean()) if len(recall) else 0.0,
        coverage_at_10=top10[ITEM_ID].n_unique() / max(n_items, 1),
        distinct_authors_at_10=float(per_list["distinct"].mean() or 0.0),
        max_per_author_at_10=float(per_list["max_author"].mean() or 0.0),
        worst_max_per_author_at_10=int(per_list["max_author"].max() or 0),
        users=users.height,
    )


def top_k_from_scores(scored: pa.Table, k: int, score_col: str = "score") -> pa.Table:
    """Top-k per user from a (user_id, item_id, score) table; ties go to the lower item id."""
    df = pl.from_arrow(scored.select([USER_ID, ITEM_ID, score_col]))
    assert isinstance(df, pl.DataFrame)
    vocab = IdVocab.from_ids(scored.column(ITEM_ID)) if scored.num_rows else None
    if vocab is None:
        return pa.table({USER_ID: pa.array([], pa.string()), ITEM_ID: pa.array([], pa.string()),
                         RANK: pa.array([], pa.int32())})
    df = df.with_columns(pl.Series("_o", vocab.index(scored.column(ITEM_ID)))).filter(
        pl.col(score_col).is_not_null() & pl.col(score_col).is_finite())
    df = df.sort([USER_ID, score_col, "_o"], descending=[False, True, False])
    df = df.group_by(USER_ID, maintain_order=True).head(k).with_columns(
        (pl.int_range(pl.len()).over(USER_ID) + 1).cast(pl.Int32).alias(RANK))
    return df.select(USER_ID, ITEM_ID, RANK).to_arrow()


def popularity_lists(train: pa.Table, users: list[str], k: int) -> pa.Table:
    """All-time most interacted items, excluding each user's train items (ties: lower id).

    Each user scans the popularity order only as deep as needed: first the top k + 64 for
    everyone, then deeper (x4 each round) for the few who had seen most of it, so the work
    is ~users x (k + 64), never users x the longest history.
    """
    df = pl.from_arrow(train.select([USER_ID, ITEM_ID]))
    assert isinstance(df, pl.DataFrame)
    ranked = df.group_by(ITEM_ID).agg(pl.len().alias("score").cast(pl.Float64)).sort(
        ["score", ITEM_ID], descending=[True, False])
    remaining = pl.DataFrame({USER_ID: users}, schema={USER_ID: pl.String})
    found = [pl.DataFrame(schema={USER_ID: pl.String, ITEM_ID: pl.String,
                                  "score": pl.Float64})]
    depth = k + 64
    while remaining.height:
        cand = remaining.join(ranked.head(depth), how="cross").join(
            df, on=[USER_ID, ITEM_ID], how="anti")
        enough = cand.group_by(USER_ID).len().filter(pl.col("len") >= k).select(USER_ID)
        done = remaining if depth >= ranked.height else enough
        found.append(cand.join(done, on=USER_ID, how="semi"))
        remaining = remaining.join(done, on=USER_ID, how="anti")
        depth *= 4
    return top_k_from_scores(pl.concat(found).to_arrow(), k)
