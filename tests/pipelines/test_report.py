"""The run report's before-diversity lists: per-shard top-n equals a whole-table sort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.recommend.report import top_by_score


def test_top_by_score_per_row_group_equals_a_global_sort(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "scored.parquet"
    frames = []
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                        ("score", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        for shard in range(3):  # one row group per shard of users, as the runner writes
            n = 200
            frame = pl.DataFrame({
                "user_id": [f"u{shard}-{u}" for u in rng.integers(0, 7, n)],
                "item_id": [f"i{j}" for j in rng.permutation(n)],
                "score": rng.integers(0, 5, n).astype(float)})  # ties, broken by item id
            frames.append(frame)
            writer.write_table(frame.to_arrow().cast(schema), row_group_size=n)
    got = top_by_score(path, 4)
    want = (pl.concat(frames).sort(["user_id", "score", "item_id"],
                                   descending=[False, True, False])
            .group_by("user_id", maintain_order=True).head(4).select("user_id", "item_id"))
    assert got.sort(["user_id", "item_id"]).equals(want.sort(["user_id", "item_id"]))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
