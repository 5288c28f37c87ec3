"""Ranking by reciprocal-rank fusion, and the author-diversity re-ranker."""

from __future__ import annotations

import functools
import operator
from collections import Counter
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from features import topn
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
    """Length of the published lists, the author cap and how freed slots are filled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(20, ge=1)
    """Length of each user's final list."""
    max_per_author: int = Field(2, ge=1)
    """Most items one author may hold in a list, unless the candidates leave no choice."""
    author_penalty: float = Field(0.0, ge=0.0)
    """MMR-style soft penalty, in list positions, on every earlier-kept item by the same author:
    the k-th item of an author competes as if ranked `author_penalty * (k - 1)` places lower.
    0 (the default) keeps the best-by-score fill, the optimal fill of the capped slots when item
    relevances are independent (see `diversify`). On validation (bench/quality.py, cap 2) a
    penalty of 10 changed NDCG@10 by -0.8% on ML-1M and +0.5% on MovieLens latest-small."""


def sources_column(candidates: pl.DataFrame, names: Sequence[str]) -> pa.Array:
    """Each row's proposing sources (non-null `<name>_rank`), in `names` order.

    Rows are coded as a bit set of their sources and the lists taken from the 2^len(names)
    possible ones: building a list of strings row by row costs seconds per million rows.
    """
    names = list(names)
    combos = pa.array([[s for k, s in enumerate(names) if c >> k & 1]
                       for c in range(1 << len(names))], pa.list_(pa.string()))
    if not names:
        return combos.take(pa.array(np.zeros(candidates.height, np.int64)))
    code = candidates.select(pl.sum_horizontal([
        pl.col(f"{s}_rank").is_not_null().cast(pl.Int64) * (1 << k)
        for k, s in enumerate(names)]).alias("_code"))["_code"].to_numpy()
    return combos.take(pa.array(code))


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
    # A left fold, not pl.sum_horizontal: polars sums those columns in an order that depends
    # on its thread count, so the scores' last bits would depend on the machine.
    total = functools.reduce(operator.add, terms) if terms else pl.lit(0.0)
    out = df.select(USER_ID, ITEM_ID, total.alias(SCORE)).to_arrow()
    return out.append_column(SOURCES, sources_column(df, names)).cast(SCORED_SCHEMA)


def cap_authors_reference(
    ranked: Sequence[tuple[str, str]], *, n: int, max_per_author: int,
    author_penalty: float = 0.0,
) -> list[tuple[str, str]]:
    """Greedy reference of the re-ranker on one list of (item, author), best first.

    Each step takes the under-cap item with the best position minus the MMR-style penalty,
    key = position + author_penalty * (items of its author already kept), ties to the better
    position; over-cap items are deferred, not dropped, and backfill the tail in their
    original order only when the under-cap items cannot fill `n`. With the default penalty 0
    this is "the best `n` items, at most `max_per_author` per author where the list allows it".
    """
    kept: list[tuple[str, str]] = []
    per_author: Counter[str] = Counter()
    remaining = list(enumerate(ranked))
    while len(kept) < n:
        eligible = [(pos + author_penalty * per_author[e[1]], pos, e) for pos, e in remaining
                    if per_author[e[1]] < max_per_author]
        if not eligible:
            break
        _, pos, entry = min(eligible)
        kept.append(entry)
        per_author[entry[1]] += 1
        remaining = [(p, e) for p, e in remaining if p != pos]
    kept_items = {e[0] for e in kept}
    deferred = [e for e in ranked if e[0] not in kept_items]
    return kept + deferred[: n - len(kept)]


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """1-based rank of each row within its group, in row order; group (m,) int64 codes.

    A stable argsort keeps row order inside each group (polars' cum_count().over() on the
    same data is ~10x slower).
    """
    order = np.argsort(group, kind="stable")
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # first row of each group
    within = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = within + 1
    return rank


def diversify(scored: pa.Table, items: pa.Table, config: DiversifyConfig) -> pa.Table:
    """Per user: best-first by score (ties: lower item id), author cap, keep `n`, rank 1-based.

    Vectorised form of `cap_authors_reference` (tested equal): with each user's candidates in
    score order at positions 0, 1, ... and k the item's rank within its author in that order,
    an item is over the cap when k > max_per_author. Under-cap items are ordered by
    position + author_penalty * (k - 1): the greedy MMR pass keeps an author's items in score
    order, so the k-th item always competes with exactly k - 1 earlier ones of its author and
    its key is static. Over-cap items follow in score order; cut at n.

    Why the default fill is by score alone: the lists that satisfy the cap form a partition
    matroid, and for DCG with independent per-item relevance the greedy best-by-score choice is
    optimal among them. A positive penalty spreads authors further; it cannot raise expected
    NDCG under that model, and only helps where the ranker over-rates an author's further
    items (measured with bench/quality.py and `pipelines.tradeoff`).

    Users are independent (a shard of users gives the same rows as the whole table), provided
    the same `items` table is passed: the id order used for ties is that of the catalogue plus
    the scored ids. Vectorised with polars; no per-user Python loop.
    """
    if not scored.num_rows:
        return RECOMMENDATIONS_SCHEMA.empty_table()
    df = pl.from_arrow(scored)
    assert isinstance(df, pl.DataFrame)
    # Tie order from the catalogue, so it does not depend on which users share the table.
    vocab = IdVocab.from_ids(pa.concat_arrays([
        items.column(ITEM_ID).combine_chunks().cast(pa.string()),
        pc.unique(scored.column(ITEM_ID)).cast(pa.string())]))
    authors = pl.from_arrow(items.select([ITEM_ID, AUTHOR_ID]))
    assert isinstance(authors, pl.DataFrame)
    # Integer author codes (grouping on integers is several times faster than on strings); an
    # item without an author is its own author, coded past the catalogue's authors.
    authors = authors.with_columns((pl.col(AUTHOR_ID).rank("dense") - 1).cast(pl.Int64)
                                   .alias("_a"))
    n_codes = int(authors["_a"].max() or 0) + 1 + len(vocab)
    order = vocab.index(scored.column(ITEM_ID)).astype(np.int64)
    # Only each user's best `depth` rows can matter when among them n under-cap items have a
    # key below `depth` (every later row has position, hence key, >= depth); users for whom
    # that fails are selected again over all their rows. The full sort is what this avoids.
    depth = PREFIX * config.n
    codes = df[USER_ID].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    sizes = np.bincount(codes)
    rows = np.arange(df.height, dtype=np.int64)
    scores = df[SCORE].to_numpy()
    if sizes.max(initial=0) > depth and np.isfinite(scores).all():
        _, top, _, _ = topn.top_n(codes, rows, scores, order, depth)
        keys = _select(df, top, order, authors, n_codes, config)
        n_sure = keys.group_by("_u").agg(((~pl.col("_over")) & (pl.col("_key") < depth))
                                         .sum().alias("_sure"), pl.first("_row"))
        redo = n_sure.filter(pl.col("_sure") < config.n)["_row"].to_numpy()
        redo_users = np.isin(codes, codes[redo]) & (sizes[codes] > depth)
        if redo_users.any():
            keys = pl.concat([
                keys.filter(~pl.col("_row").is_in(pl.Series(rows[redo_users]).implode())),
                _select(df, rows[redo_users], order, authors, n_codes, config)])
            keys = keys.sort([USER_ID, "_r"])
    else:
        keys = _select(df, rows, order, authors, n_codes, config)
    out = df[keys["_row"]].with_columns(
        (keys["_r"] + 1).cast(pl.Int32).alias(RANK), keys[AUTHOR_ID],
    ).select(USER_ID, ITEM_ID, SCORE, RANK, AUTHOR_ID, SOURCES)
    return out.to_arrow().cast(RECOMMENDATIONS_SCHEMA)


PREFIX = 4
"""Diversify looks at each user's best PREFIX * n rows first (exactness checked per user)."""


def _select(df: pl.DataFrame, rows: np.ndarray, order: np.ndarray, authors: pl.DataFrame,
            n_codes: int, config: DiversifyConfig) -> pl.DataFrame:
    """The kept rows of `df[rows]` in (user, rank) order, `order` being each row's item tie order.

    Columns: user_id, _u (user code), _row, author_id, _over (over the cap), _key, _r (rank - 1).
    """
    keys = df.select(USER_ID, ITEM_ID, SCORE)[rows].with_columns(
        pl.Series("_order", order[rows]), pl.Series("_row", rows),
    ).join(authors, on=ITEM_ID, how="left").with_columns(
        pl.col(AUTHOR_ID).fill_null(pl.lit("item:") + pl.col(ITEM_ID)),
        pl.col("_a").fill_null(n_codes - len(order) + pl.col("_order")),
    )
    keys = keys.sort([USER_ID, SCORE, "_order"], descending=[False, True, False])
    keys = keys.with_columns(pl.col(USER_ID).rle_id().cast(pl.Int64).alias("_u"))  # in order
    k_in_author = pl.Series("_k", _rank_in_group(
        (keys["_u"] * n_codes + keys["_a"]).to_numpy()))  # 1-based, in score order
    keys = keys.select(
        USER_ID, "_u", "_row", AUTHOR_ID,
        (k_in_author > config.max_per_author).alias("_over"),
        pl.int_range(pl.len()).over("_u").cast(pl.Float64).alias("_pos"),
        (k_in_author - 1).alias("_prior"),
    )
    # Under-cap items compete by position + penalty x earlier items of their author;
    # over-cap ones follow in score order (with penalty 0 the key is the position itself).
    keys = keys.with_columns(pl.when(pl.col("_over")).then(pl.col("_pos")).otherwise(
        pl.col("_pos") + config.author_penalty * pl.col("_prior")).alias("_key"))
    keys = keys.sort(["_u", "_over", "_key", "_pos"]).with_columns(
        pl.int_range(pl.len()).over("_u").alias("_r"))
    return keys.filter(pl.col("_r") < config.n)
