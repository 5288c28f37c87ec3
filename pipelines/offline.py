"""Side-by-side offline evaluation: every candidate source, fusion, the ranker and diversity."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from features.columns import ITEM_ID, USER_ID
from pipelines.evaluate import (
    SplitConfig,
    top_k_from_scores,
)

log = logging.getLogger(__name__)

EVALUATION_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("ndcg_at_10", pa.float64(), nullable=False),
    pa.field("recall_at_20", pa.float64(), nullable=False),
    pa.field("coverage_at_10", pa.float64(), nullable=False),
    pa.field("distinct_authors_at_10", pa.float64(), nullable=False),
    pa.field("max_per_author_at_10", pa.float64(), nullable=False),
    pa.field("worst_max_per_author_at_10", pa.int64(), nullable=False),
    pa.field("users", pa.int64(), nullable=False),
])


class EvaluationConfig(BaseModel):
    """Whether the nightly run evaluates itself, and the protocol's split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Run the offline evaluation as a stage of the nightly flow."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """The hold-out rule (last 10% per user with >= 10 interactions, by time then item id)."""


@dataclass(frozen=True)
class SplitSummary:
    """The sizes of an evaluation's train and test parts, and whether the split used time."""

    train_rows: int
    test_rows: int
    temporal: bool


def source_lists(candidates: pa.Table, source: str, k: int) -> pa.Table:
    """A single source's own top-k lists, read from its rank column."""
    rank = candidates.column(f"{source}_rank")
    sub = candidates.filter(pc.is_valid(rank)).select([USER_ID, ITEM_ID, f"{source}_rank"])
    scored = sub.append_column("score", pc.negate(pc.cast(sub.column(2), pa.float64())))
    return top_k_from_scores(scored, k)


def report_markdown(table: pa.Table, split: SplitSummary, importance: Mapping[str, float]
                    ) -> str:
    """A markdown report of the evaluation table and the protocol that produced it."""
    protocol = (
        "per user with >= 10 interactions, the last max(1, floor(0.1 n)) by (timestamp, item id)"
        if split.temporal else
        "**no time stamps in the data: a seeded random 10% per user was held out**")
    lines = [
        "# Offline evaluation", "",
        f"Protocol: {protocol}; test items unseen in train dropped; "
        f"{split.train_rows:,} train and {split.test_rows:,} test interactions. "
        "Every interaction is an implicit positive; lists exclude the user's train items.", "",
        "| model | NDCG@10 | Recall@20 | coverage@10 | distinct authors@10 | max/author@10 "
        "(mean / worst list) | users |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_pylist():
        lines.append(
            f"| {r['model']} | {r['ndcg_at_10']:.4f} | {r['recall_at_20']:.4f} | "
            f"{r['coverage_at_10']:.3f} | {r['distinct_authors_at_10']:.2f} | "
            f"{r['max_per_author_at_10']:.2f} / {r['worst_max_per_author_at_10']} | "
            f"{r['users']} |")
    top = sorted(importance.items(), key=lambda kv: -kv[1])[:10]
    lines += ["", ("Ranker features by total gain: "
                   + ", ".join(f"{name} ({gain:,.0f})" for name, gain in top)) if top else
              "The ranker was not trained (too little data); fusion ordering was evaluated.", ""]
    return "\n".join(lines)
