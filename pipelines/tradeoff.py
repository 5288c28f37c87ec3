"""The diversity trade-off curve: NDCG@10 and items-per-author@10 for each author cap."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from features.columns import ITEM_ID, RANK, USER_ID
from pipelines.diversify import DiversifyConfig, diversify
from pipelines.evaluate import Metrics, evaluate_lists

TRADEOFF_SCHEMA = pa.schema([
    pa.field("max_per_author", pa.int64(), nullable=True),  # null = uncapped
    pa.field("author_penalty", pa.float64(), nullable=False),
    pa.field("ndcg_at_10", pa.float64(), nullable=False),
    pa.field("recall_at_20", pa.float64(), nullable=False),
    pa.field("ndcg_change", pa.float64(), nullable=False),  # relative to uncapped
    pa.field("distinct_authors_at_10", pa.float64(), nullable=False),
    pa.field("max_per_author_at_10", pa.float64(), nullable=False),  # mean over lists
    pa.field("worst_max_per_author_at_10", pa.int64(), nullable=False),
    pa.field("users", pa.int64(), nullable=False),
])

DEFAULT_CAPS: tuple[int | None, ...] = (1, 2, 3, None)


def tradeoff_curve(
    scored: pa.Table, test: pa.Table, items: pa.Table, n_items: int,
    config: DiversifyConfig | None = None, caps: Sequence[int | None] = DEFAULT_CAPS,
    penalties: Sequence[float] | None = None,
) -> pa.Table:
    """Re-rank `scored(user_id, item_id, score, sources)` under each cap and evaluate on `test`.

    `config` gives the list length (raised to 20 so Recall@20 is defined) and the default
    penalty; `penalties` adds rows for other MMR penalties (uncapped rows need none). The
    uncapped row is the plain top-n by score (ties: lower item id) and is the baseline of
    `ndcg_change` = ndcg / ndcg_uncapped - 1. Metrics follow `evaluate_lists`.
    """
    base = config or DiversifyConfig()
    n = max(base.n, 20)
    penalties = list(penalties) if penalties is not None else [base.author_penalty]
    # An uncapped list is the cap at n: no author can exceed it.
    uncapped = _metrics(scored, test, items, n_items, DiversifyConfig(n=n, max_per_author=n))
    rows: list[dict[str, object]] = []
    for cap in caps:
        for penalty in ([0.0] if cap is None else penalties):
            m = uncapped if cap is None else _metrics(scored, test, items, n_items,
                                                      DiversifyConfig(n=n, max_per_author=cap,
                                                                      author_penalty=penalty))
            rows.append(_row(cap, penalty, m, uncapped.ndcg_at_10))
    return pa.Table.from_pylist(rows, schema=TRADEOFF_SCHEMA)


def curve_from_lists(lists: dict[int | None, pa.Table], test: pa.Table, items: pa.Table,
                     n_items: int, penalty: float) -> pa.Table:
    """The trade-off table of ready-made top-n lists per cap (None = uncapped, the baseline).

    For callers that already re-ranked (the nightly evaluation), so nothing is recomputed.
    """
    uncapped = evaluate_lists(lists[None], test, items, n_items)
    ref = uncapped.ndcg_at_10
    rows: list[dict[str, object]] = []
    for cap, recs in sorted(lists.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        m = uncapped if cap is None else evaluate_lists(recs, test, items, n_items)
        rows.append(_row(cap, 0.0 if cap is None else penalty, m, ref))
    return pa.Table.from_pylist(rows, schema=TRADEOFF_SCHEMA)


def _row(cap: int | None, penalty: float, m: Metrics, ref: float) -> dict[str, object]:
    """One trade-off row; `ref` is the uncapped NDCG@10 the change is relative to."""
    return {
        "max_per_author": cap, "author_penalty": penalty,
        "ndcg_at_10": m.ndcg_at_10, "recall_at_20": m.recall_at_20,
        "ndcg_change": m.ndcg_at_10 / ref - 1.0 if ref > 0 else 0.0,
        "distinct_authors_at_10": m.distinct_authors_at_10,
        "max_per_author_at_10": m.max_per_author_at_10,
        "worst_max_per_author_at_10": m.worst_max_per_author_at_10, "users": m.users,
    }


def _metrics(scored: pa.Table, test: pa.Table, items: pa.Table, n_items: int,
             config: DiversifyConfig) -> Metrics:
    lists = diversify(scored, items, config).select([USER_ID, ITEM_ID, RANK])
    return evaluate_lists(lists, test, items, n_items)


def tradeoff_markdown(table: pa.Table, title: str = "Diversity trade-off") -> str:
    """A markdown table of `tradeoff_curve`'s rows, for the evaluation report."""
    lines = [
        f"### {title}", "",
        "| max per author | MMR penalty | NDCG@10 | change vs uncapped | Recall@20 "
        "| distinct authors@10 | items per author@10 (mean / worst list) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_pylist():
        cap = "uncapped" if r["max_per_author"] is None else str(r["max_per_author"])
        lines.append(
            f"| {cap} | {r['author_penalty']:g} | {r['ndcg_at_10']:.4f} | "
            f"{100 * r['ndcg_change']:+.1f}% | {r['recall_at_20']:.4f} | "
            f"{r['distinct_authors_at_10']:.2f} | {r['max_per_author_at_10']:.2f} / "
            f"{r['worst_max_per_author_at_10']} |")
    return "\n".join(lines) + "\n"
