"""Oracle: the former dense-slab candidate generation, kept to check the sparse one row for row."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from features.columns import AUTHOR_ID, ITEM_ID, N_SOURCES, NEIGHBOUR_ID, TS, USER_ID, WEIGHT
from features.matrix import InteractionMatrix, build_matrix
from features.vocab import IdVocab
from models.neighbours import top_k_indices

SOURCES = ("user_pearson", "item_pearson", "als", "popular", "author")


class CandidatesConfig(BaseModel):
    """How many candidates each source proposes per user, and the popularity window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_pearson: int = Field(100, ge=0)
    """Top-N items from user-based Pearson neighbours (0 turns the source off)."""
    item_pearson: int = Field(100, ge=0)
    """Top-N items from item-based Pearson neighbours."""
    als: int = Field(100, ge=0)
    """Top-N items by ALS dot product."""
    popular: int = Field(50, ge=0)
    """Top-N most interacted items in the recent window."""
    author: int = Field(50, ge=0)
    """Top-N items by authors in the user's history (score = the author's share of it)."""
    popular_window_days: float = Field(30.0, gt=0)
    """'Popular now' counts interactions in this many days before the data's latest time stamp;
    all time when the data has no time stamps."""
    block_elements: int = Field(4_000_000, ge=1)
    """Users per block = block_elements // n_items; bounds the dense score slabs."""


@dataclass(frozen=True)
class Context:
    """Dense-index view of the interactions shared by every source."""

    m: InteractionMatrix
    binary: sp.csr_matrix  # (n_users, n_items) 1.0 where the user has the item
    popularity: np.ndarray  # (n_items,) all-time interaction count
    recent: np.ndarray  # (n_items,) count in the recent window
    item_author: sp.csr_matrix  # (n_items, n_authors) one-hot
    order: np.ndarray  # (n_items,) columns sorted by popularity desc, then id asc
    position: np.ndarray  # inverse of order: rank of each item in that tie order


def build_context(interactions: pa.Table, items: pa.Table, config: CandidatesConfig) -> Context:
    """Matrix, popularity counts and the item -> author map."""
    m = build_matrix(interactions)
    n_items = len(m.items)
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
    return Context(m, m.binary, popularity, recent, item_author, order, position)


def neighbour_matrix(table: pa.Table, key: str, vocab: IdVocab) -> sp.csr_matrix:
    """A published neighbours table (id, neighbour_id, weight) as a sparse square matrix."""
    rows = vocab.index(table.column(key))
    cols = vocab.index(table.column(NEIGHBOUR_ID))
    w = table.column(WEIGHT).to_numpy()
    return sp.csr_matrix((w, (rows, cols)), shape=(len(vocab), len(vocab)))


def factors_array(table: pa.Table, key: str, vocab: IdVocab) -> np.ndarray:
    """A published factors table (id, factors list) as a dense array in vocabulary order."""
    idx = vocab.index(table.column(key))
    flat = pc.list_flatten(table.column("factors")).to_numpy()
    dim = len(flat) // max(table.num_rows, 1)
    out = np.zeros((len(vocab), dim), dtype=np.float32)
    out[idx] = flat.reshape(table.num_rows, dim)
    return out


def _top_n(scores: np.ndarray, n: int, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """Top-n columns per row of a (b, n_items) block, -inf meaning 'not proposed'.

    Ties go to the more popular item, then the lower id: columns are permuted into that tie
    order so `top_k_indices` (ties to the lower index) does the rest. Returns (cols, ranks):
    (b, n) item indices and 1-based ranks, with rank 0 where fewer than n were proposed.
    """
    permuted = scores[:, ctx.order]
    pick = top_k_indices(permuted, n)  # (b, n) positions in tie order
    vals = np.take_along_axis(permuted, pick, axis=1)
    order = np.lexsort((pick, -vals), axis=1)
    pick = np.take_along_axis(pick, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    ranks = np.where(np.isfinite(vals), np.arange(1, pick.shape[1] + 1), 0)
    return ctx.order[pick], ranks


def _blocks(n_users: int, n_items: int, block_elements: int) -> Iterator[slice]:
    step = max(1, block_elements // max(n_items, 1))
    for start in range(0, n_users, step):
        yield slice(start, min(start + step, n_users))


def _user_pearson(blk: slice, nbrs: sp.csr_matrix, ctx: Context) -> np.ndarray:
    """p_i = |{v in U(u) : v rated i}| / |U(u)| for the block's users: (b, n_items)."""
    a = nbrs[blk].copy()
    a.data = np.ones_like(a.data)
    size = np.asarray(a.sum(axis=1)).ravel()  # |U(u)|
    counts = (a @ ctx.binary).toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / size[:, None]
    return np.where(counts > 0, p, -np.inf)


def _item_pearson(blk: slice, nbrs: sp.csr_matrix, ctx: Context) -> np.ndarray:
    """p_i = max over the user's items i0 of w_{i0 i}, over items with w > alpha: (b, n_items)."""
    hist = ctx.m.weights[blk]
    b = hist.shape[0]
    users = np.repeat(np.arange(b), np.diff(hist.indptr))  # one entry per (u, i0)
    expanded = nbrs[hist.indices]  # rows = the user's items i0, cols = neighbours j
    counts = np.diff(expanded.indptr)
    out = np.full((b, ctx.m.weights.shape[1]), -np.inf)
    np.maximum.at(out, (np.repeat(users, counts), expanded.indices), expanded.data)
    return out


def generate(
    interactions: pa.Table, items: pa.Table, user_neighbours: pa.Table, item_neighbours: pa.Table,
    user_factors: pa.Table, item_factors: pa.Table, config: CandidatesConfig,
) -> pa.Table:
    """The candidates table: per (user, unseen item), each source's score and rank.

    Columns: user_id, item_id, then `<source>_score` / `<source>_rank` (null when that source
    did not propose the item) for every source, and n_sources. Rows are ordered by user, item.
    """
    ctx = build_context(interactions, items, config)
    m = ctx.m
    n_users, n_items = m.weights.shape
    unbrs = neighbour_matrix(user_neighbours, USER_ID, m.users)
    inbrs = neighbour_matrix(item_neighbours, ITEM_ID, m.items)
    uf = factors_array(user_factors, USER_ID, m.users)
    itf = factors_array(item_factors, ITEM_ID, m.items)
    # Share of the user's history by each author, then spread back onto that author's items.
    counts = np.diff(m.weights.indptr).astype(np.float64)
    affinity = sp.diags(1.0 / np.maximum(counts, 1)) @ (ctx.binary @ ctx.item_author)
    author_scores = (affinity @ ctx.item_author.T).tocsr()
    sizes = {s: getattr(config, s) for s in SOURCES}
    parts: list[pa.Table] = []
    for blk in _blocks(n_users, n_items, config.block_elements):
        seen = ctx.binary[blk].toarray() > 0  # (b, n_items); excluded from every source
        raw = {
            "user_pearson": lambda b=blk: _user_pearson(b, unbrs, ctx),
            "item_pearson": lambda b=blk: _item_pearson(b, inbrs, ctx),
            "als": lambda b=blk: uf[b] @ itf.T,
            "popular": lambda b=blk: np.broadcast_to(
                np.where(ctx.recent > 0, ctx.recent, -np.inf), (b.stop - b.start, n_items)),
            "author": lambda b=blk: np.where(
                author_scores[b].toarray() > 0, author_scores[b].toarray(), -np.inf),
        }
        b = blk.stop - blk.start
        score = np.full((len(SOURCES), b, n_items), np.nan)
        rank = np.zeros((len(SOURCES), b, n_items), dtype=np.int32)
        for s, name in enumerate(SOURCES):
            if sizes[name] == 0:
                continue
            block_scores = np.array(raw[name](), dtype=np.float64)
            block_scores[seen] = -np.inf
            cols, ranks = _top_n(block_scores, sizes[name], ctx)
            rows = np.broadcast_to(np.arange(b)[:, None], cols.shape)
            ok = ranks > 0
            score[s, rows[ok], cols[ok]] = block_scores[rows[ok], cols[ok]]
            rank[s, rows[ok], cols[ok]] = ranks[ok]
        proposed = rank > 0  # (S, b, n_items)
        any_rows, any_cols = np.nonzero(proposed.any(axis=0))
        columns: dict[str, pa.Array] = {
            USER_ID: m.users.take(any_rows + blk.start),
            ITEM_ID: m.items.take(any_cols),
        }
        for s, name in enumerate(SOURCES):
            hit = proposed[s, any_rows, any_cols]
            columns[f"{name}_score"] = pa.array(score[s, any_rows, any_cols], mask=~hit)
            columns[f"{name}_rank"] = pa.array(rank[s, any_rows, any_cols], mask=~hit)
        columns[N_SOURCES] = pa.array(proposed[:, any_rows, any_cols].sum(axis=0).astype(np.int8))
        parts.append(pa.table(columns))
    return pa.concat_tables(parts) if parts else CANDIDATES_SCHEMA.empty_table()


CANDIDATES_SCHEMA = pa.schema(
    [pa.field(USER_ID, pa.string(), nullable=False), pa.field(ITEM_ID, pa.string(), nullable=False)]
    + [f for name in SOURCES for f in (pa.field(f"{name}_score", pa.float64()),
                                       pa.field(f"{name}_rank", pa.int32()))]
    + [pa.field(N_SOURCES, pa.int8(), nullable=False)]
)
