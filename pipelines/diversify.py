"""Ranking by reciprocal-rank fusion, and the author-diversity re-ranker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from features.columns import AUTHOR_ID, ITEM_ID, RANK, SCORE, SOURCES, USER_ID
from features.vocab import IdVocab

RECOMMENDATIONS_SCHEMA = pa.schema([
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(SCORE, pa.float64(), nullable=False),
    pa.field(RANK, pa.int32(), nullable=False),
    pa.field(AUTHOR_ID, pa.string(), nullable=False),
    pa.field(SOURCES, pa.list_(pa.string()), nullable=False),
])
SCORED_SCHEMA = pa.schema([
    pa.field(USER_ID, pa.string(), nullable=False),
    pa.field(ITEM_ID, pa.string(), nullable=False),
    pa.field(SCORE, pa.float64(), nullable=False),
    pa.field(SOURCES, pa.list_(pa.string()), nullable=False),
])


class FusionConfig(BaseModel):
    """Reciprocal-rank fusion (Cormack et al. 2009): score = sum_s weight_s / (k + rank_s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: float = Field(60.0, gt=0)
    """The RRF constant; larger flattens the advantage of top ranks."""
    weights: dict[str, float] = Field(default_factory=dict)
    """Per-source weight (default 1 for every source), e.g. {als = 2.0}."""


class DiversifyConfig(BaseModel):
    """Length of the published lists and the author cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(20, ge=1)
    """Length of each user's final list."""
    max_per_author: int = Field(2, ge=1)
    """Most items one author may hold in a list, unless the candidates leave no choice."""


def _sources_list(candidates: pl.DataFrame, names: Sequence[str]) -> pl.Expr:
    return pl.concat_list([
        pl.when(pl.col(f"{s}_rank").is_not_null()).then(pl.lit(s)).otherwise(None) for s in names
    ]).list.drop_nulls()


def source_names(candidates: pa.Table) -> list[str]:
    """Source names present as `<name>_rank` columns, in column order."""
    return [c.removesuffix("_rank") for c in candidates.column_names if c.endswith("_rank")]


def fuse(candidates: pa.Table, config: FusionConfig) -> pa.Table:
    """The `scored` table by reciprocal-rank fusion over every source's rank column."""
    names = source_names(candidates)
    if unknown := set(config.weights) - set(names):
        raise ValueError(f"fusion weights name unknown sources {sorted(unknown)}; known: {names}")
    df = pl.from_arrow(candidates)
    assert isinstance(df, pl.DataFrame)
    terms = [
        (config.weights.get(s, 1.0) / (config.k + pl.col(f"{s}_rank"))).fill_null(0.0)
        for s in names
    ]
    out = df.select(USER_ID, ITEM_ID, pl.sum_horizontal(terms).alias(SCORE),
                    _sources_list(df, names).alias(SOURCES))
    return out.to_arrow().cast(SCORED_SCHEMA)


def cap_authors_reference(
    ranked: Sequence[tuple[str, str]], *, n: int, max_per_author: int
) -> list[tuple[str, str]]:
    """Greedy reference of the cap on one list of (item, author), best first.

    Take the best `n` items, at most `max_per_author` per author where the list allows it;
    over-cap items are deferred, not dropped, and backfill the tail only when needed.
    """
    kept: list[tuple[str, str]] = []
    deferred: list[tuple[str, str]] = []
    per_author: Counter[str] = Counter()
    for entry in ranked:
        if len(kept) == n:
            break
        if per_author[entry[1]] < max_per_author:
            kept.append(entry)
            per_author[entry[1]] += 1
        else:
            deferred.append(entry)
    return kept + deferred[: n - len(kept)]


def diversify(scored: pa.Table, items: pa.Table, config: DiversifyConfig) -> pa.Table:
    """Per user: best-first by score (ties: lower item id), author cap, keep `n`, rank 1-based.

    Vectorised form of `cap_authors_reference`: an item is over the cap when `max_per_author`
    better items of its author precede it; the final list is the under-cap items in order, then
    the over-cap ones in order, cut at n. This equals the greedy scan (tested).
    """
    vocab = IdVocab.from_ids(scored.column(ITEM_ID)) if scored.num_rows else None
    df = pl.from_arrow(scored)
    assert isinstance(df, pl.DataFrame)
    if vocab is None:
        return RECOMMENDATIONS_SCHEMA.empty_table()
    authors = pl.from_arrow(items.select([ITEM_ID, AUTHOR_ID]))
    assert isinstance(authors, pl.DataFrame)
    df = df.with_columns(
        pl.Series("_order", vocab.index(scored.column(ITEM_ID)).astype(np.int64))
    ).join(authors, on=ITEM_ID, how="left").with_columns(
        pl.col(AUTHOR_ID).fill_null(pl.lit("item:") + pl.col(ITEM_ID))
    )
    df = df.sort([USER_ID, SCORE, "_order"], descending=[False, True, False])
    df = df.with_columns(
        (pl.col(ITEM_ID).cum_count().over([USER_ID, AUTHOR_ID]) > config.max_per_author)
        .alias("_over"),
        pl.int_range(pl.len()).over(USER_ID).alias("_pos"),
    )
    df = df.sort([USER_ID, "_over", "_pos"]).group_by(USER_ID, maintain_order=True).head(config.n)
    df = df.with_columns((pl.int_range(pl.len()).over(USER_ID) + 1).cast(pl.Int32).alias(RANK))
    out = df.select(USER_ID, ITEM_ID, SCORE, RANK, AUTHOR_ID, SOURCES)
    return out.to_arrow().cast(RECOMMENDATIONS_SCHEMA)
