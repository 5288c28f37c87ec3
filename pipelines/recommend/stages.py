"""The nightly job's stages, each a function over named tables, planned per time cut-off."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.columns import AUTHOR_ID, ITEM_ID, RANK, USER_ID
from features.errors import DataWarning
from features.matrix import build_matrix
from features.ranking import HistoryStats, candidate_features, history_stats
from models.neighbours import Prepared, merge_parts, pearson_blocks, prepare, scan_part
from models.ranker import LambdaRanker
from pipelines import candidates as cand
from pipelines import diversify as div
from pipelines import embeddings, ingest, neighbours, offline, tradeoff
from pipelines import ranking as rk
from pipelines.evaluate import (
    SplitConfig,
    evaluate_lists,
    popularity_lists,
    split_last,
    top_k_from_scores,
)
from pipelines.recommend import report
from pipelines.recommend.config import RunConfig, section
from pipelines.recommend.tables import WORK, StageIO, table_path, write_part
from pipelines.store import atomic_path, fault_point, write_text_atomic

log = logging.getLogger(__name__)

SERVING = "h0"


@dataclass(frozen=True)
class History:
    """One interaction history the sources are computed for: everything, or a time cut-off.

    `h0` is the whole history (serving). A cut-off is its parent with each user's last part
    held out by the split rule at config path `split`: its `history` feeds the sources and its
    `target` labels the ranker's training rows (or scores the offline evaluation).
    """

    name: str
    parent: str | None = None
    split: str | None = None  # dotted config path of the split rule

    def table(self, base: str) -> str:
        """The run-folder name of this history's table `base` (history, target, candidates...)."""
        if self.name == SERVING:
            return "interactions" if base == "history" else base
        return f"{self.name}/{base}"


@dataclass(frozen=True)
class Stage:
    """A named computation: reads tables, writes tables, keyed by the config it uses."""

    name: str
    kind: str  # module = stage = task kind: ingest, split, user_neighbours, ..., evaluate
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    fn: Callable[[StageIO, RunConfig], dict[str, Any] | None] = field(compare=False, repr=False)
    config: tuple[str, ...] = ()
    """Dotted config paths whose values shape the output (besides the upstream stages)."""
    timeout_s: float | None = 6 * 3600  # a hung stage fails the run instead of blocking the night


def _ingest(io: StageIO, cfg: RunConfig) -> dict[str, Any]:
    res = ingest.ingest(cfg.source)
    for name in ("interactions", "items", "rejected"):
        io.write(name, getattr(res, name))
    write_warehouse(io.folder, {n: getattr(res, n) for n in ("interactions", "items",
                                                            "rejected")})
    io.files.append("warehouse.duckdb")
    report = dict(getattr(res, "report", {}) or {})
    info = {"report": report, "fingerprint": dict(getattr(res, "fingerprint", {}) or {})}
    io.write_file("ingest.json", json.dumps(info, sort_keys=True, default=str).encode())
    return info


def write_warehouse(folder: Path, tables: dict[str, pa.Table]) -> Path:
    """Store the ingested tables in a DuckDB database file (`warehouse.duckdb`) in the run."""
    target = folder / "warehouse.duckdb"
    with atomic_path(target) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name, table in tables.items():
                con.register(f"{name}_arrow", table)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return target


def _split(io: StageIO, cfg: RunConfig, h: History, parent: History) -> None:
    rule = SplitConfig.model_validate(section(cfg, str(h.split)))
    split = split_last(io.read(parent.table("history")), rule)
    io.write(h.table("history"), split.train)
    io.write(h.table("target"), split.test)


def _pearson_part(shared: tuple[Prepared, int], i: int, path: Path) -> int:
    """One worker's part of the Pearson scan, saved as its k-best buffers."""
    prep, parts = shared
    best = scan_part(prep, i, parts)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, *best)
    tmp.replace(path)
    return 0


def _neighbours(io: StageIO, cfg: RunConfig, h: History, side: str) -> None:
    """Top-k Pearson neighbours of users or items; split over the workers on a cluster."""
    if side == "user" and cfg.candidates.user_pearson == 0:
        # Only the user-Pearson source reads user neighbours: with it off, none are computed
        # (their cost grows with the square of the users who share popular items).
        io.write(h.table("user_neighbours"), neighbours.neighbours_schema(USER_ID).empty_table())
        return
    m = build_matrix(io.read(h.table("history")))
    config = cfg.user_neighbours if side == "user" else cfg.item_neighbours
    mat, vocab, key = ((m.weights, m.users, USER_ID) if side == "user"
                       else (m.weights.T.tocsr(), m.items, ITEM_ID))
    parts = int(getattr(io.engine, "parallelism", 1))
    prep = prepare(mat, config) if parts > 1 else None
    if prep is None:
        nb = pearson_blocks(mat, config)
    else:  # the prepared matrix goes to every worker once; each scans rows u = i mod parts
        scratch = io.folder / WORK / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        paths = [scratch / f"{h.name}-{side}-{i}.npz" for i in range(parts)]
        io.engine.map_shards(_pearson_part, (prep, parts), paths)
        buffers = []
        for path in paths:
            with np.load(path) as z:
                buffers.append(tuple(z[f"arr_{j}"] for j in range(4)))
            path.unlink()
        nb = merge_parts(prep, buffers)
    io.write(h.table(f"{side}_neighbours"), neighbours.as_table(nb, vocab, key))


def _als(io: StageIO, cfg: RunConfig, h: History, start: History | None = None) -> None:
    begin = None if start is None else (io.read(start.table("user_factors")),
                                        io.read(start.table("item_factors")))
    users, items = embeddings.als_factors(io.read(h.table("history")), cfg.als, begin)
    io.write(h.table("user_factors"), users)
    io.write(h.table("item_factors"), items)


def _candidates_shard(shared: tuple[cand.Context, cand.CandidatesConfig, list[slice]], i: int,
                      path: Path) -> int:
    ctx, config, shards = shared
    fault_point("candidates-shard")  # crash tests kill the worker process here
    return write_part(cand.generate_shard(ctx, shards[i], config), path)


def _candidates(io: StageIO, cfg: RunConfig, h: History) -> None:
    t = {n: io.read(h.table(n)) for n in ("history", "user_neighbours", "item_neighbours",
                                          "user_factors", "item_factors")}
    ctx = cand.build_context(t["history"], io.read("items"), t["user_neighbours"],
                             t["item_neighbours"], t["user_factors"], t["item_factors"],
                             cfg.candidates, cfg.ease)
    only = None
    if h.parent is not None:  # a cut-off: only its target's users get training rows or lists
        only = ctx.m.users.index(io.read(h.table("target")).column(USER_ID), strict=False)
        only = only[only >= 0]
    shards = cand.user_shards(ctx.n_users, cfg.shards.users, only)
    paths = io.shard_paths(h.table("candidates"), len(shards))
    rows = io.engine.map_shards(_candidates_shard, (ctx, cfg.candidates, shards), paths)
    io.record_parts(h.table("candidates"), paths, rows)


def _stats(io: StageIO, cfg: RunConfig, h: History) -> HistoryStats:
    return history_stats(
        io.read(h.table("history")), io.read("items"), io.read(h.table("user_factors")),
        io.read(h.table("item_factors")),
        recent_days=cfg.candidates.popular_window_days)


def features(candidates: pa.Table, history: pa.Table, stats: HistoryStats) -> pl.DataFrame:
    """Feature rows of one shard of candidates, sorted by (user, item)."""
    return candidate_features(candidates, history, stats).sort([USER_ID, ITEM_ID])


def by_shard(table: pa.Table, parts: list[Path]) -> list[pa.Table]:
    """The rows of `table` for each candidates part's users, in one pass over both.

    Shards then touch only their own users' rows: a shard that filtered the whole table
    would make the stage's work grow with shards x history.
    """
    if not parts:
        return []
    owners = pl.concat([pl.read_parquet(p, columns=[USER_ID]).unique()
                        .with_columns(pl.lit(i, pl.Int32).alias("_shard"))
                        for i, p in enumerate(parts)])
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    groups = df.join(owners, on=USER_ID, how="inner").partition_by(
        "_shard", as_dict=True, include_key=False, maintain_order=True)
    empty = df.clear()
    return [groups.get((i,), empty).to_arrow() for i in range(len(parts))]


def _train_rows_shard(shared: tuple[Any, ...], i: int, path: Path) -> int:
    parts, histories, targets, stats, sampling, seed = shared
    part = pq.read_table(parts[i])
    target = targets[i]
    frame = rk.label(features(part, histories[i], stats), target)
    users = pl.Series(target[USER_ID].unique().to_pylist(), dtype=pl.String)
    frame = rk.sample_rows(frame.filter(pl.col(USER_ID).is_in(users.implode())), sampling, seed)
    return write_part(frame.to_arrow(), path)


def _train_rows(io: StageIO, cfg: RunConfig, h: History) -> None:
    parts = io.parts(h.table("candidates"))
    shared = (parts, by_shard(io.read(h.table("history")), parts),
              by_shard(io.read(h.table("target")), parts), _stats(io, cfg, h),
              cfg.ranker.sampling, cfg.ranker.model.seed)
    paths = io.shard_paths(h.table("train_rows"), len(parts))
    io.record_parts(h.table("train_rows"), paths,
                    io.engine.map_shards(_train_rows_shard, shared, paths))


def _ranker(io: StageIO, cfg: RunConfig, cutoffs: tuple[History, ...], out: str) -> None:
    frames = []
    for n, h in enumerate(cutoffs):
        for p in io.parts(h.table("train_rows")):
            df = pl.from_arrow(pq.read_table(p))
            assert isinstance(df, pl.DataFrame)
            if df.height:  # float32 at once: the model reads float32, half the memory
                frames.append(df.with_columns(pl.col(pl.Float64).cast(pl.Float32),
                                              pl.lit(n, pl.Int8).alias(rk.CUTOFF)))
    try:
        if not frames:
            raise rk.TooLittleData("no user has enough interactions to hold out a training "
                                   "target")
        model: dict[str, Any] = rk.fit_on(frames, cfg.ranker, io.engine).to_dict()
    except rk.TooLittleData as exc:
        model = {"fallback": "fusion", "reason": str(exc)}
    io.write_file(out, json.dumps(model, sort_keys=True).encode())


def load_ranker(folder: Path, name: str) -> tuple[LambdaRanker | None, str]:
    """The ranker a ranker stage wrote, or None and the reason it fell back to fusion."""
    data = json.loads((folder / name).read_text())
    if "fallback" in data:
        return None, str(data["reason"])
    return LambdaRanker.from_dict(data), ""


def _score_shard(shared: tuple[Any, ...], i: int, path: Path) -> int:
    parts, histories, stats, model, fusion = shared
    part = pq.read_table(parts[i])
    if model is None:
        return write_part(div.fuse(part, fusion), path)
    # In candidates order (users and items in their natural id order): scores are per row,
    # so the sort `features` does for training rows would only cost time here.
    return write_part(rk.score(model, candidate_features(part, histories[i], stats), part),
                      path)


def _score(io: StageIO, cfg: RunConfig, h: History, ranker_file: str | None) -> dict[str, Any]:
    model, reason = (None, "ranking = 'fusion'") if ranker_file is None else load_ranker(
        io.folder, ranker_file)
    if model is None and ranker_file is not None:
        warnings.warn(f"ranker not trained ({reason}); ordering by fusion instead", DataWarning,
                      stacklevel=2)
    parts = io.parts(h.table("candidates"))
    stats = _stats(io, cfg, h) if model is not None else None
    histories = by_shard(io.read(h.table("history")), parts) if model is not None else None
    shared = (parts, histories, stats, model, cfg.fusion)
    paths = io.shard_paths(h.table("scored"), len(parts))
    io.record_parts(h.table("scored"), paths, io.engine.map_shards(_score_shard, shared, paths))
    info = {"scored_by": "lightgbm" if model is not None else "fusion", "reason": reason}
    io.write_file("scoring.json", json.dumps(info, sort_keys=True).encode())
    return info


RECOMMENDATIONS_SCHEMA = pa.schema([
    *div.RECOMMENDATIONS_SCHEMA,
    pa.field("title", pa.string()),
    pa.field("ranker", pa.string(), nullable=False),
])
"""The published lists: the diversified rows plus the item's title and which ranker scored
them (`lightgbm` scores and `fusion` scores are not comparable)."""


def _diversify_shard(shared: tuple[Any, ...], i: int, path: Path) -> int:
    parts, items, titles, authors, config, ranker = shared
    scored = pq.read_table(parts[i])
    frame = pl.from_arrow(scored)
    assert isinstance(frame, pl.DataFrame)
    # The report's before-diversity figure, from this shard's top n by score.
    # Scored parts keep the candidates' order (each user's items in vocabulary order).
    before = report.author_concentration(report.top_by_score(frame, config.n,
                                                             in_item_order=True), authors)
    write_text_atomic(json.dumps(before), _before_path(path))
    recs = pl.from_arrow(div.diversify(scored, items, config))
    assert isinstance(recs, pl.DataFrame)
    out = recs.join(titles, on=ITEM_ID, how="left", maintain_order="left").with_columns(
        pl.lit(ranker, pl.String).alias("ranker"))
    return write_part(out.to_arrow().select(RECOMMENDATIONS_SCHEMA.names)
                      .cast(RECOMMENDATIONS_SCHEMA), path)


def _before_path(part: Path) -> Path:
    return part.with_name(f".{part.stem}.before.json")


def _diversify(io: StageIO, cfg: RunConfig) -> None:
    parts = io.parts("scored")
    items = io.read("items")
    titles = pl.from_arrow(items.select([ITEM_ID, "title"]))
    authors = pl.from_arrow(items.select([ITEM_ID, AUTHOR_ID]))
    ranker = json.loads((io.folder / "scoring.json").read_text())["scored_by"]
    paths = io.shard_paths("recommendations", len(parts))
    io.record_parts("recommendations", paths, io.engine.map_shards(
        _diversify_shard, (parts, items, titles, authors, cfg.diversify, ranker), paths))
    before = report.add_counts([json.loads(_before_path(p).read_text()) for p in paths])
    for p in paths:
        _before_path(p).unlink()
    io.write_file(report.CONCENTRATION, json.dumps({"before": before}).encode())


EVAL_K = 20
EVAL_SOURCES = ("user_pearson", "item_pearson", "als", "ease")
LIST_SCHEMA = pa.schema([pa.field(USER_ID, pa.string()), pa.field(ITEM_ID, pa.string()),
                         pa.field(RANK, pa.int32())])


def _evaluate_shard(shared: tuple[Any, ...], i: int, path: Path) -> int:
    """Every approach's top-k lists for one shard of the evaluation's users."""
    parts, histories, stats, model, fusion, diversify_cfg, items = shared
    part = pq.read_table(parts[i])
    lists = []

    def add(name: str, table: pa.Table) -> None:
        lists.append(table.select([USER_ID, ITEM_ID, RANK]).cast(LIST_SCHEMA).append_column(
            "model", pa.array([name] * table.num_rows, pa.string())))

    for source in EVAL_SOURCES:
        if part.num_rows and part.column(f"{source}_rank").null_count < part.num_rows:
            add(source, offline.source_lists(part, source, EVAL_K))
    fused = div.fuse(part, fusion)
    add("fusion", top_k_from_scores(fused, EVAL_K))
    scored, name = fused, "fusion"
    if model is not None:
        scored, name = rk.score(model, features(part, histories[i], stats), part), "lightgbm"
        add(name, top_k_from_scores(scored, EVAL_K))
    n = max(EVAL_K, diversify_cfg.n)
    diverse = div.diversify(scored, items, div.DiversifyConfig(
        **{**diversify_cfg.model_dump(), "n": n}))
    add(f"{name}+diversity", diverse)
    # The trade-off curve's other caps (the configured cap and uncapped are the lists above).
    for cap in tradeoff.DEFAULT_CAPS:
        if cap is not None and cap != diversify_cfg.max_per_author:
            add(f"{TRADEOFF}{cap}", div.diversify(scored, items, div.DiversifyConfig(
                **{**diversify_cfg.model_dump(), "n": n, "max_per_author": cap})))
    return write_part(pa.concat_tables(lists), path)


TRADEOFF = "cap="
"""Model-name prefix of the evaluation lists re-ranked under another author cap."""


def _evaluate(io: StageIO, cfg: RunConfig, h: History, ranker_file: str | None
              ) -> dict[str, Any]:
    train, test = io.read(h.table("history")), io.read(h.table("target"))
    items = io.read("items")
    if test.num_rows == 0:
        rule = section(cfg, str(h.split))
        reason = (f"no user has the {rule['min_interactions']} interactions the hold-out needs "
                  "(evaluation.split.min_interactions); lower it, or set evaluation.enabled = "
                  "false")
        warnings.warn(f"offline evaluation skipped: {reason}", DataWarning, stacklevel=2)
        io.write("evaluation", offline.EVALUATION_SCHEMA.empty_table())
        io.write_file("evaluation.md", f"# Offline evaluation\n\nSkipped: {reason}.\n".encode())
        return {"status": "skipped", "reason": reason}
    model, reason = (None, "ranking = 'fusion'") if ranker_file is None else load_ranker(
        io.folder, ranker_file)
    parts = io.parts(h.table("candidates"))
    stats = _stats(io, cfg, h) if model is not None else None
    histories = by_shard(train, parts) if model is not None else None
    shared = (parts, histories, stats, model, cfg.fusion, cfg.diversify, items)
    paths = io.shard_paths(h.table("eval_lists"), len(parts))
    rows = io.engine.map_shards(_evaluate_shard, shared, paths)
    io.record_parts(h.table("eval_lists"), paths, rows)
    # Lazily: each approach's lists are read on their own, never all approaches at once.
    lists = pl.scan_parquet([str(p) for p in io.parts(h.table("eval_lists"))])
    users = sorted(set(test.column(USER_ID).to_pylist()))
    n_items = len(set(train.column(ITEM_ID).to_pylist()))
    ranker_name = "lightgbm" if model is not None else "fusion"
    present = set(lists.select(pl.col("model").unique()).collect()["model"].to_list())
    order = ["popularity", *(s for s in EVAL_SOURCES if s in present or s != "ease"),
             "fusion"]
    order += (["lightgbm"] if model is not None else []) + [f"{ranker_name}+diversity"]
    table_rows = []
    for name in order:
        if name == "popularity":
            recs = popularity_lists(train, users, EVAL_K)
        else:
            recs = lists.filter(pl.col("model") == name).drop("model").collect().to_arrow()
        m = evaluate_lists(recs, test, items, n_items)
        table_rows.append(m.as_row(name))
        log.info("evaluate %s: ndcg@10 %.4f recall@20 %.4f", name, m.ndcg_at_10,
                 m.recall_at_20)
    table = pa.Table.from_pylist(table_rows, schema=offline.EVALUATION_SCHEMA)
    importance = model.importance() if model is not None else {}
    split = offline.SplitSummary(train.num_rows, test.num_rows,
                                 train.column("ts").null_count < train.num_rows)

    def named(model_name: str) -> pa.Table:
        return lists.filter(pl.col("model") == model_name).drop("model").collect().to_arrow()

    by_cap: dict[int | None, pa.Table] = {None: named(ranker_name if model is not None
                                                       else "fusion"),
                                          cfg.diversify.max_per_author:
                                          named(f"{ranker_name}+diversity")}
    by_cap |= {c: named(f"{TRADEOFF}{c}") for c in tradeoff.DEFAULT_CAPS
               if c is not None and c not in by_cap}
    curve = tradeoff.curve_from_lists(by_cap, test, items, n_items,
                                      cfg.diversify.author_penalty)
    io.write("evaluation", table)
    io.write_file("evaluation.md", (offline.report_markdown(table, split, importance) + "\n"
                                    + tradeoff.tradeoff_markdown(
                                        curve, f"Diversity trade-off ({ranker_name} lists, "
                                        "caps on items per author)")).encode())
    return {"status": "done", "ranker": ranker_name, "tradeoff": curve.to_pylist(),
            **({"reason": reason} if reason else {})}


@dataclass(frozen=True)
class Plan:
    """Every stage of one night in run order, and which histories play which role."""

    stages: tuple[Stage, ...]
    histories: tuple[History, ...]

    def stage(self, name: str) -> Stage:
        """A stage by name."""
        return next(s for s in self.stages if s.name == name)

    def producers(self) -> dict[str, Stage]:
        """Table name -> the stage that writes it."""
        return {t: s for s in self.stages for t in s.writes}

    def upstream(self, stage: Stage) -> list[Stage]:
        """The stages whose outputs `stage` reads."""
        prod = self.producers()
        names = sorted({prod[r].name for r in stage.reads})
        return [self.stage(n) for n in names]


def _at(kind: str, h: History) -> str:
    return kind if h.name == SERVING else f"{kind}@{h.name}"


def plan(cfg: RunConfig, *, evaluate_only: bool = False) -> Plan:
    """The stages of a night: sources and candidates once per distinct history.

    The ranker's label cut-offs are successive splits of the history (h1, h2, ...). The
    offline evaluation's train/test split is the first cut-off when its rule equals the
    ranker's, and its own ranker trains on the next cut-offs, so nothing is computed twice.
    """
    lgbm = cfg.ranking == "lightgbm"
    n_cut = cfg.ranker.label_cutoffs
    evaluating = evaluate_only or cfg.evaluation.enabled
    hs: dict[str, History] = {SERVING: History(SERVING)}

    def chain(prefix: str, first_rule: str, n: int, start: int = 1) -> list[History]:
        out, parent = [], SERVING if start == 1 else f"{prefix}{start - 1}"
        for k in range(start, start + n):
            rule = first_rule if k == 1 else "ranker.label_split"
            hs.setdefault(f"{prefix}{k}", History(f"{prefix}{k}", parent, rule))
            out.append(hs[f"{prefix}{k}"])
            parent = f"{prefix}{k}"
        return out

    serving_cuts = chain("h", "ranker.label_split", n_cut) if lgbm and not evaluate_only else []
    eval_train: History | None = None
    eval_cuts: list[History] = []
    if evaluating:
        same = cfg.evaluation.split == cfg.ranker.label_split
        prefix = "h" if same else "e"
        rule = "ranker.label_split" if same else "evaluation.split"
        eval_train = chain(prefix, rule, 1)[0]
        if lgbm:
            eval_cuts = chain(prefix, rule, n_cut, start=2)

    user_off = cfg.candidates.user_pearson == 0
    stages: list[Stage] = [Stage("ingest", "ingest", (), ("interactions", "items", "rejected"),
                                 _ingest, ("source",), timeout_s=3600)]
    for h in hs.values():
        if h.parent is not None:
            parent = hs[h.parent]
            stages.append(Stage(_at("split", h), "split", (parent.table("history"),),
                                (h.table("history"), h.table("target")),
                                partial(_split, h=h, parent=parent), (str(h.split),)))
    # A history's ALS starts from the factors of the first cut-off taken from it (its history
    # minus each user's last part, so nothing it holds is from after that history), so the
    # deepest cut-off fits from scratch and each one above refines the one below it.
    child = {} if cfg.als.warm_epochs == 0 else {
        h.parent: h for h in reversed(list(hs.values())) if h.parent is not None}
    for h in reversed(list(hs.values())):  # the deepest first: a plan lists inputs first
        hist = h.table("history")
        if h.name == SERVING and evaluate_only:
            continue
        start = child.get(h.name)
        als_reads = (hist,) + (() if start is None else (start.table("user_factors"),
                                                         start.table("item_factors")))
        stages += [
            Stage(_at("user_neighbours", h), "user_neighbours", (hist,),
                  (h.table("user_neighbours"),), partial(_neighbours, h=h, side="user"),
                  # Keyed on the source's switch only when it is off: the empty table must
                  # never stand in for real neighbours, and any n > 0 computes the same ones.
                  ("user_neighbours", "candidates.user_pearson") if user_off
                  else ("user_neighbours",)),
            Stage(_at("item_neighbours", h), "item_neighbours", (hist,),
                  (h.table("item_neighbours"),), partial(_neighbours, h=h, side="item"),
                  ("item_neighbours",)),
            Stage(_at("als", h), "als", als_reads, (h.table("user_factors"),
                                                    h.table("item_factors")),
                  partial(_als, h=h, start=start), ("als",)),
            Stage(_at("candidates", h), "candidates",
                  (hist, "items", h.table("user_neighbours"), h.table("item_neighbours"),
                   h.table("user_factors"), h.table("item_factors"))
                  + ((h.table("target"),) if h.parent is not None else ()),
                  (h.table("candidates"),), partial(_candidates, h=h),
                  ("candidates", "ease")),
        ]
    source_tables = ("history", "user_factors", "item_factors")
    for h in dict.fromkeys(serving_cuts + eval_cuts):
        stages.append(Stage(
            _at("train_rows", h), "train_rows",
            tuple(h.table(t) for t in (*source_tables, "candidates", "target")) + ("items",),
            (h.table("train_rows"),), partial(_train_rows, h=h),
            ("ranker.sampling", "ranker.model.seed", "candidates.popular_window_days")))

    def ranker_stage(name: str, cuts: list[History], out: str) -> Stage:
        return Stage(name, "ranker", tuple(h.table("train_rows") for h in cuts), (out,),
                     partial(_ranker, cutoffs=tuple(cuts), out=out),
                     ("ranker.model", "ranker.max_train_users"))

    serving = hs[SERVING]
    if not evaluate_only:
        ranker_file = "ranker.json" if lgbm else None
        if lgbm:
            stages.append(ranker_stage("ranker", serving_cuts, "ranker.json"))
        stages.append(Stage(
            "score", "score",
            tuple(serving.table(t) for t in (*source_tables, "candidates")) + ("items",)
            + ((ranker_file,) if ranker_file else ()),
            ("scored", "scoring.json"), partial(_score, h=serving, ranker_file=ranker_file),
            ("ranking", "fusion", "candidates.popular_window_days")))
        stages.append(Stage("diversify", "diversify", ("scored", "scoring.json", "items"),
                            ("recommendations", report.CONCENTRATION),
                            _diversify, ("diversify",)))
    if eval_train is not None:
        eval_ranker = f"{WORK_EVAL}/ranker.json" if lgbm else None
        if lgbm:
            stages.append(ranker_stage("ranker@eval", eval_cuts, eval_ranker or ""))
        stages.append(Stage(
            "evaluate", "evaluate",
            tuple(eval_train.table(t) for t in (*source_tables, "candidates", "target"))
            + ("items",) + ((eval_ranker,) if eval_ranker else ()),
            ("evaluation",), partial(_evaluate, h=eval_train, ranker_file=eval_ranker),
            ("ranking", "fusion", "diversify", "candidates.popular_window_days")))
    return Plan(tuple(stages), tuple(hs.values()))


WORK_EVAL = "work/eval"


def published_tables(p: Plan) -> list[str]:
    """The whole-history tables a published run holds."""
    return [t for s in p.stages for t in s.writes
            if "/" not in t and not t.endswith(".json")]


RUN_ID = "run_id"
"""Column added to every published table, so `runs/*/<table>.parquet` queries tell runs apart."""


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run fn and return (its result, seconds)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


__all__ = ["History", "Plan", "Stage", "plan", "published_tables", "table_path"]
