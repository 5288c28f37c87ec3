"""Features per (user, candidate) for the learning-to-rank model, computed with polars."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from features.columns import AUTHOR_ID, ITEM_ID, N_SOURCES, TS, USER_ID, WEIGHT


def _df(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


@dataclass(frozen=True)
class HistoryStats:
    """Item-level statistics of one whole history, computed once and shared by every shard."""

    item_stats: pl.DataFrame  # one row per item: popularity, mean weight, age
    authors: pl.DataFrame  # (item_id, author_id)
    has_ts: bool
    t_max: object  # latest time stamp of the history (None without time stamps)
    recent_days: float
    item_code: pl.DataFrame  # (item_id, _code) dense codes of the history's items
    event_keys: np.ndarray  # sorted item_code * 2^36 + epoch second, one per interaction
    user_factors: FactorIndex
    item_factors: FactorIndex
    item_table: pl.DataFrame  # one row per item: item_stats' columns, author_id, _irow


@dataclass(frozen=True)
class FactorIndex:
    """A factors table as a dense matrix with an id -> row lookup frame."""

    key: str
    index: pl.DataFrame  # (key, _row)
    matrix: np.ndarray  # (rows, f) float32
    sorted_ids: pl.Series  # the ids in sorted order, for `rows`
    sorted_rows: np.ndarray  # (rows,) int64: the matrix row of each of `sorted_ids`

    @classmethod
    def of(cls, table: pa.Table, key: str) -> FactorIndex:
        """Index a published factors table (id, factors list)."""
        flat = table.column("factors").combine_chunks().flatten().to_numpy()
        mat = flat.reshape(table.num_rows, -1) if table.num_rows else np.zeros((0, 1), np.float32)
        index = pl.DataFrame({key: table.column(key).to_pylist(),
                              "_row": np.arange(table.num_rows)},
                             schema={key: pl.String, "_row": pl.Int64})
        order = index[key].arg_sort()
        return cls(key, index, mat, index[key].gather(order),
                   index["_row"].gather(order).to_numpy())

    def rows(self, ids: pl.Series) -> pl.Series:
        """The matrix row of each id (Int64; null where the id has no factors).

        Binary search in the sorted ids: a shard's few users cost O(len(ids) log n), where a
        join would hash all n ids once per shard, which makes a night's work grow with
        shards x users.
        """
        n = len(self.sorted_ids)
        if not n or not len(ids):
            return pl.Series("_row", [None] * len(ids), dtype=pl.Int64)
        at = np.minimum(self.sorted_ids.search_sorted(ids, side="left").to_numpy(), n - 1)
        hit = (self.sorted_ids.gather(at) == ids).fill_null(False).to_numpy()
        return pl.Series("_row", pa.array(self.sorted_rows[at], mask=~hit))


SHIFT = np.int64(1) << 36  # > any epoch second here; event keys = item code * SHIFT + time


def history_stats(history: pa.Table, items: pa.Table, user_factors: pa.Table,
                  item_factors: pa.Table, *, recent_days: float = 30.0) -> HistoryStats:
    """Everything item-level the features need from a history, so shards never rescan it."""
    hist = _df(history.select([USER_ID, ITEM_ID, WEIGHT, TS]))
    has_ts = hist[TS].null_count() < hist.height
    t_max = hist[TS].max() if has_ts else None
    n_users = max(hist[USER_ID].n_unique(), 1)
    item_stats = hist.group_by(ITEM_ID).agg(
        pl.len().cast(pl.Float64).alias("item_pop"),
        pl.col(WEIGHT).mean().alias("item_mean_weight"),
        *([
            (pl.col(TS) >= pl.lit(t_max) - timedelta(days=recent_days)).sum().cast(pl.Float64)
            .alias("item_pop_recent"),
            ((pl.lit(t_max) - pl.col(TS).min()).dt.total_seconds() / 86400).alias(
                "item_days_since_first"),
            ((pl.lit(t_max) - pl.col(TS).max()).dt.total_seconds() / 86400).alias(
                "item_days_since_last"),
        ] if has_ts else [pl.len().cast(pl.Float64).alias("item_pop_recent")]),
    ).with_columns((pl.col("item_pop") / n_users).alias("item_pop_share"))
    codes = pl.concat([hist[ITEM_ID], _df(items.select([ITEM_ID]))[ITEM_ID]]).unique().sort()
    item_code = pl.DataFrame({ITEM_ID: codes, "_code": np.arange(len(codes), dtype=np.int64)})
    keys = np.zeros(0, np.int64)
    if has_ts:
        ev = hist.select(ITEM_ID, pl.col(TS).dt.epoch("s").alias("_t")).join(item_code,
                                                                               on=ITEM_ID)
        keys = np.sort(ev["_code"].to_numpy() * SHIFT + ev["_t"].to_numpy())
    authors = _df(items.select([ITEM_ID, AUTHOR_ID]))
    item_index = FactorIndex.of(item_factors, ITEM_ID)
    # Every item-level column in one table, so each candidate row needs one join for them.
    item_table = (item_stats.join(authors, on=ITEM_ID, how="full", coalesce=True)
                  .join(item_index.index.rename({"_row": "_irow"}), on=ITEM_ID, how="full",
                        coalesce=True))
    return HistoryStats(
        item_stats, authors, has_ts, t_max, recent_days, item_code, keys,
        FactorIndex.of(user_factors, USER_ID), item_index, item_table)


def candidate_features(candidates: pa.Table, user_history: pa.Table, stats: HistoryStats
                       ) -> pl.DataFrame:
    """One row per candidate with every feature, keyed by (user_id, item_id).

    `user_history` holds (at least) the interactions of the candidates' users; item-level
    figures come from `stats` over the whole history, so a shard of users gives the same rows
    as the whole table. Features: each source's score and rank (null = not proposed),
    n_sources; item popularity all-time and in the recent window (and both as shares); item
    mean weight (mean rating where ratings exist); days since the item's first and last
    interaction; user activity, mean weight and days since the user's last interaction; the
    user's affinity to the item's author (share of the user's history by that author) and
    whether the author is unknown; the ALS dot product for every candidate. The candidates
    table brings the item-neighbourhood support (`inb_support`, `inb_sum`).
    """
    cand = _df(candidates)
    hist = _df(user_history.select([USER_ID, ITEM_ID, WEIGHT, TS])).join(
        cand.select(USER_ID).unique(), on=USER_ID, how="semi")
    t_max = stats.t_max
    user_stats = hist.group_by(USER_ID).agg(
        pl.len().cast(pl.Float64).alias("user_activity"),
        pl.col(WEIGHT).mean().alias("user_mean_weight"),
        *([((pl.lit(t_max) - pl.col(TS).max()).dt.total_seconds() / 86400).alias(
            "user_days_since_last")] if stats.has_ts else []),
    )
    user_author = hist.join(stats.authors, on=ITEM_ID, how="left").group_by(
        [USER_ID, AUTHOR_ID]).agg(pl.len().cast(pl.Float64).alias("_author_n"))
    users = user_stats.with_columns(stats.user_factors.rows(user_stats[USER_ID]).alias("_urow"))
    feats = (
        cand.join(stats.item_table, on=ITEM_ID, how="left", maintain_order="left")
        .join(users, on=USER_ID, how="left", maintain_order="left")
        .join(user_author, on=[USER_ID, AUTHOR_ID], how="left", maintain_order="left")
        .with_columns(
            (pl.col("_author_n").fill_null(0) / pl.col("user_activity")).alias("author_affinity"),
            pl.col(AUTHOR_ID).str.starts_with("item:").cast(pl.Int8).alias("author_unknown"),
            pl.col(N_SOURCES).cast(pl.Float64),
        )
    )
    dots = factor_dots(feats["_urow"], feats["_irow"], stats.user_factors, stats.item_factors)
    # Columns in a fixed order (the ranker's feature order follows it).
    feats = feats.select(*cand.columns, *(c for c in stats.item_stats.columns if c != ITEM_ID),
                         *(c for c in user_stats.columns if c != USER_ID), "author_affinity",
                         "author_unknown").with_columns(pl.Series("als_dot", dots))
    if stats.has_ts:
        feats = feats.with_columns(**popularity_at_user_time(feats, hist, stats))
    return feats


def popularity_at_user_time(pairs: pl.DataFrame, hist: pl.DataFrame, stats: HistoryStats
                            ) -> dict[str, pl.Series]:
    """Item popularity as of each user's own last activity, not the data's end.

    Users rate in sessions spread over years, so "popular now" differs per user. For each
    (user, item) with t_u = the user's last time stamp: the item's interactions up to t_u, in
    the `recent_days` before t_u, and the item's age at t_u in days. One sorted array of
    (item, time) keys and two binary searches per row; no per-user loops.
    """
    keys, shift = stats.event_keys, SHIFT
    last = hist.group_by(USER_ID).agg(pl.col(TS).max().dt.epoch("s").alias("_tu"))
    rows = pairs.select(USER_ID, ITEM_ID).join(last, on=USER_ID, how="left", maintain_order="left"
                                              ).join(stats.item_code, on=ITEM_ID, how="left",
                                                     maintain_order="left")
    base = rows["_code"].fill_null(-1).to_numpy() * shift
    t_u = rows["_tu"].to_numpy()
    first = np.searchsorted(keys, base, side="left")  # first event of the item
    upto = np.searchsorted(keys, base + t_u, side="right")
    since = np.maximum(first, np.searchsorted(keys, base + t_u - int(stats.recent_days * 86400)))
    end = np.searchsorted(keys, base + shift, side="left")
    first_t = np.where(end > first, keys[np.minimum(first, max(len(keys) - 1, 0))] - base, t_u
                       ) if len(keys) else t_u
    return {
        "item_pop_at_user_time": pl.Series((upto - first).astype(np.float64)),
        "item_pop_recent_at_user_time": pl.Series((upto - since).astype(np.float64)),
        "item_age_at_user_time": pl.Series((t_u - first_t) / 86400.0),
    }


@njit(cache=True, nogil=True)
def _row_dots(users: np.ndarray, urow: np.ndarray, items: np.ndarray, irow: np.ndarray
              ) -> np.ndarray:
    """out[r] = <users[urow[r]], items[irow[r]]>, summed in float64 in factor order."""
    out = np.empty(len(urow), dtype=np.float64)
    for r in range(len(urow)):
        a, b = urow[r], irow[r]
        s = 0.0
        for k in range(users.shape[1]):
            s += np.float64(users[a, k]) * np.float64(items[b, k])
        out[r] = s
    return out


def als_dot(pairs: pl.DataFrame, users: FactorIndex, items: FactorIndex) -> np.ndarray:
    """<p_u, q_i> for every (user_id, item_id) row of `pairs`; NaN where a factor is missing."""
    return factor_dots(users.rows(pairs[USER_ID]), items.rows(pairs[ITEM_ID]), users, items)


def factor_dots(user_rows: pl.Series, item_rows: pl.Series, users: FactorIndex,
                items: FactorIndex) -> np.ndarray:
    """<p_u, q_i> for rows given as factor-matrix rows (null: no factor, giving NaN)."""
    uok, iok = user_rows.is_not_null().to_numpy(), item_rows.is_not_null().to_numpy()
    urow = user_rows.fill_null(0).to_numpy().astype(np.int64)
    irow = item_rows.fill_null(0).to_numpy().astype(np.int64)
    if not len(users.matrix) or not len(items.matrix):
        return np.full(len(urow), np.nan)
    if users.matrix.shape[1] != items.matrix.shape[1]:
        raise ValueError(f"user factors have {users.matrix.shape[1]} dimensions, item factors "
                         f"{items.matrix.shape[1]}")
    # One fused gather-and-dot per row: no (rows, factors) float64 temporaries.
    dots = _row_dots(np.ascontiguousarray(users.matrix), urow,
                     np.ascontiguousarray(items.matrix), irow)
    return np.where(uok & iok, dots, np.nan)


def feature_names(columns: Iterable[str]) -> list[str]:
    """The model inputs among `columns`, in their order: all but the keys and the label."""
    return [c for c in columns if c not in (USER_ID, ITEM_ID, "label")]
