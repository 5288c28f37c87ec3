"""Ranker training data: one labelled query per user and time cut-off, no target leakage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipelines.evaluate import split_last
from pipelines.ingest import ingest
from pipelines.nightly import RunConfig
from pipelines.ranking import training_frame
from tests.conftest import tiny_config_dict


def test_two_cutoffs_label_successive_history_tails(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(tiny_config_dict(tmp_path))
    data = ingest(cfg.source)
    frame = training_frame(data.interactions, data.items, cfg.candidate_settings(), cfg.ranker)
    assert set(frame["cutoff"].unique().to_list()) == {0, 1}
    first = split_last(data.interactions, cfg.ranker.label_split)
    second = split_last(first.train, cfg.ranker.label_split)
    for cutoff, split in ((0, first), (1, second)):
        rows = frame.filter(pl.col("cutoff") == cutoff)
        target = pl.from_arrow(split.test.select(["user_id", "item_id"]))
        positives = rows.filter(pl.col("label") == 1).select(["user_id", "item_id"])
        assert positives.height > 0
        assert positives.join(target, on=["user_id", "item_id"], how="anti").height == 0
        # Candidates never include what the features' history already has.
        seen = pl.from_arrow(split.train.select(["user_id", "item_id"]))
        assert rows.join(seen, on=["user_id", "item_id"], how="semi").height == 0
