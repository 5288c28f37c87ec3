"""Shared fixtures: thread pinning, seeded rng, one Prefect test server, tiny data, devices."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Pin BLAS/OpenMP before numpy-heavy imports spin up thread pools (2-core machines thrash).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data`, or skip when this checkout has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (fresh database) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):  # loaded CI machines
        yield


def cuda_devices() -> list[str]:
    """['cpu'] plus 'cuda' when a GPU is present: parametrize GPU variants with this."""
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def write_tiny_dataset(folder: Path, seed: int = 0, n_users: int = 30, n_items: int = 40
                       ) -> tuple[Path, Path]:
    """A small ratings CSV (string ids with leading zeros) and an items CSV with 5 authors.

    Two taste groups: users in group g rate items of group g high and the rest low, so the
    neighbourhoods and ALS have real structure to find.
    """
    rng = np.random.default_rng(seed)
    rows = ["user,item,rating,ts"]
    for u in range(n_users):
        group = u % 2
        for i in rng.choice(n_items, size=12, replace=False):
            like = (i % 2) == group
            rating = rng.integers(4, 6) if like else rng.integers(1, 3)
            rows.append(f"u{u:03d},0{i:03d},{rating},{1_600_000_000 + 3600 * (u * 50 + int(i))}")
    ratings = folder / "ratings.csv"
    ratings.write_text("\n".join(rows) + "\n")
    items = folder / "items.csv"
    items.write_text("item,title,author\n" + "\n".join(
        f"0{i:03d},Item {i},author{i % 5}" for i in range(n_items)) + "\n")
    return ratings, items


def tiny_config_dict(folder: Path) -> dict[str, object]:
    """A RunConfig mapping for the tiny data set, with small sizes."""
    ratings, items = write_tiny_dataset(folder)
    return {
        "source": {"path": str(ratings), "user": "user", "item": "item", "weight": "rating",
                   "timestamp": "ts",
                   "items": [{"path": str(items), "item": "item", "title": "title",
                              "author": "author"}]},
        "user_neighbours": {"k": 10, "min_support": 2},
        "item_neighbours": {"k": 10, "min_support": 2},
        "als": {"embedding_size": 4, "epochs": 3},
        "candidates": {"user_pearson": 10, "item_pearson": 10, "als": 10, "popular": 5,
                       "author": 5},
        "diversify": {"n": 5, "max_per_author": 2},
        "output": {"root": str(folder / "out")},
    }


@pytest.fixture
def tiny_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A RunConfig over the tiny data set, writing under tmp_path/out."""
    from pipelines.nightly import RunConfig

    return RunConfig.from_dict(tiny_config_dict(tmp_path))


def toml_value(value: Any) -> str:
    """One TOML value (strings, paths, numbers, booleans, lists of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer for config mappings (tables, arrays of tables, scalars)."""
    lines, tables = [], []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value, is_array in tables:
        name = f"{prefix}{key}"
        if is_array:
            for entry in value:
                body = to_toml(entry, f"{name}.")
                out += f"\n[[{name}]]\n{body}"
        else:
            out += f"\n[{name}]\n{to_toml(value, f'{name}.')}"
    return out


def published(run: Path, name: str) -> Any:
    """A published table without its `run_id` column, to compare runs with each other."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(run) / f"{name}.parquet")
    return table.drop_columns(["run_id"]) if "run_id" in table.column_names else table
