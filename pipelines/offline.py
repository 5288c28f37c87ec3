"""Side-by-side offline evaluation: every candidate source, fusion, the ranker and diversity."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from features.columns import ITEM_ID, RANK, USER_ID
from pipelines import diversify as div
from pipelines import ranking as rk
from pipelines.evaluate import (
    Metrics,
    Split,
    SplitConfig,
    evaluate_lists,
    popularity_lists,
    split_last,
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
    pa.field("seconds", pa.float64(), nullable=False),
])


class EvaluationConfig(BaseModel):
    """Whether the nightly run evaluates itself, and the protocol's split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Run the offline evaluation as a stage of the nightly flow."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """The hold-out rule (last 10% per user with >= 10 interactions, by time then item id)."""


@dataclass
class Evaluation:
    """The evaluation table, its markdown report and the split it used."""

    table: pa.Table
    report: str
    split: Split


def source_lists(candidates: pa.Table, source: str, k: int) -> pa.Table:
    """A single source's own top-k lists, read from its rank column."""
    rank = candidates.column(f"{source}_rank")
    sub = candidates.filter(pc.is_valid(rank)).select([USER_ID, ITEM_ID, f"{source}_rank"])
    scored = sub.append_column("score", pc.negate(pc.cast(sub.column(2), pa.float64())))
    return top_k_from_scores(scored, k)


def evaluate_models(
    interactions: pa.Table, items: pa.Table, settings: rk.CandidateSettings,
    ranking: rk.RankingConfig, fusion: div.FusionConfig, diversify: div.DiversifyConfig,
    split_cfg: SplitConfig, extra: Mapping[str, pa.Table] | None = None, k: int = 20,
) -> Evaluation:
    """Split, build candidates from train, and score each approach's top-k on the test part.

    The ranker is trained on a split of train made by the same rule (never on test).
    `extra` adds lists computed elsewhere (e.g. EASE in bench/).
    """
    split = split_last(interactions, split_cfg)
    users = sorted(set(split.test.column(USER_ID).to_pylist()))
    n_items = len(set(split.train.column(ITEM_ID).to_pylist()))
    rows: list[dict[str, object]] = []

    def add(name: str, lists: pa.Table, seconds: float) -> Metrics:
        m = evaluate_lists(lists, split.test, items, n_items)
        rows.append({**m.as_row(name), "seconds": round(seconds, 2)})
        log.info("evaluate %s: ndcg@10 %.4f recall@20 %.4f", name, m.ndcg_at_10, m.recall_at_20)
        return m

    t = time.perf_counter()
    add("popularity", popularity_lists(split.train, users, k), time.perf_counter() - t)
    t = time.perf_counter()
    cs = rk.build_candidates(split.train, items, settings)
    t_cand = time.perf_counter() - t
    for source in ("user_pearson", "item_pearson", "als"):
        add(source, source_lists(cs.candidates, source, k), t_cand)
    t = time.perf_counter()
    fused = div.fuse(cs.candidates, fusion)
    add("fusion", top_k_from_scores(fused, k), t_cand + time.perf_counter() - t)
    t = time.perf_counter()
    importance: dict[str, float] = {}
    try:
        model = rk.fit_ranker(split.train, items, settings, ranking)
    except rk.TooLittleData as exc:
        log.warning("evaluation: ranker skipped: %s", exc)
        scored, ranker_name = fused, "fusion"
    else:
        importance = model.importance()
        scored = rk.score(model, rk.features_for(cs, split.train, items, settings),
                          cs.candidates)
        add("lightgbm", top_k_from_scores(scored, k), t_cand + time.perf_counter() - t)
        ranker_name = "lightgbm"
    t_rank = t_cand + time.perf_counter() - t
    t = time.perf_counter()
    diverse = div.diversify(scored, items, div.DiversifyConfig(
        n=max(k, diversify.n), max_per_author=diversify.max_per_author))
    add(f"{ranker_name}+diversity", diverse.select([USER_ID, ITEM_ID, RANK]),
        t_rank + time.perf_counter() - t)
    for name, lists in (extra or {}).items():
        add(name, lists, 0.0)
    table = pa.Table.from_pylist(rows, schema=EVALUATION_SCHEMA)
    return Evaluation(table, report_markdown(table, split, importance), split)


def report_markdown(table: pa.Table, split: Split, importance: Mapping[str, float]) -> str:
    """A markdown report of the evaluation table and the protocol that produced it."""
    protocol = (
        "per user with >= 10 interactions, the last max(1, floor(0.1 n)) by (timestamp, item id)"
        if split.temporal else
        "**no time stamps in the data: a seeded random 10% per user was held out**")
    lines = [
        "# Offline evaluation", "",
        f"Protocol: {protocol}; test items unseen in train dropped; "
        f"{split.train.num_rows:,} train and {split.test.num_rows:,} test interactions. "
        "Every interaction is an implicit positive; lists exclude the user's train items.", "",
        "| model | NDCG@10 | Recall@20 | coverage@10 | distinct authors@10 | max/author@10 "
        "(mean / worst list) | users | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table.to_pylist():
        lines.append(
            f"| {r['model']} | {r['ndcg_at_10']:.4f} | {r['recall_at_20']:.4f} | "
            f"{r['coverage_at_10']:.3f} | {r['distinct_authors_at_10']:.2f} | "
            f"{r['max_per_author_at_10']:.2f} / {r['worst_max_per_author_at_10']} | "
            f"{r['users']} | {r['seconds']:.1f} |")
    top = sorted(importance.items(), key=lambda kv: -kv[1])[:10]
    lines += ["", ("Ranker features by total gain: "
                   + ", ".join(f"{name} ({gain:,.0f})" for name, gain in top)) if top else
              "The ranker was not trained (too little data); fusion ordering was evaluated.", ""]
    return "\n".join(lines)
