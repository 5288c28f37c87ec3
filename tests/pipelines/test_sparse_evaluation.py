"""Evaluation is a report, not a gate: sparse data still publishes, with a clear warning."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from features.errors import DataWarning
from pipelines.nightly import RunConfig, run_nightly


def config(folder: Path, rows: list[str]) -> RunConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.csv").write_text("user,item,rating,ts\n" + "\n".join(rows) + "\n")
    return RunConfig.from_dict({
        "source": {"path": str(folder / "r.csv"), "user": "user", "item": "item",
                   "weight": "rating", "timestamp": "ts", "items": []},
        "output": {"root": str(folder / "out")}})


def test_users_below_the_hold_out_minimum_still_publish(tmp_path: Path) -> None:
    rows = [f"u{u},i{(u * 3 + k) % 20},{1 + (u + k) % 5},{1_600_000_000 + 60 * (u * 9 + k)}"
            for u in range(40) for k in range(4)]  # every user has 4 < 10 interactions
    with pytest.warns(DataWarning, match="evaluation.split.min_interactions"):
        res = run_nightly(config(tmp_path, rows))
    manifest = json.loads((res.path / "manifest.json").read_text())
    assert manifest["evaluation"]["status"] == "skipped"
    assert pq.read_metadata(res.path / "evaluation.parquet").num_rows == 0
    assert "Skipped" in (res.path / "evaluation.md").read_text()
    assert pq.read_metadata(res.path / "recommendations.parquet").num_rows > 0
    assert manifest["scored_by"] == "fusion"  # too little data to train the ranker


@pytest.mark.parametrize("rows", [["u1,i1,5,1600000000"], ["u1,i1,5,1600000000",
                                                           "u1,i2,3,1600000100"]])
def test_a_single_user_publishes_what_it_can(tmp_path: Path, rows: list[str]) -> None:
    with pytest.warns(DataWarning):
        res = run_nightly(config(tmp_path, rows))
    assert (res.path / "recommendations.parquet").is_file()
    assert (res.path / "manifest.json").is_file()
