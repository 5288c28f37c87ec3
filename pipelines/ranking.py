"""Learning-to-rank over candidates: time-split labels, LightGBM lambdarank, scoring."""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from features.columns import ITEM_ID, SCORE, SOURCES, USER_ID
from features.hashing import key_hash
from features.ranking import feature_names
from models.als import AlsConfig
from models.neighbours import PearsonConfig
from models.ranker import LambdaRanker, RankerConfig
from pipelines import candidates as cand
from pipelines.diversify import SCORED_SCHEMA, source_names, sources_column
from pipelines.evaluate import SplitConfig

log = logging.getLogger(__name__)

CUTOFF = "cutoff"  # which time cut-off a training row's label comes from


class CandidateSettings(BaseModel):
    """The candidate-generation part of a run config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_neighbours: PearsonConfig
    item_neighbours: PearsonConfig
    als: AlsConfig
    candidates: cand.CandidatesConfig


class RankingConfig(BaseModel):
    """The LightGBM ranker and how its training labels are made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: RankerConfig = Field(default_factory=RankerConfig)
    """LightGBM settings."""
    label_split: SplitConfig = Field(default_factory=SplitConfig)
    """Each user's last interactions become the training target; candidates come from the rest."""
    label_cutoffs: int = Field(2, ge=1, le=5)
    """Time cut-offs that each give a labelled query per user: the last part of the history,
    then the last part of what is left, ... (2 beat 1 on validation: NDCG@10 0.1111 vs 0.1086)."""
    max_train_users: int | None = Field(None, ge=2)
    """Train on a seeded sample of this many users (None = all) to bound training time."""
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig())
    """Training-row sampling per query."""
    distributed_min_rows: int = Field(2_000_000, ge=1)
    """On the Dask engine, train with lightgbm.dask from this many training rows on; below
    it one worker is faster than the cluster's communication."""


class TooLittleData(ValueError):
    """The history is too small to make labelled training data for the ranker."""


def label(features: pl.DataFrame, target: pa.Table) -> pl.DataFrame:
    """Add `label` = 1 where the (user, candidate) pair is in the target interactions."""
    tgt = pl.from_arrow(target.select([USER_ID, ITEM_ID]))
    assert isinstance(tgt, pl.DataFrame)
    return features.join(tgt.unique().with_columns(pl.lit(1, pl.Int8).alias("label")),
                         on=[USER_ID, ITEM_ID], how="left").with_columns(
        pl.col("label").fill_null(0))


class SamplingConfig(BaseModel):
    """Which candidates become training rows: every positive plus a bounded set of negatives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Sample negatives (False trains on every candidate of every query)."""
    hard_negatives: int = Field(0, ge=0)
    """Per query, the negatives that some source ranked best (lowest rank over sources).
    Off by default: on the embedded data's validation split hard negatives cost NDCG@10
    (50 hard + 50 random 0.0742, 150 + 150 0.0783, 0 + 150 random 0.0885)."""
    random_negatives: int = Field(150, ge=0)
    """Per query, this many more negatives drawn at random (seeded by ranker.model.seed)."""


def sample_rows(frame: pl.DataFrame, sampling: SamplingConfig, seed: int) -> pl.DataFrame:
    """Keep every positive, the hard negatives and seeded random negatives of each query.

    Queries without a positive are dropped: lambdarank gets no gradient from them. The random
    draw hashes (user, item, seed) with `key_hash`, so the rows kept do not depend on how users
    are sharded, on row order, or on the installed polars (whose own hash changes between
    releases).
    """
    frame = frame.filter(pl.col("label").max().over(USER_ID) > 0)
    if not sampling.enabled or frame.height == 0:
        return frame
    ranks = [c for c in frame.columns if c.endswith("_rank")]
    best = pl.min_horizontal([pl.col(c) for c in ranks]) if ranks else pl.lit(0)
    frame = frame.with_columns(
        best.fill_null(1 << 30).alias("_best"),
        pl.Series("_draw", key_hash([frame[USER_ID], frame[ITEM_ID]], seed)),
    )
    neg = pl.col("label") == 0
    hard = (pl.struct("_best", ITEM_ID).rank("ordinal").over(USER_ID, neg)
            <= sampling.hard_negatives)
    frame = frame.with_columns((neg & hard).alias("_hard"))
    rest = neg & ~pl.col("_hard")
    rand = pl.col("_draw").rank("ordinal").over(USER_ID, rest) <= sampling.random_negatives
    keep = (pl.col("label") > 0) | pl.col("_hard") | (rest & rand)
    return frame.filter(keep).drop(["_best", "_draw", "_hard"])


def draw_users(users: pl.Series, n: int, seed: int) -> pl.Series:
    """A seeded sample of n distinct users (all if fewer), the same for any order of `users`."""
    distinct = users.unique().sort()
    draw = key_hash([distinct], seed)
    return distinct.gather(np.sort(np.argsort(draw, kind="stable")[:n]))


def fit_on(frames: list[pl.DataFrame], ranking: RankingConfig, engine: object = None
           ) -> LambdaRanker:
    """Train the LightGBM ranker on labelled rows (one query per cut-off and user).

    `frames` hold the training rows with their `cutoff` column; the list is consumed (emptied)
    so that the rows exist once as polars columns and once as the float32 training matrix,
    not as several copies at once. On an engine that can (Dask) and with at least
    `distributed_min_rows` rows, LightGBM trains distributed; smaller tables train on one
    worker, which is faster.
    """
    start = time.perf_counter()
    frames[:] = [f for f in frames if f.height]
    positives = pl.concat([f.filter(pl.col("label") == 1).select(USER_ID) for f in frames]
                          )[USER_ID].n_unique() if frames else 0
    if positives < 2:
        raise TooLittleData(f"only {positives} users have a held-out interaction among their "
                            "candidates; the ranker needs at least 2")
    if ranking.max_train_users is not None:
        users = pl.concat([f.select(USER_ID) for f in frames])[USER_ID]
        keep = draw_users(users, ranking.max_train_users, ranking.model.seed).implode()
        frames[:] = [f.filter(pl.col(USER_ID).is_in(keep)) for f in frames]
    # Columns in order of first appearance (a frame without one has nulls there); each frame's
    # rows go into the float32 matrix at their (cutoff, user, item) positions, so the wide rows
    # exist once as columns (shrinking) and once as the matrix (growing), never more.
    cols = feature_names(c for c in dict.fromkeys(c for f in frames for c in f.columns)
                         if c != CUTOFF)
    keys = pl.concat([f.select(CUTOFF, USER_ID, ITEM_ID, "label") for f in frames])
    order = keys.with_row_index("_i").sort([CUTOFF, USER_ID, ITEM_ID])
    at = np.empty(len(order), np.int64)  # at[input row] = its row in (cutoff, user, item) order
    at[order["_i"].to_numpy()] = np.arange(len(order))
    x = np.empty((len(order), len(cols)), np.float32)  # (rows, features)
    start_row = 0
    while frames:  # each frame straight into its rows of x, then dropped
        f = frames.pop(0)
        x[at[start_row:start_row + f.height]] = f.select(
            [pl.col(c).cast(pl.Float32) if c in f.columns else pl.lit(None, pl.Float32).alias(c)
             for c in cols]).to_numpy(order="c")
        start_row += f.height
        del f
    y = order["label"].to_numpy().astype(np.float32)
    g = order.select(pl.struct([CUTOFF, USER_ID]).rank("dense").alias("_g"))["_g"].to_numpy()
    del order, keys
    fit_remote = getattr(engine, "fit_ranker", None)
    if fit_remote is not None and len(y) >= ranking.distributed_min_rows:
        ranker = fit_remote(LambdaRanker(ranking.model), x, y, g, cols)
    else:
        model = LambdaRanker(ranking.model)
        prepared = [*model.prepare(x, y, g, cols)]
        del x  # the codes in `prepared` are all that training needs
        ranker = model.fit_prepared(prepared)
    log.info("ranker: %d rows, %d positives, %d rounds, %.1f s", len(y), int(y.sum()),
             ranker.best_iteration, time.perf_counter() - start)
    return ranker


def score(ranker: LambdaRanker, features: pl.DataFrame, candidates: pa.Table) -> pa.Table:
    """The `scored` table: every candidate with the ranker's score and its sources."""
    missing = [f for f in ranker.features if f not in features.columns]
    if missing:
        raise ValueError(f"features {missing} that the ranker was trained on are missing")
    x = features.select(pl.col(ranker.features).cast(pl.Float32)).to_numpy(order="c")
    scores = ranker.predict(x)
    keys = features.select(USER_ID, ITEM_ID).to_arrow()
    return pa.table({USER_ID: keys.column(USER_ID), ITEM_ID: keys.column(ITEM_ID),
                     SCORE: pa.array(scores.astype(np.float64)),
                     SOURCES: sources_column(features, source_names(candidates))}
                    ).cast(SCORED_SCHEMA)
