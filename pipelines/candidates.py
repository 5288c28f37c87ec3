"""Candidate sources (user/item Pearson, ALS, popular now, same authors) and their union."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from features import neighbourhood, topn
from features.columns import (
    AUTHOR_ID,
    INB_SUM,
    INB_SUPPORT,
    ITEM_ID,
    N_SOURCES,
    NEIGHBOUR_ID,
    TS,
    USER_ID,
    WEIGHT,
)
from features.errors import DataWarning
from features.matrix import InteractionMatrix, build_matrix
from features.vocab import IdVocab
from models.ease import Ease, EaseConfig

SOURCES = ("user_pearson", "item_pearson", "als", "popular", "author", "ease")


class CandidatesConfig(BaseModel):
    """How many candidates each source proposes per user, and the popularity window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_pearson: int = Field(100, ge=0)
    """Top-N items from user-based Pearson neighbours (0 turns the source off)."""
    item_pearson: int = Field(100, ge=0)
    """Top-N items from item-based Pearson neighbours."""
    als: int = Field(250, ge=0)
    """Top-N items by ALS dot product (250: its validation recall grows most per candidate)."""
    popular: int = Field(50, ge=0)
    """Top-N most interacted items in the recent window."""
    author: int = Field(50, ge=0)
    """Top-N items by authors in the user's history (score = the author's share of it)."""
    ease: int = Field(100, ge=0)
    """Top-N items by EASE (closed-form item-item model, settings in [ease]); skipped with a
    warning when the catalogue exceeds ease.max_items."""
    popular_window_days: float = Field(30.0, gt=0)
    """'Popular now' counts interactions in this many days before the data's latest time stamp;
    all time when the data has no time stamps."""
    block_elements: int = Field(4_000_000, ge=1)
    """Work per block: the ALS block holds block_elements // n_items users' dense scores, the
    sparse sources take users until their proposals before top-N reach this many entries."""


@dataclass(frozen=True)
class Context:
    """Dense-index view of one history and the source models, shared by every shard."""

    m: InteractionMatrix
    binary: sp.csr_matrix  # (n_users, n_items) 1.0 where the user has the item
    popularity: np.ndarray  # (n_items,) all-time interaction count
    recent: np.ndarray  # (n_items,) count in the recent window
    item_author: sp.csr_matrix  # (n_items, n_authors) one-hot
    order: np.ndarray  # (n_items,) columns sorted by popularity desc, then id asc
    position: np.ndarray  # inverse of order: rank of each item in that tie order
    user_nbrs: sp.csr_matrix  # (n_users, n_users) 1.0 per kept neighbour
    item_nbrs: sp.csr_matrix  # (n_items, n_items) Pearson weight per kept neighbour
    user_factors: np.ndarray  # (n_users, f) float32, zeros where a user has no factors
    item_factors: np.ndarray  # (n_items, f) float32
    affinity: sp.csr_matrix  # (n_users, n_authors) share of the user's history by author
    popular_pool: np.ndarray  # items with recent > 0, in score-then-tie order
    ease: np.ndarray | None = None  # (n_items, n_items) EASE weights B, None when off

    @property
    def n_users(self) -> int:
        """Users in this history."""
        return int(self.m.weights.shape[0])


def build_context(
    interactions: pa.Table, items: pa.Table, user_neighbours: pa.Table, item_neighbours: pa.Table,
    user_factors: pa.Table, item_factors: pa.Table, config: CandidatesConfig,
    ease: EaseConfig | None = None,
) -> Context:
    """Matrix, popularity counts, the item -> author map and the sources' models, built once."""
    m = build_matrix(interactions)
    n_items = len(m.items)
    binary = m.binary
    popularity = np.diff(m.weights.tocsc().indptr).astype(np.float64)
    ts = interactions.column(TS)
    if ts.null_count < len(ts):
        cutoff = pc.subtract(pc.max(ts), pa.scalar(int(config.popular_window_days * 86400e6),
                                                   pa.duration("us")))
        recent_rows = interactions.filter(pc.greater_equal(ts, cutoff))
        idx = m.items.index(recent_rows.column(ITEM_ID))
        recent = np.bincount(idx, minlength=n_items).astype(np.float64)
    else:
        recent = popularity.copy()
    item_idx = m.items.index(items.column(ITEM_ID), strict=False)
    known = item_idx >= 0
    authors = pc.filter(items.column(AUTHOR_ID), pa.array(known))
    author_vocab = IdVocab.from_ids(authors)
    author_idx = author_vocab.index(authors)
    item_author = sp.csr_matrix(
        (np.ones(known.sum()), (item_idx[known], author_idx)), shape=(n_items, len(author_vocab))
    )
    order = np.lexsort((np.arange(n_items), -popularity))
    position = np.empty(n_items, dtype=np.int64)
    position[order] = np.arange(n_items)
    unbrs = neighbour_matrix(user_neighbours, USER_ID, m.users)
    unbrs.data = np.ones_like(unbrs.data)
    counts = np.diff(m.weights.indptr).astype(np.float64)
    affinity = (sp.diags(1.0 / np.maximum(counts, 1)) @ (binary @ item_author)).tocsr()
    pool = np.flatnonzero(recent > 0)
    pool = pool[np.lexsort((position[pool], -recent[pool]))]
    weights = None
    if config.ease > 0:
        model = Ease(ease or EaseConfig())
        if model.allows(n_items):
            weights = model.fit(binary).weights
        else:
            warnings.warn(f"EASE candidates skipped: {n_items:,} items exceed ease.max_items "
                          f"({model.config.max_items:,}); raise it (memory ~12 * items^2 "
                          "bytes) or set candidates.ease = 0", DataWarning, stacklevel=2)
    return Context(
        m, binary, popularity, recent, item_author, order, position, unbrs,
        neighbour_matrix(item_neighbours, ITEM_ID, m.items),
        factors_array(user_factors, USER_ID, m.users),
        factors_array(item_factors, ITEM_ID, m.items), affinity, pool, weights)


def neighbour_matrix(table: pa.Table, key: str, vocab: IdVocab) -> sp.csr_matrix:
    """A published neighbours table (id, neighbour_id, weight) as a sparse square matrix."""
    rows = vocab.index(table.column(key), strict=False)
    cols = vocab.index(table.column(NEIGHBOUR_ID), strict=False)
    ok = (rows >= 0) & (cols >= 0)
    w = table.column(WEIGHT).to_numpy()
    mat = sp.csr_matrix((w[ok], (rows[ok], cols[ok])), shape=(len(vocab), len(vocab)))
    mat.sort_indices()
    return mat


def factors_array(table: pa.Table, key: str, vocab: IdVocab) -> np.ndarray:
    """A published factors table (id, factors list) as a dense array in vocabulary order."""
    idx = vocab.index(table.column(key), strict=False)
    flat = pc.list_flatten(table.column("factors")).to_numpy()
    dim = len(flat) // max(table.num_rows, 1)
    out = np.zeros((len(vocab), dim), dtype=np.float32)
    ok = idx >= 0
    out[idx[ok]] = flat.reshape(table.num_rows, dim)[ok]
    return out


def user_shards(n_users: int, shard_users: int, only: np.ndarray | None = None
                ) -> list[np.ndarray]:
    """Ascending dense user indices in shards of at most `shard_users` (at least one shard).

    `only` keeps a subset (the users a time cut-off has training or evaluation targets for):
    a user's candidates do not depend on which other users are generated with it.
    """
    idx = np.arange(n_users, dtype=np.int64) if only is None else np.unique(
        np.asarray(only, dtype=np.int64))
    step = max(1, shard_users)
    return [idx[s : s + step] for s in range(0, max(len(idx), 1), step)]


@dataclass(frozen=True)
class Proposals:
    """One source's proposals for a range of users, in COO form (rows local to the range)."""

    rows: np.ndarray  # (m,) int64
    cols: np.ndarray  # (m,) int64 item index
    scores: np.ndarray  # (m,) float64
    ranks: np.ndarray  # (m,) int32, 1-based within the user's list


def _cost_blocks(cost: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive ranges of users whose summed cost stays near `budget` (>= 1 user each)."""
    if not len(cost):
        return
    block = ((np.cumsum(cost) - cost) // max(budget, 1)).astype(np.int64)
    edges = np.r_[0, np.flatnonzero(np.diff(block)) + 1, len(cost)]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        yield slice(int(start), int(stop))


def _top_n(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, n: int, ctx: Context
           ) -> Proposals:
    """Keep each row's n best finite entries: score desc, then popularity desc, then id asc."""
    return Proposals(*topn.top_n(rows, cols, scores, ctx.position, n))


def _unseen(rows: np.ndarray, cols: np.ndarray, seen: np.ndarray, n_items: int) -> np.ndarray:
    """Mask of (row, col) pairs not in the sorted `seen` keys (row * n_items + col)."""
    keys = rows * n_items + cols
    pos = np.minimum(np.searchsorted(seen, keys), max(len(seen) - 1, 0))
    return ~((len(seen) > 0) & (seen[pos] == keys)) if len(seen) else np.ones(len(keys), bool)


def _coo(mat: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(mat.shape[0], dtype=np.int64), np.diff(mat.indptr))
    return rows, mat.indices.astype(np.int64), mat.data.astype(np.float64)


def _user_pearson(users: np.ndarray, ctx: Context) -> tuple[np.ndarray, ...]:
    """p_i = |{v in U(u) : v rated i}| / |U(u)|, for the items some neighbour rated."""
    a = ctx.user_nbrs[users]
    size = np.diff(a.indptr).astype(np.float64)  # |U(u)|
    rows, cols, counts = _coo((a @ ctx.binary).tocsr())
    keep = counts > 0
    return rows[keep], cols[keep], counts[keep] / size[rows[keep]]


def _author(users: np.ndarray, ctx: Context) -> tuple[np.ndarray, ...]:
    """Items by the user's authors, scored by that author's share of the history."""
    rows, cols, s = _coo((ctx.affinity[users] @ ctx.item_author.T).tocsr())
    keep = s > 0
    return rows[keep], cols[keep], s[keep]


def _sparse_source(name: str, users: np.ndarray, ctx: Context, n: int, budget: int
                   ) -> list[Proposals]:
    """A sparse source in blocks of users whose raw proposals fit the budget, then top-n."""
    n_items = ctx.m.weights.shape[1]
    hist_len = np.diff(ctx.binary.indptr).astype(np.float64)
    if name == "user_pearson":
        cost = ctx.user_nbrs[users] @ hist_len
        fn = _user_pearson
    else:
        author_size = np.asarray(ctx.item_author.sum(axis=0)).ravel()
        a = ctx.affinity[users].copy()
        a.data = np.ones_like(a.data)
        cost = a @ author_size
        fn = _author
    out = []
    for blk in _cost_blocks(np.asarray(cost).ravel(), budget):
        sub = users[blk]
        rows, cols, scores = fn(sub, ctx)
        seen_rows, seen_cols, _ = _coo(ctx.binary[sub])
        ok = _unseen(rows, cols, seen_rows * n_items + seen_cols, n_items)
        p = _top_n(rows[ok], cols[ok], scores[ok], n, ctx)
        out.append(Proposals(p.rows + blk.start, p.cols, p.scores, p.ranks))
    return out


def _als(users: np.ndarray, ctx: Context, n: int, budget: int) -> list[Proposals]:
    """Top-n by <p_u, q_i> over unseen items, dense only within a block of users."""
    n_items = ctx.m.weights.shape[1]
    step = max(1, budget // max(n_items, 1))
    q_max = float(np.linalg.norm(ctx.item_factors.astype(np.float64), axis=1).max(initial=0.0))
    out = []
    for start in range(0, len(users), step):
        sub = users[start : start + step]
        scores = ctx.user_factors[sub] @ ctx.item_factors.T  # (b, n_items) float32, BLAS
        seen = ctx.binary[sub]
        scores[np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr)), seen.indices] = -np.inf
        # BLAS sums in a block-shape-dependent order, so everything within the float32 error
        # bound of each row's n-th value is rescored exactly (float64, fixed order per pair)
        # so that the scores and the cut do not depend on how users are grouped. A dot
        # product of f terms is off by at most ~f * 2^-24 * |p_u| |q_i| (3.8e-6 |p_u| |q_i|
        # for f = 64); the slack is twice that, for the n-th value and the candidate's.
        bound = 2.0 * ctx.user_factors.shape[1] * 2.0**-24 * q_max * np.linalg.norm(
            ctx.user_factors[sub].astype(np.float64), axis=1)
        p = Proposals(*topn.dot_top(scores, bound, ctx.user_factors[sub], ctx.item_factors,
                                    ctx.position, n))
        out.append(Proposals(p.rows + start, p.cols, p.scores, p.ranks))
    return out


def _ease(users: np.ndarray, ctx: Context, n: int, budget: int) -> list[Proposals]:
    """Top-n by EASE scores x_u B over unseen items, dense only within a block of users.

    Each row's score is a sparse row times B, summed in the row's own order, so it does not
    depend on the block it is computed in.
    """
    assert ctx.ease is not None
    n_items = ctx.m.weights.shape[1]
    step = max(1, budget // max(n_items, 1))
    out = []
    for start in range(0, len(users), step):
        sub = users[start : start + step]
        seen = ctx.binary[sub].astype(ctx.ease.dtype)
        scores = np.asarray(seen @ ctx.ease, dtype=np.float64)  # (b, n_items)
        scores[np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr)), seen.indices] = -np.inf
        k = min(n, n_items)
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        rows, cols = np.nonzero((scores >= kth) & np.isfinite(scores))
        p = _top_n(rows.astype(np.int64), cols.astype(np.int64), scores[rows, cols], n, ctx)
        out.append(Proposals(p.rows + start, p.cols, p.scores, p.ranks))
    return out


def _popular(users: np.ndarray, ctx: Context, n: int) -> list[Proposals]:
    """The most recent-popular items each user has not seen (the same pool for everyone)."""
    seen = ctx.binary[users]
    b = seen.shape[0]
    longest = int(np.diff(seen.indptr).max()) if b else 0
    pool = ctx.popular_pool[: n + longest]  # enough to leave n unseen for every user
    if not len(pool) or not b:
        return []
    taken = (seen[:, pool].toarray() > 0)  # (b, |pool|)
    rank = np.cumsum(~taken, axis=1)
    keep = ~taken & (rank <= n)
    rows, idx = np.nonzero(keep)
    cols = pool[idx].astype(np.int64)
    return [Proposals(rows.astype(np.int64), cols, ctx.recent[cols], rank[rows, idx]
                      .astype(np.int32))]


def generate_shard(ctx: Context, users: np.ndarray, config: CandidatesConfig) -> pa.Table:
    """The candidates of some users (ascending dense indices): each source's score and rank.

    One row per (user, unseen item) that some source proposed.
    Work and memory grow with the proposals kept, not with users x catalogue: the sparse
    sources never densify, ALS is dense only within one block of users.
    """
    n_items = ctx.m.weights.shape[1]
    b = len(users)
    per_source: dict[str, list[Proposals]] = {}
    for name in SOURCES:
        n = getattr(config, name)
        if n == 0 or b == 0 or n_items == 0:
            per_source[name] = []
        elif name == "als":
            per_source[name] = _als(users, ctx, n, config.block_elements)
        elif name == "popular":
            per_source[name] = _popular(users, ctx, n)
        elif name == "ease":
            per_source[name] = _ease(users, ctx, n, config.block_elements) if (
                ctx.ease is not None) else []
        elif name == "item_pearson":
            # p_j = max over the user's items i0 of w_{i0 j}, top-n in one compiled pass.
            per_source[name] = [Proposals(*neighbourhood.top_max(
                ctx.binary[users], ctx.item_nbrs, ctx.position, n))]
        else:
            per_source[name] = _sparse_source(name, users, ctx, n, config.block_elements)
    keys = [p.rows * n_items + p.cols for ps in per_source.values() for p in ps]
    if not keys or not sum(len(k) for k in keys):
        return CANDIDATES_SCHEMA.empty_table()
    uniq = np.sort(np.concatenate(keys))  # sorted by (user, item index), then deduplicated
    uniq = uniq[np.r_[True, uniq[1:] != uniq[:-1]]]
    n_rows = len(uniq)
    columns: dict[str, pa.Array] = {
        USER_ID: ctx.m.users.take(users[uniq // n_items]),
        ITEM_ID: ctx.m.items.take(uniq % n_items),
    }
    n_src = np.zeros(n_rows, dtype=np.int8)
    for name in SOURCES:
        score = np.full(n_rows, np.nan)
        rank = np.zeros(n_rows, dtype=np.int32)
        hit = np.zeros(n_rows, dtype=bool)
        for p in per_source[name]:
            at = np.searchsorted(uniq, p.rows * n_items + p.cols)
            score[at], rank[at], hit[at] = p.scores, p.ranks, True
        n_src += hit
        columns[f"{name}_score"] = pa.array(score, mask=~hit)
        columns[f"{name}_rank"] = pa.array(rank, mask=~hit)
    columns[N_SOURCES] = pa.array(n_src)
    # How many of the user's items have the candidate among their neighbours, and the sum of
    # those weights (ranker features; cheapest here, where the matrices are at hand).
    count, total = neighbourhood.support(ctx.binary[users], ctx.item_nbrs, uniq // n_items,
                                         uniq % n_items)
    columns[INB_SUPPORT], columns[INB_SUM] = pa.array(count), pa.array(total)
    return pa.table(columns).cast(CANDIDATES_SCHEMA)


def generate(
    interactions: pa.Table, items: pa.Table, user_neighbours: pa.Table, item_neighbours: pa.Table,
    user_factors: pa.Table, item_factors: pa.Table, config: CandidatesConfig,
    shard_users: int = 10_000, ease: EaseConfig | None = None,
) -> pa.Table:
    """The candidates table: per (user, unseen item), each source's score and rank.

    Columns: user_id, item_id, then `<source>_score` / `<source>_rank` (null when that source
    did not propose the item) for every source, and n_sources. Rows are ordered by user, item.
    """
    ctx = build_context(interactions, items, user_neighbours, item_neighbours, user_factors,
                        item_factors, config, ease)
    parts = [generate_shard(ctx, s, config) for s in user_shards(ctx.n_users, shard_users)]
    return pa.concat_tables(parts) if parts else CANDIDATES_SCHEMA.empty_table()


CANDIDATES_SCHEMA = pa.schema(
    [pa.field(USER_ID, pa.string(), nullable=False), pa.field(ITEM_ID, pa.string(), nullable=False)]
    + [f for name in SOURCES for f in (pa.field(f"{name}_score", pa.float64()),
                                       pa.field(f"{name}_rank", pa.int32()))]
    + [pa.field(N_SOURCES, pa.int8(), nullable=False),
       pa.field(INB_SUPPORT, pa.float64(), nullable=False),
       pa.field(INB_SUM, pa.float64(), nullable=False)]
)
