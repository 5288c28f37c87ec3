"""Learning-to-rank over candidates: time-split labels, LightGBM lambdarank, scoring."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from features.columns import ITEM_ID, SCORE, SOURCES, USER_ID
from features.ranking import candidate_features, feature_columns
from models.als import AlsConfig
from models.neighbours import PearsonConfig
from models.ranker import LambdaRanker, RankerConfig
from pipelines import candidates as cand
from pipelines import embeddings, neighbours
from pipelines.diversify import SCORED_SCHEMA, source_names
from pipelines.evaluate import SplitConfig, split_last

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


class TooLittleData(ValueError):
    """The history is too small to make labelled training data for the ranker."""


@dataclass
class CandidateSet:
    """Candidates and the tables they were built from."""

    candidates: pa.Table
    user_neighbours: pa.Table
    item_neighbours: pa.Table
    user_factors: pa.Table
    item_factors: pa.Table


def build_candidates(interactions: pa.Table, items: pa.Table, cfg: CandidateSettings
                     ) -> CandidateSet:
    """Neighbourhoods, ALS and the candidate union for one interaction history."""
    un = neighbours.user_neighbours(interactions, cfg.user_neighbours)
    inb = neighbours.item_neighbours(interactions, cfg.item_neighbours)
    uf, itf = embeddings.als_factors(interactions, cfg.als)
    c = cand.generate(interactions, items, un, inb, uf, itf, cfg.candidates)
    return CandidateSet(c, un, inb, uf, itf)


def features_for(cs: CandidateSet, history: pa.Table, items: pa.Table, cfg: CandidateSettings
                 ) -> pl.DataFrame:
    """Feature frame for a candidate set built from `history`, sorted by (user, item)."""
    return candidate_features(
        cs.candidates, history, items, cs.item_neighbours, cs.user_factors, cs.item_factors,
        recent_days=cfg.candidates.popular_window_days,
    ).sort([USER_ID, ITEM_ID])


def label(features: pl.DataFrame, target: pa.Table) -> pl.DataFrame:
    """Add `label` = 1 where the (user, candidate) pair is in the target interactions."""
    tgt = pl.from_arrow(target.select([USER_ID, ITEM_ID]))
    assert isinstance(tgt, pl.DataFrame)
    return features.join(tgt.unique().with_columns(pl.lit(1, pl.Int8).alias("label")),
                         on=[USER_ID, ITEM_ID], how="left").with_columns(
        pl.col("label").fill_null(0))


def training_frame(history: pa.Table, items: pa.Table, cfg: CandidateSettings,
                   ranking: RankingConfig) -> pl.DataFrame:
    """Labelled features: candidates from each user's earlier history, labels from the last part.

    Only a split's train part is seen by the candidate sources and the features, so no target
    interaction leaks into them. With `label_cutoffs` > 1 the rule is applied again to the
    train part, giving one more labelled query per user and cut-off (column `cutoff`).
    """
    frames = []
    for cutoff in range(ranking.label_cutoffs):
        split = split_last(history, ranking.label_split)
        if split.test.num_rows == 0:
            break
        cs = build_candidates(split.train, items, cfg)
        frame = label(features_for(cs, split.train, items, cfg), split.test)
        users = pl.Series(split.test[USER_ID].unique().to_pylist())
        frames.append(frame.filter(pl.col(USER_ID).is_in(users.implode()))
                      .with_columns(pl.lit(cutoff, pl.Int8).alias(CUTOFF)))
        history = split.train
    if not frames:
        raise TooLittleData("no user has enough interactions to hold out a training target")
    frame = pl.concat(frames, how="diagonal_relaxed")
    if ranking.max_train_users is not None:
        keep = frame[USER_ID].unique().sort().sample(
            n=min(ranking.max_train_users, frame[USER_ID].n_unique()), seed=ranking.model.seed)
        frame = frame.filter(pl.col(USER_ID).is_in(keep.implode()))
    return frame.sort([CUTOFF, USER_ID, ITEM_ID])


def fit_ranker(history: pa.Table, items: pa.Table, cfg: CandidateSettings,
               ranking: RankingConfig) -> LambdaRanker:
    """Train the LightGBM ranker on time splits of `history` (one query per user and cut-off)."""
    start = time.perf_counter()
    frame = training_frame(history, items, cfg, ranking)
    positives = frame.filter(pl.col("label") == 1)[USER_ID].n_unique() if frame.height else 0
    if positives < 2:
        raise TooLittleData(f"only {positives} users have a held-out interaction among their "
                            "candidates; the ranker needs at least 2")
    cols = feature_columns(frame.drop(["label", CUTOFF]))
    x = frame.select(cols).to_numpy().astype(np.float32)
    y = frame["label"].to_numpy().astype(np.float32)
    groups = pl.struct([CUTOFF, USER_ID]).rank("dense").alias("_g")
    ranker = LambdaRanker(ranking.model).fit(x, y, frame.select(groups)["_g"].to_numpy(), cols)
    log.info("ranker: %d rows, %d positives, %d rounds, %.1f s", len(y), int(y.sum()),
             ranker.best_iteration, time.perf_counter() - start)
    return ranker


def score(ranker: LambdaRanker, features: pl.DataFrame, candidates: pa.Table) -> pa.Table:
    """The `scored` table: every candidate with the ranker's score and its sources."""
    missing = [f for f in ranker.features if f not in features.columns]
    if missing:
        raise ValueError(f"features {missing} that the ranker was trained on are missing")
    x = features.select(ranker.features).to_numpy().astype(np.float32)
    scores = ranker.predict(x)
    names = source_names(candidates)
    srcs = features.select(
        USER_ID, ITEM_ID,
        pl.concat_list([pl.when(pl.col(f"{s}_rank").is_not_null()).then(pl.lit(s))
                        .otherwise(None) for s in names]).list.drop_nulls().alias(SOURCES),
    ).with_columns(pl.Series(SCORE, scores.astype(np.float64)))
    return srcs.select(USER_ID, ITEM_ID, SCORE, SOURCES).to_arrow().cast(SCORED_SCHEMA)
